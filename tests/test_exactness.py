"""Exactness: each tm_X of the family carrying timm X's weights computes exactly what X computes.

Both ways a user gets there: ``convert_resnet_state_dict`` by hand, and timm's own pretrained loader
(``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``, which runs the models' ``pretrained_filter_fn``)
offline, on a saved resnetX state_dict. The ResNets get random BatchNorm parameters and statistics and no zero-init
of their last BN, so that every residual branch matters (a fresh timm ResNet's branches start at zero).
"""

import logging

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from conftest import randomize_tm_embeddings, tm_at_identity

from timm_tm import TemplateMatching, convert_resnet_state_dict
from timm_tm.models.tm_resnet import TM_ARCHS, tm_baseline

FAMILY = [name for name in TM_ARCHS if not tm_baseline(name)[1]]  # the tm_X whose base is timm's X
IMG = 64

# the 'tied' embedding: blocks that would change the features unless the conversion zeroes them (the default
# embedding, 'none', changes nothing and would make these comparisons trivial)
TIED = dict(embedding='tied', evidence_mode='logits')  # logits: the evidence weight must be zeroed too


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.8 + 0.2)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def _resnet(name: str, **kwargs) -> nn.Module:
    return _randomize_bn(timm.create_model(name, zero_init_last=False, **kwargs)).eval()


def _assert_tm_at_identity(model: nn.Module) -> None:
    blocks = [m for m in model.modules() if isinstance(m, TemplateMatching)]
    assert blocks, 'the model has no TM blocks: the comparison would prove nothing'
    assert all(tm.embedding != 'none' for tm in blocks), 'blocks without embedding would make this trivial'
    assert tm_at_identity(model)


@pytest.mark.parametrize('name', FAMILY)
def test_tm_model_with_its_base_weights_gives_the_base_logits(name, tmp_path):
    base = tm_baseline(name)[0]
    resnet = _resnet(base)
    resnet_sd = resnet.state_dict()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref = resnet(x)
        ref_features = resnet.forward_features(x)
    assert ref.std() > 0.05 and not torch.allclose(ref[0], ref[1])  # a non-degenerate reference

    # by hand: convert_resnet_state_dict
    tm = randomize_tm_embeddings(timm.create_model(name, **TIED)).eval()
    assert not tm_at_identity(tm)  # the conversion, not the fresh init, must set the blocks to identity
    converted = convert_resnet_state_dict(resnet_sd, tm)
    assert all(torch.equal(converted[k], v) for k, v in resnet_sd.items())  # ResNet weights pass through as they are
    tm.load_state_dict(converted)
    _assert_tm_at_identity(tm)
    with torch.no_grad():  # exactly: the TM blocks at identity add zeros to the same computation
        assert torch.equal(tm(x), ref) and torch.equal(tm.forward_features(x), ref_features)
    del tm

    # timm's real loader, offline: the saved X file goes through tm_X's pretrained_filter_fn
    path = tmp_path / f'{base}.safetensors'
    safetensors.torch.save_file(resnet_sd, str(path))
    tm = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TIED).eval()
    _assert_tm_at_identity(tm)
    with torch.no_grad():
        assert torch.equal(tm(x), ref)


def test_pretrained_loader_torch_file_and_other_num_classes(tmp_path):
    """A .pth file works too; with another num_classes the head and the templates are re-initialized by timm's
    loader (classifier names both), and the backbone still computes ResNet's features exactly."""
    resnet = _resnet('resnet18')
    path = tmp_path / 'resnet18.pth'
    torch.save(resnet.state_dict(), path)
    tm = timm.create_model('tm_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=7)
    tm.eval()
    assert tm(torch.randn(1, 3, IMG, IMG)).shape == (1, 7)
    assert {n: b.num_classes for n, b in tm.tm_blocks().items()} == {'layer3.2': 7, 'layer4.2': 7}
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        # fresh TM blocks start at identity (zero embedding): the features are still exactly ResNet's
        torch.testing.assert_close(tm.forward_features(x), resnet.forward_features(x), rtol=1e-5, atol=1e-5)
    # an embedding model (num_classes=0) keeps the templates: here, fresh ones for the cfg's 1000 classes
    emb = timm.create_model(
        'tm_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0, **TIED
    )
    emb.eval()
    _assert_tm_at_identity(emb)
    with torch.no_grad():
        torch.testing.assert_close(emb(x), resnet.forward_head(resnet.forward_features(x), pre_logits=True))


def test_small_variant_matches_its_baseline():
    """tm_resnet18_small's baseline is the same model without TM blocks (tm_stages=())."""
    base = _randomize_bn(timm.create_model('tm_resnet18_small', tm_stages=(), num_classes=10, zero_init_last=False))
    base.eval()
    assert not list(base.tm_blocks())
    tm = timm.create_model('tm_resnet18_small', num_classes=10, **TIED).eval()
    tm.load_state_dict(convert_resnet_state_dict(base.state_dict(), tm))
    _assert_tm_at_identity(tm)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), base(x), rtol=1e-5, atol=1e-5)


def test_tm_state_dict_round_trips_unchanged():
    """A tm_resnet state_dict in (trained TM blocks) comes out as it went in."""
    tm = timm.create_model('tm_resnet18', num_classes=10, **TIED)
    randomize_tm_embeddings(tm)
    for b in tm.tm_blocks().values():
        b.evidence_weight.data.fill_(0.7)
    sd = tm.state_dict()
    out = convert_resnet_state_dict(sd, timm.create_model('tm_resnet18', num_classes=10, **TIED))
    assert out.keys() == sd.keys()
    assert all(torch.equal(out[k], v) for k, v in sd.items())


def test_equivalence_breaks_once_tm_blocks_are_nonzero():
    """The comparison above can fail: a nonzero embedding, or evidence added to the logits, changes the logits."""
    resnet = _resnet('resnet18')
    x = torch.randn(2, 3, IMG, IMG)
    tm = timm.create_model('tm_resnet18', **TIED).eval()
    tm.load_state_dict(convert_resnet_state_dict(resnet.state_dict(), tm))
    with torch.no_grad():
        tm.tm_blocks()['layer4.2'].embed_scale.fill_(0.1)
        assert not torch.allclose(tm(x), resnet(x), rtol=1e-5, atol=1e-5)
    tm = timm.create_model('tm_resnet18', evidence_mode='logits').eval()
    tm.load_state_dict(convert_resnet_state_dict(resnet.state_dict(), tm))
    with torch.no_grad():
        tm.tm_blocks()['layer4.2'].evidence_weight.fill_(0.1)
        assert not torch.allclose(tm(x), resnet(x), rtol=1e-5, atol=1e-5)


def test_pretrained_loader_warns_only_when_it_reinitializes(tmp_path, caplog):
    """A ResNet file of the model's class count loads exactly and silently; one of another class count loads its
    backbone exactly, with a warning naming the re-initialized head (a TM checkpoint's other TM config:
    test_pretrained)."""
    resnet = _resnet('resnet18')
    path = tmp_path / 'resnet18.safetensors'
    safetensors.torch.save_file(resnet.state_dict(), str(path))
    x = torch.randn(2, 3, IMG, IMG)
    with caplog.at_level(logging.WARNING, logger='timm_tm.models._loading'):
        tm = timm.create_model('tm_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert not [r for r in caplog.records if r.name == 'timm_tm.models._loading']
    with torch.no_grad():
        torch.testing.assert_close(tm(x), resnet(x), rtol=1e-5, atol=1e-5)

    overlay = dict(file=str(path), num_classes=-1)  # train.py --pretrained-path
    with caplog.at_level(logging.WARNING, logger='timm_tm.models._loading'):
        tm = timm.create_model('tm_resnet18', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=7).eval()
    (record,) = [r for r in caplog.records if r.name == 'timm_tm.models._loading']
    assert 'is for 1000 classes, this model for 7' in record.getMessage() and 'fc.weight' in record.getMessage()
    with torch.no_grad():
        torch.testing.assert_close(tm.forward_features(x), resnet.forward_features(x), rtol=1e-5, atol=1e-5)

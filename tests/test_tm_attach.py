"""TM blocks after the feature_info stages of other timm CNNs (timm_tm/models/tm_attach.py): tm_convnext_tiny,
tm_regnety_016, tm_efficientnet_b0 and ``with_template_matching`` on any model.

The base models get random BatchNorm statistics and layer scales (a fresh ConvNeXt's residual branches are scaled by
1e-6, a fresh ResNet-like model's last BatchNorm by 0), and the TM blocks the 'tied' embedding with random scales
wherever a fresh block, being the identity, would hide a skipped or misplaced block.
"""

import copy

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import randomize_tm_embeddings, tm_at_identity

from timm_tm import TemplateMatching
from timm_tm.models.tm_attach import (
    TM_VARIANTS,
    TemplateMatchingModel,
    convert_state_dict,
    stage_module_name,
    with_template_matching,
)

VARIANTS = list(TM_VARIANTS)
IMG = 64
TIED = dict(embedding='tied', evidence_mode='logits')  # blocks that change features and logits unless at identity


def _randomize(model: nn.Module) -> nn.Module:
    """Random BatchNorm parameters and statistics and layer scales: every residual branch of the base matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.2)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith('gamma'):  # ConvNeXt's layer scale
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 + 0.05)
    return model


def _nontrivial(model: nn.Module) -> nn.Module:
    """Random TM embeddings and nonzero evidence weights: the blocks change the features (and, in 'logits' mode,
    the logits)."""
    randomize_tm_embeddings(model)
    for tm in model.tm_blocks().values():
        tm.evidence_weight.data.fill_(0.7)
    return model


def _x(b: int = 2, size: int = IMG) -> torch.Tensor:
    return torch.randn(b, 3, size, size)


@pytest.fixture(scope='module', params=VARIANTS)
def variant(request):
    """(tm name, base name, a base with random weights in eval mode)."""
    name = request.param
    base = TM_VARIANTS[name]['base']
    return name, base, _randomize(timm.create_model(base, num_classes=10)).eval()


# --- the contract with the base ---------------------------------------------------------------------------------


def test_variants_and_their_tags_are_registered():
    assert set(VARIANTS) <= set(timm.list_models('tm_*'))
    pretrained = timm.list_models('tm_*', pretrained=True)
    for name, spec in TM_VARIANTS.items():
        for tag in spec['tags']:
            assert f'{name}.{tag}' in pretrained
            cfg = timm.models.get_pretrained_cfg(f'{name}.{tag}')
            base_cfg = timm.models.get_pretrained_cfg(f'{spec["base"]}.{tag}')
            assert cfg.hf_hub_id == base_cfg.hf_hub_id and cfg.input_size == base_cfg.input_size  # the base's weights
        assert timm.models.get_pretrained_cfg(name).tag == spec['tags'][0]  # the first tag is the default


def test_with_base_weights_the_model_computes_exactly_what_the_base_computes(variant, tmp_path):
    """0 difference, through the conversion by hand, timm's pretrained loader (offline, a saved file) and
    with_template_matching on the base model itself."""
    name, base_name, base = variant
    x = _x()
    with torch.no_grad():
        ref, ref_features = base(x), base.forward_features(x)
    assert ref.std() > 0.01  # a non-degenerate reference

    tm = _nontrivial(timm.create_model(name, num_classes=10, **TIED)).eval()
    assert not tm_at_identity(tm)  # the conversion, not the fresh init, must set the blocks to identity
    base_sd = base.state_dict()
    converted = convert_state_dict(base_sd, tm)
    assert set(converted) - set(base_sd) == {k for k in tm.state_dict() if k.startswith(tuple(tm.tm_blocks()))}
    assert all(torch.equal(converted[k], v) for k, v in base_sd.items())  # the base's keys and values, unchanged
    tm.load_state_dict(converted)
    assert tm_at_identity(tm)
    with torch.no_grad():
        assert torch.equal(tm(x), ref) and torch.equal(tm.forward_features(x), ref_features)

    path = tmp_path / f'{base_name}.safetensors'
    safetensors.torch.save_file(base_sd, str(path))
    overlay = dict(file=str(path), num_classes=10)  # weights of 10 classes (else timm's loader drops the head)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, **TIED)
    assert tm_at_identity(loaded.eval())
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)

    attached = with_template_matching(copy.deepcopy(base), TM_VARIANTS[name]['tm_stages'], **TIED)
    assert sorted(attached.tm_blocks()) == sorted(tm.tm_blocks())
    with torch.no_grad():
        assert torch.equal(attached(x), ref)


def test_the_blocks_end_the_stages_of_feature_info(variant):
    """Each block is the last step of the module its feature_info entry names: the stage's output (as
    forward_intermediates and features_only give it) is the block's output, which differs from its input."""
    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, **TIED)).eval()
    inputs, outputs = {}, {}

    def record(name: str):
        def hook(module, args, out):
            inputs[name], outputs[name] = args[0], out

        return hook

    for block_name, block in model.tm_blocks().items():
        block.register_forward_hook(record(block_name))
    with torch.no_grad():
        _, intermediates = model.forward_intermediates(_x())
    modules = [info['module'] for info in model.feature_info]
    for block_name in model.tm_blocks():
        stage = modules.index(stage_module_name(block_name))
        assert stage in model.tm_stages
        assert torch.equal(intermediates[stage], outputs[block_name])
        assert not torch.allclose(outputs[block_name], inputs[block_name])


def test_features_only_gives_the_stages_with_their_blocks(variant, tmp_path):
    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, **TIED)).eval()
    path = tmp_path / 'tm.safetensors'
    safetensors.torch.save_file(model.state_dict(), str(path))
    x = _x()
    with torch.no_grad():
        _, intermediates = model.forward_intermediates(x)
    for feature_cls in ('list', 'hook', 'getter', 'fx'):
        feat = timm.create_model(
            name, features_only=True, feature_cls=feature_cls, pretrained=True, num_classes=10,
            pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **TIED,
        ).eval()  # fmt: skip
        assert feat.feature_info.channels() == [info['num_chs'] for info in model.feature_info]
        with torch.no_grad():
            outs = feat(x)
        assert len(outs) == len(intermediates), feature_cls
        for i, (a, b) in enumerate(zip(outs, intermediates)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f'{feature_cls} feature {i}')


def test_fx_feature_extraction_and_forward(variant):
    from timm.models import FeatureGraphNet, create_feature_extractor, get_graph_node_names

    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, **TIED)).eval()
    x = _x()
    with torch.no_grad():
        ref = model(x)
        _, intermediates = model.forward_intermediates(x)
        graph_net = FeatureGraphNet(model, out_indices=model.tm_stages)
        for a, i in zip(graph_net(x), model.tm_stages):
            torch.testing.assert_close(a, intermediates[i])
        _, eval_nodes = get_graph_node_names(model)
        extractor = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
        torch.testing.assert_close(extractor(x)[eval_nodes[-1]], ref)  # the logits, class evidence included


def test_torchscript_same_outputs_and_logits_mode_refused(variant):
    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, embedding='tied')).eval()
    x = _x()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    logits_mode = timm.create_model(name, num_classes=10, evidence_mode='logits')
    with pytest.raises(RuntimeError, match="evidence_mode='logits'"):
        torch.jit.script(logits_mode)


def _train_step_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    out = model(x)
    F.cross_entropy(out, target).backward()
    grads = {n.replace('_orig_mod.', ''): p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), grads


def _assert_same(out, grads, ref_out, ref_grads):
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-3, atol=1e-5, msg=n)


@pytest.mark.parametrize('mode', ['checkpoint', 'checkpoint_reentrant', 'compile'])
def test_checkpointing_and_compile_same_outputs_and_gradients(variant, mode):
    """timm's gradient checkpointing (non-reentrant, the default, and reentrant) and torch.compile (aot_eager,
    one graph) give eager's logits and gradients, the labels' gradient into the templates included."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, embedding='tied')).train()
    other = copy.deepcopy(model)
    x, target = _x(b=4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    ref_out, ref_grads = _train_step_grads(model, x, target)
    for block in model.tm_blocks():
        assert ref_grads[f'{block}.templates.weight'].abs().sum() > 0  # the labels reach the templates
    previous = use_reentrant_ckpt()
    try:
        torch.manual_seed(1)
        if mode == 'compile':
            torch._dynamo.reset()
            out, grads = _train_step_grads(torch.compile(other, backend='aot_eager', fullgraph=True), x, target)
        else:
            set_reentrant_ckpt(mode == 'checkpoint_reentrant')
            other.set_grad_checkpointing(True)
            out, grads = _train_step_grads(other, x, target)
    finally:
        set_reentrant_ckpt(previous)
    _assert_same(out, grads, ref_out, ref_grads)


def test_prune_intermediate_layers_keeps_the_blocks_of_the_kept_stages():
    model = _nontrivial(timm.create_model('tm_convnext_tiny', num_classes=10, embedding='tied')).eval()
    x = _x()
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert model.prune_intermediate_layers(indices=(1, 2)) == [1, 2]
    assert list(model.tm_blocks()) == ['stages.2.tm.block'] and model.num_classes == 0
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b)


def test_a_saved_model_loads_in_a_fresh_process(tmp_path):
    """torch.save(model) pickles the generated classes by their base class: they are made again on load."""
    import subprocess
    import sys

    model = _nontrivial(timm.create_model('tm_regnety_016', num_classes=3, embedding='tied')).eval()
    x = _x(b=1)
    torch.save(model, tmp_path / 'model.pth')
    torch.save(x, tmp_path / 'x.pth')
    with torch.no_grad():
        torch.save(model(x), tmp_path / 'ref.pth')
    code = (
        'import sys, torch, timm_tm\n'
        "m = torch.load(sys.argv[1] + '/model.pth', weights_only=False)\n"
        "x, ref = torch.load(sys.argv[1] + '/x.pth'), torch.load(sys.argv[1] + '/ref.pth')\n"
        'with torch.no_grad():\n'
        '    print(type(m).__name__, type(m.s4).__name__, torch.equal(m(x), ref))\n'
    )
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['TemplateMatchingRegNet', 'TemplateMatchingAfterRegStage', 'True']


# --- the classes: head and templates ------------------------------------------------------------------------------


def test_reset_classifier_rebuilds_the_templates_with_the_head_and_zero_keeps_them(variant):
    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, templates_per_class=2, embedding='tied')).train()
    before = {n: tm.templates.weight.detach().clone() for n, tm in model.tm_blocks().items()}
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(_x()).shape == (2, model.num_features)
    assert all(torch.equal(tm.templates.weight, before[n]) for n, tm in model.tm_blocks().items())
    model.reset_classifier(3)
    assert model(_x()).shape == (2, 3)
    for tm in model.tm_blocks().values():
        assert tm.num_classes == 3 and tm.templates.weight.shape[0] == 6 and tm.training
        assert tm_at_identity(tm)  # fresh blocks
    embedding = timm.create_model(name, num_classes=0)
    assert all(tm.num_classes == 1000 for tm in embedding.tm_blocks().values())  # the pretrained cfg's classes
    assert embedding(_x()).shape == (2, embedding.num_features)


def test_evidence_reaches_the_logits_and_forward_head_adds_it(variant):
    name, _, _ = variant
    model = _nontrivial(timm.create_model(name, num_classes=10, evidence_mode='logits', embedding='tied')).eval()
    x = _x()
    with torch.no_grad():
        features, evidence = model.forward_features_with_evidence(x)
        assert evidence.shape == (2, 10) and evidence.abs().sum() > 0
        torch.testing.assert_close(model(x), model.forward_head(features, class_evidence=evidence))
        torch.testing.assert_close(model(x), model.forward_head(features) + evidence)


# --- loading: refusals name what differs -----------------------------------------------------------------------


def test_a_checkpoint_of_another_placement_or_family_is_refused_naming_it(tmp_path):
    source = timm.create_model('tm_convnext_tiny', num_classes=10)  # blocks after stages 2 and 3
    model = timm.create_model('tm_convnext_tiny', num_classes=10, tm_stages=(3,), embedding='none')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match=r'stages\.2\.tm\.block, stages\.3\.tm\.block.*tm_stages=\(2, 3\)'):
        model.load_state_dict(source.state_dict())
    path = tmp_path / 'tm.safetensors'
    safetensors.torch.save_file(source.state_dict(), str(path))
    with pytest.raises(RuntimeError, match=r'tm_stages=\(2, 3\)'):
        timm.create_model(
            'tm_convnext_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), tm_stages=(3,),
            num_classes=10,
        )  # fmt: skip
    other_family = timm.create_model('tm_resnet18', num_classes=10).state_dict()
    with pytest.raises(RuntimeError, match=r'its TM blocks are layer3\.2, layer4\.2.*architecture'):
        model.load_state_dict(other_family)
    tied = timm.create_model('tm_convnext_tiny', num_classes=10, tm_stages=(3,), embedding='tied').state_dict()
    with pytest.raises(RuntimeError, match=r"embed_scale.*embedding='none'"):
        model.load_state_dict(tied)
    logits_mode = timm.create_model('tm_convnext_tiny', num_classes=10, tm_stages=(3,), embedding='none',
                                     evidence_mode='logits')  # fmt: skip
    with pytest.raises(RuntimeError, match=r"stages\.3\.tm\.block was made with evidence_mode='logits'") as e:
        model.load_state_dict(logits_mode.state_dict())  # the same keys and shapes: only tm_config tells them apart
    assert '\n' not in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was loaded


def test_base_weights_of_another_class_count_load_with_fresh_head_and_templates(tmp_path, caplog):
    base = _randomize(timm.create_model('regnety_016')).eval()  # 1000 classes
    path = tmp_path / 'base.safetensors'
    safetensors.torch.save_file(base.state_dict(), str(path))
    overlay = dict(file=str(path), num_classes=-1)  # train.py --pretrained-path
    model = timm.create_model('tm_regnety_016', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=7)
    assert 'is for 1000 classes, this model for 7' in caplog.text and 'head.fc.weight' in caplog.text
    x = _x()
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(x), base.forward_features(x))
    # straight into load_state_dict (no fine-tuning start asked for): the head's class count is what differs, not
    # the templates (those of the conversion are the model's own)
    fresh = timm.create_model('tm_regnety_016', num_classes=7)
    with pytest.raises(RuntimeError, match=r'(?s)size mismatch for head\.fc\.weight.*tied to the classes') as e:
        fresh.load_state_dict(base.state_dict())
    assert 'no whole number per class' not in str(e.value)


# --- any other timm CNN in one call -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'base, stages, placed',
    [
        ('mobilenetv3_small_050', (3, 4), ['blocks.3.2', 'blocks.5.1']),  # nn.Sequential stages: appended
        ('cspresnet50', (4,), ['stages.3.tm.block']),  # CrossStage: its forward, then the block
        ('resnet18', (4,), ['layer4.2']),
    ],
)
def test_with_template_matching_by_name_on_other_models(base, stages, placed):
    model = with_template_matching(base, stages, num_classes=5, **TIED)
    assert isinstance(model, TemplateMatchingModel) and sorted(model.tm_blocks()) == placed
    _nontrivial(model).eval()
    x = _x()
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        _, intermediates = model.forward_intermediates(x)
    reference = copy.deepcopy(model)
    for tm in reference.tm_blocks().values():
        tm.zero_init_last()
    with torch.no_grad():
        _, plain = reference.forward_intermediates(x)
    for i in range(len(intermediates)):  # the blocks change their stages' outputs (and only theirs and later ones)
        assert torch.allclose(intermediates[i], plain[i]) == (i < min(stages)), i


def test_a_stage_that_runs_its_children_otherwise_is_refused_in_one_line():
    """DenseNet's dense block (an nn.ModuleDict) feeds every layer the list of all earlier outputs: no block ends it."""
    model = timm.create_model('densenet121', num_classes=5)
    with pytest.raises(ValueError, match=r'cannot place a TM block after features\.denseblock3 \(DenseBlock\)') as e:
        with_template_matching(model, (3,))
    assert '\n' not in str(e.value)
    assert not isinstance(model, TemplateMatchingModel)  # left as it was
    assert not any(isinstance(m, TemplateMatching) for m in model.modules())


def test_a_block_that_does_not_run_is_an_error_not_a_silent_zero():
    model = timm.create_model('tm_regnety_016', num_classes=5).train()
    model.s4.forward = lambda x: x  # a stage that skips its children, the TM block among them
    with pytest.raises(RuntimeError, match=r'ran its 1 TM blocks \(s4\.tm\.block\) 0 times'):
        model(_x())


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(tm_stages=(4,)), ValueError, 'from 0 to 3'),
        (dict(tm_stages=(2, 2)), ValueError, 'distinct'),
        (dict(tm_stages=3), TypeError, 'tm_stages'),
        (dict(tm_stages=(2.0,)), TypeError, 'tm_stages'),
        (dict(num_classes=10, template_classes=5), ValueError, 'template_classes'),
        (dict(templates_per_class=0), ValueError, 'templates_per_class'),
        (dict(temperature_init=float('nan')), ValueError, 'temperature_init'),
        (dict(not_a_model_arg=1), TypeError, 'not_a_model_arg'),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error, match):
    with pytest.raises(error, match=match) as e:
        timm.create_model('tm_convnext_tiny', **kwargs)
    assert '\n' not in str(e.value)


def test_an_already_attached_model_is_refused():
    model = timm.create_model('tm_efficientnet_b0', num_classes=5)
    with pytest.raises(ValueError, match='already has TM blocks'):
        with_template_matching(model, (3,))

"""The TemplateMatching layer on its own: shapes, numerics, gradients, class pooling, use outside ResNet.

These tests are about behaviour (what a caller of ``match`` / ``pool_classes`` / ``forward*`` sees), so they hold
for any faster implementation of the same block.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_tm import TemplateMatching


def _make(channels=8, num_classes=5, m=3, nontrivial=True, **kwargs) -> TemplateMatching:
    """A block whose embedding is random (a zero embedding would make the block the identity and hide bugs)."""
    tm = TemplateMatching(channels, num_classes, templates_per_class=m, **kwargs)
    if nontrivial:
        nn.init.normal_(tm.embed.weight, std=0.1)
    return tm


def test_shapes():
    b, c, h, w, n, m = 2, 8, 5, 7, 5, 3
    tm = _make(c, n, m)
    x = torch.randn(b, c, h, w)
    assert tm.num_templates == n * m
    assert tm.templates.weight.shape == (n * m, c, 1, 1)
    scores = tm.match(x)
    assert scores.shape == (b, n * m, h, w)
    assert tm.pool_classes(scores).shape == (b, n, h, w)
    y, evidence = tm.forward_with_evidence(x)
    assert y.shape == x.shape and evidence.shape == (b, n)
    y2, class_map = tm.forward_class_map(x)
    assert class_map.shape == (b, n, h, w)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(tm(x), y)
    # the evidence is the spatial mean of the class map, scaled by the evidence weight
    tm.evidence_weight.data.fill_(0.5)
    torch.testing.assert_close(tm.forward_with_evidence(x)[1], 0.5 * class_map.mean(dim=(2, 3)))


def test_new_block_is_identity():
    tm = TemplateMatching(8, 5, templates_per_class=2)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(tm(x), x, rtol=0, atol=0)


def test_scores_are_temperature_times_cosine():
    tm = _make(6, 4, 2, temperature_init=12.0)
    x = torch.randn(3, 6, 4, 5)
    t = tm.templates.weight.flatten(1)  # K x C
    ref = 12.0 * F.cosine_similarity(x.unsqueeze(1), t[None, :, :, None, None], dim=2)  # B x K x H x W
    torch.testing.assert_close(tm.match(x), ref, rtol=1e-5, atol=1e-5)


def test_scores_bounded_by_temperature():
    tm = _make(16, 10, 2, temperature_init=20.0)
    x = torch.randn(4, 16, 6, 6) * 100
    scores = tm.match(x)
    assert scores.abs().max() <= 20.0 * (1 + 1e-5)
    # a region equal to a template (up to a positive scale) scores exactly the temperature on that template
    k = 7
    x[0, :, 2, 3] = 42.0 * tm.templates.weight[k, :, 0, 0]
    torch.testing.assert_close(tm.match(x)[0, k, 2, 3], torch.tensor(20.0), rtol=1e-5, atol=1e-5)


def test_all_zero_regions_give_zero_scores_no_nan():
    tm = _make(8, 3, 2)
    x = torch.randn(2, 8, 4, 4)
    x[0] = 0  # a whole image of zero regions
    x[1, :, 1, 2] = 0  # one zero region
    x.requires_grad_(True)
    scores = tm.match(x)
    assert torch.isfinite(scores).all()
    assert (scores[0] == 0).all() and (scores[1, :, 1, 2] == 0).all()
    y, evidence = tm.forward_with_evidence(x)
    (y.square().sum() + evidence.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(evidence).all()
    assert torch.isfinite(x.grad).all()
    for name, p in tm.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_finite_under_autocast_large_features(dtype):
    """ResNet-50 stage 4 width; features of magnitude ~1e3 (their sum of squares overflows fp16)."""
    c, tau = 2048, 16.0
    tm = _make(c, 10, 2, temperature_init=tau)
    x = torch.randn(2, c, 3, 3) * 1e3
    x[0, :, 0, 0] = 0  # and an all-zero region
    x.requires_grad_(True)
    with torch.autocast('cpu', dtype=dtype):
        scores = tm.match(x)
        y, evidence = tm.forward_with_evidence(x)
    assert torch.isfinite(scores).all() and torch.isfinite(y).all() and torch.isfinite(evidence).all()
    # bounded by the temperature (plus the low-precision rounding of the scores themselves)
    assert scores.float().abs().max() <= tau * (1 + 1e-2)
    ref = tm.match(x.detach())
    torch.testing.assert_close(scores.float(), ref, rtol=0, atol=0.05 * tau)
    (y.float().mean() + evidence.float().sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in tm.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_gradients_reach_every_parameter():
    tm = _make(8, 4, 2)
    tm.train()
    x = torch.randn(4, 8, 5, 5)
    y, evidence = tm.forward_with_evidence(x)
    (y.square().mean() + F.cross_entropy(evidence, torch.tensor([0, 1, 2, 3]))).backward()
    params = dict(tm.named_parameters())
    for name in ('templates.weight', 'log_temperature', 'norm.weight', 'norm.bias', 'embed.weight', 'evidence_weight'):
        g = params[name].grad
        assert g is not None and g.abs().sum() > 0, f'no gradient reaches {name}'


def test_evidence_alone_trains_templates_and_temperature():
    """With the fresh (zero) embedding, the label still reaches templates and temperature through the evidence."""
    tm = TemplateMatching(8, 4, templates_per_class=2)
    x = torch.randn(4, 8, 5, 5)
    _, evidence = tm.forward_with_evidence(x)
    F.cross_entropy(evidence, torch.tensor([0, 1, 2, 3])).backward()
    for p in (tm.templates.weight, tm.log_temperature, tm.evidence_weight):
        assert p.grad.abs().sum() > 0


def _reference_class_map(scores: torch.Tensor, num_classes: int, m: int, pool: str) -> torch.Tensor:
    """Plain loops: class n owns templates n*m ... n*m+m-1."""
    b, _, h, w = scores.shape
    out = torch.empty(b, num_classes, h, w)
    for n in range(num_classes):
        group = scores[:, n * m : (n + 1) * m]
        if pool == 'max':
            out[:, n] = group.max(dim=1).values
        else:
            out[:, n] = torch.log(torch.exp(group.double()).sum(dim=1) / m).float()
    return out


@pytest.mark.parametrize('pool', ['logsumexp', 'max'])
@pytest.mark.parametrize('m', [1, 3])
def test_pool_classes_matches_reference(pool, m):
    n = 4
    tm = _make(8, n, m, evidence_pool=pool)
    scores = tm.match(torch.randn(2, 8, 3, 4))
    torch.testing.assert_close(tm.pool_classes(scores), _reference_class_map(scores, n, m, pool), rtol=1e-5, atol=1e-5)


def test_logsumexp_vs_max():
    n, m = 3, 4
    scores = torch.randn(2, n * m, 3, 3) * 5
    lse = _make(8, n, m, evidence_pool='logsumexp').pool_classes(scores)
    mx = _make(8, n, m, evidence_pool='max').pool_classes(scores)
    mean = scores.reshape(2, n, m, 3, 3).mean(dim=2)
    # logsumexp - log(m) is a soft maximum between the mean and the max of a class's scores
    assert (lse <= mx + 1e-5).all() and (lse >= mean - 1e-5).all()
    assert (mx - lse).abs().max() > 1e-3  # they differ on spread scores
    # m equal scores pool to that score, whatever the pooling
    equal = torch.randn(2, n, 1, 3, 3).expand(2, n, m, 3, 3).reshape(2, n * m, 3, 3)
    torch.testing.assert_close(_make(8, n, m, evidence_pool='logsumexp').pool_classes(equal), equal[:, ::m])
    torch.testing.assert_close(_make(8, n, m, evidence_pool='max').pool_classes(equal), equal[:, ::m])


def test_templates_are_class_major():
    """A region equal to template j of class n gives class n the highest class-map value."""
    n, m, c = 5, 3, 16
    tm = _make(c, n, m, evidence_pool='max', temperature_init=10.0)
    with torch.no_grad():
        tm.templates.weight.copy_(torch.linalg.qr(torch.randn(c, c))[0][: n * m, :, None, None])  # orthonormal
    for cls in range(n):
        for j in range(m):
            x = tm.templates.weight[cls * m + j, :, 0, 0].reshape(1, c, 1, 1)
            class_map = tm.pool_classes(tm.match(x))[0, :, 0, 0]
            assert class_map.argmax().item() == cls
            torch.testing.assert_close(class_map[cls], torch.tensor(10.0), rtol=1e-5, atol=1e-5)


def test_reset_classes_rebuilds_class_tied_parts():
    tm = _make(8, 5, 2)
    tm.evidence_weight.data.fill_(3.0)
    tm.eval()
    tm.reset_classes(7)
    assert tm.num_classes == 7 and tm.templates.weight.shape == (14, 8, 1, 1)
    assert tm.norm.num_features == 14 and tm.embed.weight.shape == (8, 14, 1, 1)
    assert not tm.training and not tm.norm.training
    assert tm.evidence_weight.item() == tm.evidence_weight_init
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(tm(x), x, rtol=0, atol=0)  # identity again


def test_temperature_stays_positive():
    tm = TemplateMatching(4, 2, temperature_init=16.0)
    assert math.isclose(tm.temperature.item(), 16.0, rel_tol=1e-6)
    tm.log_temperature.data.fill_(-50.0)  # wherever an optimizer pushes it
    assert tm.temperature.item() > 0


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(channels=0, num_classes=3), 'channels'),
        (dict(channels=4, num_classes=0), 'num_classes'),
        (dict(channels=4, num_classes=3, templates_per_class=0), 'templates_per_class'),
        (dict(channels=4, num_classes=3, evidence_pool='mean'), 'evidence_pool'),
        (dict(channels=4, num_classes=3, temperature_init=0.0), 'temperature_init'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemplateMatching(**kwargs)


@pytest.mark.parametrize('shape', [(2, 5, 3, 3), (2, 4, 3), (4, 3, 3)])
def test_bad_input_shape(shape):
    tm = TemplateMatching(4, 3)
    with pytest.raises(ValueError, match=r'\(B, 4, H, W\)'):
        tm(torch.randn(shape))


def test_empty_batch():
    tm = _make(4, 3, 2)
    y, evidence = tm.forward_with_evidence(torch.randn(0, 4, 3, 3))
    assert y.shape == (0, 4, 3, 3) and evidence.shape == (0, 3)


class _StageWithTM(nn.Module):
    """A timm CNN cut after one stage (features_only), a TM block, and a head fused with its class evidence."""

    def __init__(self, model_name: str, num_classes: int):
        super().__init__()
        import timm

        self.backbone = timm.create_model(model_name, features_only=True, out_indices=(1,), in_chans=1)
        channels = self.backbone.feature_info.channels()[-1]
        self.tm = TemplateMatching(channels, num_classes, templates_per_class=2)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)[-1]
        feats, evidence = self.tm.forward_with_evidence(feats)
        return self.fc(feats.mean(dim=(2, 3))) + evidence


@pytest.mark.parametrize('model_name', ['test_convnext', 'test_efficientnet'])
def test_follows_a_stage_of_another_timm_cnn(model_name):
    """Independence from ResNet: the block follows a ConvNeXt / EfficientNet stage and trains with it."""
    from timm_tm.data import load_digits_arrays

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images[:32]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=32, mode='bilinear', align_corners=False)
    y = torch.from_numpy(labels[:32])
    model = _StageWithTM(model_name, num_classes=10).train()
    nn.init.normal_(model.tm.embed.weight, std=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    for name in ('tm.templates.weight', 'tm.log_temperature', 'tm.embed.weight', 'tm.evidence_weight'):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), f'{name} did not train'

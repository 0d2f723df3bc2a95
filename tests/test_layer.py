"""The TemplateMatching layer on its own: shapes, numerics, gradients, class pooling, use outside ResNet.

These tests are about behaviour (what a caller of ``match`` / ``pool_classes`` / ``forward*`` sees), so they hold
for any faster implementation of the same block.
"""

import logging
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_tm import TemplateMatching

EMBEDDINGS = ('none', 'templates', 'classes', 'tied', 'argmax')


def randomize_embedding(tm: TemplateMatching, std: float = 0.1) -> TemplateMatching:
    """Random embedding weights (a zero embedding would make the block the identity and hide bugs)."""
    with torch.no_grad():
        if tm.embed is not None:
            nn.init.normal_(tm.embed.weight, std=std)
        if tm.embed_scale is not None:
            nn.init.normal_(tm.embed_scale, std=std)
    return tm


def _make(channels=8, num_classes=5, m=3, nontrivial=True, **kwargs) -> TemplateMatching:
    """A block with the 'templates' embedding (unless told otherwise), made random when ``nontrivial``."""
    kwargs.setdefault('embedding', 'templates')
    tm = TemplateMatching(channels, num_classes, templates_per_class=m, **kwargs)
    return randomize_embedding(tm) if nontrivial else tm


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
    # with evidence_mode='logits' the evidence is the spatial mean of the class map, scaled by the evidence weight
    tm.evidence_mode = 'logits'
    tm.evidence_weight.data.fill_(0.5)
    torch.testing.assert_close(tm.forward_with_evidence(x)[1], 0.5 * class_map.mean(dim=(2, 3)))


def test_gradient_mode_evidence_is_zero_with_the_logits_modes_gradient():
    """'gradient' evidence adds nothing to the logits, yet sends the templates exactly the 'logits' mode's gradient."""
    x = torch.randn(3, 8, 4, 4)
    target = torch.tensor([0, 2, 4])
    grads = {}
    for mode in ('gradient', 'logits'):
        torch.manual_seed(0)
        tm = _make(8, 5, 2, evidence_mode=mode, evidence_weight_init=0.3)
        logits = torch.randn(3, 5)
        _, evidence = tm.forward_with_evidence(x)
        if mode == 'gradient':
            assert not evidence.any()  # the predictions are the head's alone
        # the loss's gradient at the logits must be the same for both modes to compare: take it at `logits`
        (evidence * (F.softmax(logits, 1) - F.one_hot(target, 5))).sum().backward()
        grads[mode] = (tm.templates.weight.grad.clone(), tm.log_temperature.grad.clone(), tm.evidence_weight.grad)
    torch.testing.assert_close(grads['gradient'][0], grads['logits'][0])
    torch.testing.assert_close(grads['gradient'][1], grads['logits'][1])
    assert grads['gradient'][2] == 0 and grads['logits'][2] != 0  # a fixed gain in 'gradient' mode


@pytest.mark.parametrize('embedding', EMBEDDINGS)
def test_new_block_is_identity(embedding):
    tm = TemplateMatching(8, 5, templates_per_class=2, embedding=embedding)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(tm(x), x, rtol=0, atol=0)
    # and it stops being one once the embedding is trained away from zero (except 'none', which has none)
    randomize_embedding(tm)
    assert torch.equal(tm(x), x) == (embedding == 'none')


def test_embeddings_follow_reference_formulas():
    """Each embedding computes what its docstring says, written out plainly here."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4)
    for embedding in ('classes', 'tied', 'argmax'):
        tm = randomize_embedding(TemplateMatching(6, 4, templates_per_class=2, embedding=embedding)).eval()
        scores = tm.match(x)
        if embedding == 'classes':  # softmax over the N classes of the class map, one vector per class
            p = torch.softmax(tm.pool_classes(scores), dim=1)
            expected = x + torch.einsum('cn,bnhw->bchw', tm.embed.weight.flatten(1), p)
        else:  # over the K templates (all of them softly, or the best one), the unit templates as directions
            p = torch.softmax(scores, dim=1)
            if embedding == 'argmax':
                p = (scores == scores.amax(dim=1, keepdim=True)).float()
            units = F.normalize(tm.templates.weight.flatten(1), dim=1)
            expected = x + torch.einsum('kc,bkhw->bchw', units, p) * tm.embed_scale.view(1, -1, 1, 1)
        torch.testing.assert_close(tm(x), expected, rtol=1e-5, atol=1e-5)


def test_argmax_embedding_passes_the_softmax_gradient_to_the_scores():
    """The hard assignment has no gradient of its own: the scores (templates, temperature) get the softmax's."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4)
    grads = {}
    for embedding in ('tied', 'argmax'):
        torch.manual_seed(1)
        tm = randomize_embedding(TemplateMatching(6, 4, embedding=embedding))
        tm(x).square().sum().backward()
        grads[embedding] = tm.log_temperature.grad
    assert grads['argmax'] is not None and grads['argmax'].abs() > 0
    assert not torch.equal(grads['argmax'], grads['tied'])  # the forward differs, so does the gradient


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


@pytest.mark.parametrize('embedding', EMBEDDINGS)
@pytest.mark.parametrize('mode', ['gradient', 'logits'])
def test_gradients_reach_every_parameter(embedding, mode):
    tm = _make(8, 4, 2, embedding=embedding, evidence_mode=mode)
    tm.train()
    x = torch.randn(4, 8, 5, 5)
    y, evidence = tm.forward_with_evidence(x)
    (y.square().mean() + F.cross_entropy(torch.randn(4, 4) + evidence, torch.tensor([0, 1, 2, 3]))).backward()
    for name, p in tm.named_parameters():
        if name == 'evidence_weight' and mode == 'gradient':
            assert p.grad is None or p.grad == 0, 'the evidence weight is a fixed gain in gradient mode'
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, f'no gradient reaches {name}'


@pytest.mark.parametrize('mode', ['gradient', 'logits'])
def test_evidence_alone_trains_templates_and_temperature(mode):
    """With the fresh (zero) embedding, the label still reaches templates and temperature through the evidence."""
    tm = TemplateMatching(8, 4, templates_per_class=2, evidence_mode=mode)
    x = torch.randn(4, 8, 5, 5)
    _, evidence = tm.forward_with_evidence(x)
    F.cross_entropy(evidence, torch.tensor([0, 1, 2, 3])).backward()
    for p in (tm.templates.weight, tm.log_temperature):
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
    assert math.isclose(tm.evidence_weight.item(), tm.evidence_weight_init, rel_tol=1e-6)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(tm(x), x, rtol=0, atol=0)  # identity again


def test_temperature_is_clamped_to_its_range():
    """An optimizer may push log_temperature anywhere; the scores use a temperature within temperature_range."""
    tm = TemplateMatching(4, 2, temperature_init=16.0, temperature_range=(4.0, 32.0))
    assert math.isclose(tm.temperature.item(), 16.0, rel_tol=1e-6)
    x = torch.randn(2, 4, 3, 3)
    for log_t, expected in ((-50.0, 4.0), (50.0, 32.0), (math.log(8.0), 8.0)):
        tm.log_temperature.data.fill_(log_t)
        assert math.isclose(tm.temperature.item(), expected, rel_tol=1e-5)
        assert math.isclose(tm.match(x).abs().max().item(), expected, rel_tol=0.35)  # some region-template near 1
        assert tm.match(x).abs().max().item() <= expected * (1 + 1e-5)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(channels=0, num_classes=3), 'channels'),
        (dict(channels=4, num_classes=0), 'num_classes'),
        (dict(channels=4, num_classes=3, templates_per_class=0), 'templates_per_class'),
        (dict(channels=4, num_classes=3, evidence_pool='mean'), 'evidence_pool'),
        (dict(channels=4, num_classes=3, temperature_init=0.0), 'temperature_init'),
        (dict(channels=4, num_classes=3, temperature_init=float('nan')), 'temperature_init'),
        (dict(channels=4, num_classes=3, temperature_init=float('inf')), 'temperature_init'),
        (dict(channels=4, num_classes=3, temperature_init=64.0), 'temperature_init must lie in'),
        (dict(channels=4, num_classes=3, temperature_range=(8.0, 4.0)), 'temperature_range'),
        (dict(channels=4, num_classes=3, evidence_weight_init=float('nan')), 'evidence_weight_init'),
        (dict(channels=4, num_classes=3, evidence_weight_init=float('-inf')), 'evidence_weight_init'),
        (dict(channels=4, num_classes=3, evidence_mode='both'), 'evidence_mode'),
        (dict(channels=4, num_classes=3, embedding='mlp'), 'embedding'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemplateMatching(**kwargs)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(channels=4, num_classes=3, templates_per_class=2.5), 'templates_per_class'),
        (dict(channels=4.0, num_classes=3), 'channels'),
        (dict(channels=4, num_classes=True), 'num_classes'),
        (dict(channels=4, num_classes=3, temperature_init='16'), 'temperature_init'),
        (dict(channels=4, num_classes=3, temperature_range=4.0), 'temperature_range'),
    ],
)
def test_wrong_types_are_refused_as_clearly(kwargs, match):
    with pytest.raises(TypeError, match=match):
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
        self.tm = TemplateMatching(channels, num_classes, templates_per_class=2, embedding='templates')
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
    for name in ('tm.templates.weight', 'tm.log_temperature', 'tm.embed.weight'):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), f'{name} did not train'


# ------------------------------------------------------------------------------- the configuration in the state_dict


def test_state_dict_records_the_configuration_with_stable_codes():
    """Codes are positions in EVIDENCE_MODES / EVIDENCE_POOLS / EMBEDDINGS: checkpoints keep them, so the tuples only
    grow at their end (a new option gets the next code)."""
    from timm_tm.layers import CONFIG_FIELDS, EMBEDDINGS, EVIDENCE_MODES, EVIDENCE_POOLS

    assert EVIDENCE_MODES[:2] == ('gradient', 'logits') and EVIDENCE_POOLS[:2] == ('logsumexp', 'max')
    assert EMBEDDINGS[:5] == ('none', 'templates', 'classes', 'tied', 'argmax')
    assert CONFIG_FIELDS == (
        'version',
        'evidence_mode',
        'evidence_pool',
        'embedding',
        'templates_per_class',
        'num_classes',
    )
    tm = TemplateMatching(8, 10, templates_per_class=2, evidence_pool='max', evidence_mode='logits', embedding='tied')
    record = tm.state_dict()['tm_config']
    assert record.dtype == torch.int64 and record.tolist() == [1, 1, 1, 3, 2, 10]
    assert tm.half().state_dict()['tm_config'].dtype == torch.int64  # a dtype cast leaves it an integer record
    tm.reset_classes(3)
    assert tm.state_dict()['tm_config'].tolist() == [1, 1, 1, 3, 2, 3]


@pytest.mark.parametrize(
    'source, needle',
    [
        (dict(evidence_mode='logits'), "evidence_mode='logits'"),  # the same tensors: it loaded and predicted otherwise
        (dict(evidence_pool='max'), "evidence_pool='max'"),
        (dict(embedding='argmax'), "embedding='argmax'"),  # the same keys as 'tied', another assignment
        (dict(num_classes=5, templates_per_class=2), 'templates_per_class=2, num_classes=5'),  # 10 templates both
    ],
)
def test_weights_of_another_configuration_are_refused_naming_it(source, needle, caplog):
    block = TemplateMatching(8, **{'num_classes': 10, 'embedding': 'none', **source})
    target = TemplateMatching(8, 10, embedding='tied' if 'embedding' in source else 'none')
    with pytest.raises(RuntimeError, match=needle):
        target.load_state_dict(block.state_dict())
    older = {k: v for k, v in block.state_dict().items() if k != 'tm_config'}
    with caplog.at_level(logging.WARNING, logger='timm_tm.layers'):
        target.load_state_dict(older)  # saved before the record existed: loads as it always did, with a warning
    assert torch.equal(target.templates.weight, block.templates.weight)
    assert 'no tm_config record' in caplog.text and "embedding='" in caplog.text  # what was assumed, named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='timm_tm.layers'):
        target.load_state_dict(target.state_dict())  # with its record: no warning
    assert 'tm_config' not in caplog.text

"""The fast TemplateMatching forward path equals a plain implementation written from its spec (docs/DESIGN.md).

The reference below normalizes regions and templates with ``F.normalize`` and matches them with an einsum,
one step per line of the spec; the layer fuses the normalization into the conv and must still agree with it
in values and in every gradient. Also: channels_last kept, no torch.compile graph breaks, TorchScript.
"""

import copy
import math
from typing import Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_tm.layers import TemplateMatching


def reference_scores(tm: TemplateMatching, x: torch.Tensor) -> torch.Tensor:
    """s[b,k,i,j] = tau * cos(x[b,:,i,j], t_k), B x K x H x W."""
    regions = F.normalize(x, dim=1, eps=tm.eps)  # B x C x H x W
    templates = F.normalize(tm.templates.weight.flatten(1), dim=1, eps=tm.eps)  # K x C
    return tm.log_temperature.exp() * torch.einsum('bchw,kc->bkhw', regions, templates)


def reference_class_map(tm: TemplateMatching, scores: torch.Tensor) -> torch.Tensor:
    """B x N x H x W: each class's m scores pooled per region (logsumexp - log m, or max)."""
    b, _, h, w = scores.shape
    m = tm.templates_per_class
    grouped = scores.reshape(b, tm.num_classes, m, h, w)
    if tm.evidence_pool == 'max':
        # amax: tied scores (an all-zero region scores 0 on every template) share the gradient evenly
        return grouped.amax(dim=2)
    return torch.logsumexp(grouped, dim=2) - math.log(m)


def reference_forward_with_evidence(tm: TemplateMatching, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    scores = reference_scores(tm, x)
    norm = tm.norm
    selected = F.relu(
        F.batch_norm(
            scores,
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            training=norm.training,
            momentum=norm.momentum,
            eps=norm.eps,
        )
    )
    embedded = torch.einsum('ck,bkhw->bchw', tm.embed.weight.flatten(1), selected)
    evidence = reference_class_map(tm, scores).mean(dim=(2, 3)) * tm.evidence_weight
    return x + embedded, evidence


def _block(channels: int, num_classes: int, m: int, pool: str) -> TemplateMatching:
    # the original block: BN + ReLU over the templates, evidence added to the logits (the 'gradient' mode is the same
    # forward pass with zero evidence, tests/test_layer.py)
    tm = TemplateMatching(
        channels, num_classes, templates_per_class=m, evidence_pool=pool, temperature_init=12.0,
        embedding='templates', evidence_mode='logits',
    )  # fmt: skip
    # every part non-trivial: a zero embedding or default BN affine would hide errors in them
    nn.init.normal_(tm.embed.weight, std=0.1)
    nn.init.uniform_(tm.norm.weight, 0.5, 1.5)
    nn.init.normal_(tm.norm.bias, std=0.1)
    tm.norm.running_mean.normal_()
    tm.norm.running_var.uniform_(0.5, 2.0)
    tm.evidence_weight.data.fill_(0.7)
    return tm


def _grads(tm: nn.Module, x: torch.Tensor, fn) -> dict:
    y, evidence = fn(x)
    # weights of all sizes so that no gradient is a plain sum
    gy = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    ge = torch.linspace(1, -0.5, evidence.numel()).reshape(evidence.shape)
    ((y * gy).sum() + (evidence * ge).sum()).backward()
    grads = {n: p.grad.clone() for n, p in tm.named_parameters()}
    grads['input'] = x.grad.clone()
    return grads, y.detach(), evidence.detach()


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('m,pool', [(1, 'logsumexp'), (3, 'logsumexp'), (2, 'max')])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fast_equals_reference_with_gradients(training, m, pool, channels_last):
    tm = _block(24, 5, m, pool).train(training)
    ref = copy.deepcopy(tm)
    x = torch.randn(3, 24, 5, 6)
    x[1, :, 2, 3] = 0  # an all-zero region scores 0 in both
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_fast = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)

    grads, y, evidence = _grads(tm, x_fast, tm.forward_with_evidence)
    ref_grads, ref_y, ref_evidence = _grads(ref, x_ref, lambda t: reference_forward_with_evidence(ref, t))

    torch.testing.assert_close(tm.match(x), reference_scores(ref, x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evidence, ref_evidence, rtol=1e-5, atol=1e-5)
    expected = {
        'templates.weight',
        'norm.weight',
        'norm.bias',
        'embed.weight',
        'log_temperature',
        'evidence_weight',
        'input',
    }
    assert expected == set(grads) == set(ref_grads)
    # at the all-zero region the input gradient is scaled by 1 / eps (~1e4 here): same value, fp32 rounding amplified
    torch.testing.assert_close(grads['input'][1, :, 2, 3], ref_grads['input'][1, :, 2, 3], rtol=1e-2, atol=1e-2)
    grads['input'][1, :, 2, 3] = ref_grads['input'][1, :, 2, 3] = 1.0
    for name in sorted(expected):
        assert ref_grads[name].abs().sum() > 0, f'reference gradient of {name} is zero: the test would not see it'
        torch.testing.assert_close(
            grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f'gradient of {name}: {m}'
        )
    # BN running statistics move the same way in training, and not at all in eval
    torch.testing.assert_close(tm.norm.running_mean, ref.norm.running_mean)
    torch.testing.assert_close(tm.norm.running_var, ref.norm.running_var)


def test_forward_and_class_map_agree_with_reference():
    tm = _block(16, 4, 3, 'logsumexp').eval()
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        ref_y, _ = reference_forward_with_evidence(tm, x)
        y, class_map = tm.forward_class_map(x)
        torch.testing.assert_close(tm(x), ref_y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(class_map, reference_class_map(tm, reference_scores(tm, x)), rtol=1e-5, atol=1e-5)


def test_channels_last_kept_end_to_end():
    tm = _block(32, 6, 2, 'logsumexp').train()
    x = torch.randn(2, 32, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y, evidence = tm.forward_with_evidence(x)
    assert tm.match(x).is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    (y.sum() + evidence.sum()).backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_no_graph_breaks_under_torch_compile():
    """torch.compile traces the TM path as one graph (checked with dynamo's explain, no compilation)."""
    tm = _block(16, 4, 2, 'logsumexp').train()
    x = torch.randn(2, 16, 4, 4)
    for fn in (tm.forward_with_evidence, tm.forward_class_map, tm.forward):
        explanation = torch._dynamo.explain(fn)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_torchscript_matches_eager():
    tm = _block(16, 4, 2, 'max').eval()
    scripted = torch.jit.script(tm)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        for name in ('forward_with_evidence', 'forward_class_map'):
            for got, want in zip(getattr(scripted, name)(x), getattr(tm, name)(x)):
                torch.testing.assert_close(got, want)
        torch.testing.assert_close(scripted(x), tm(x))

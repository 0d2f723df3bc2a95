"""Template-matching (TM) layer.

"Feature Embedding by Template Matching as a ResNet Block" (Gorgun, Gurbuz, Alatan; BMVC 2022,
https://arxiv.org/abs/2210.00992). Every local region of a feature map is scored against class-specific
templates (cosine similarity), BatchNorm + ReLU select the templates a region matches better than usual,
and a zero-initialized 1x1 convolution embeds that selection back into the feature map (a residual block
that starts as the identity). The pooled scores of each class form the block's ``class_evidence``.

The layer knows nothing about ResNet: it takes a channel count and a class count and can follow any
stage of any CNN with NCHW features.
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

__all__ = ['TemplateMatching', 'EVIDENCE_POOLS']

EVIDENCE_POOLS = ('logsumexp', 'max')


@register_notrace_function  # FX (timm's feature extraction) cannot trace a shape check: keep it a leaf call
def check_input_shape(x: torch.Tensor, channels: int, owner: str, param: str) -> None:
    """Raise a ValueError naming the expected shape unless ``x`` is B x ``channels`` x H x W."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f'{owner} expects input of shape (B, {channels}, H, W) ({param}={channels}), got {list(x.shape)}'
        )


torch.fx.wrap('check_input_shape')  # a leaf wherever it is called from, under any FX tracer


class TemplateMatching(nn.Module):
    """Residual template-matching block.

    Shapes: input ``x`` is B x C x H x W; with N classes and m templates per class there are K = N * m
    templates (class-major: template ``n * m + j`` belongs to class ``n``).

    * ``scores``: B x K x H x W, ``temperature * cos(x[:, :, i, j], template_k)``, bounded by the temperature.
    * ``class_map``: B x N x H x W, the scores pooled over each class's m templates.
    * ``class_evidence``: B x N, the class map averaged over positions, scaled by ``evidence_weight``;
      a model adds it to its logits so that the labels reach the templates through any loss on the logits.
    * ``forward(x)``: B x C x H x W, ``x + embed(relu(norm(scores)))``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        templates_per_class: int = 1,
        temperature_init: float = 16.0,
        evidence_weight_init: float = 1.0,
        evidence_pool: str = 'logsumexp',
        eps: float = 1e-6,
        norm_layer: type = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ):
        """
        Args:
            channels: Channels C of the feature map this block follows.
            num_classes: Classes N the templates belong to (>= 1).
            templates_per_class: Templates m per class (>= 1).
            temperature_init: Initial temperature of the cosine scores (learnable, kept positive).
            evidence_weight_init: Initial weight of the class evidence added to the logits (learnable).
            evidence_pool: How a class's m template scores are pooled per region: 'logsumexp' or 'max'.
            eps: Smallest feature norm used in the cosine, so an all-zero region scores 0, not NaN.
            norm_layer: Normalization over the K scores (the 'arg-max' of the paper: BN then ReLU).
        """
        super().__init__()
        if channels < 1:
            raise ValueError(f'channels must be >= 1, got {channels}')
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1 for a TemplateMatching block, got {num_classes}')
        if templates_per_class < 1:
            raise ValueError(f'templates_per_class must be >= 1, got {templates_per_class}')
        if evidence_pool not in EVIDENCE_POOLS:
            raise ValueError(f'evidence_pool must be one of {EVIDENCE_POOLS}, got {evidence_pool!r}')
        if temperature_init <= 0:
            raise ValueError(f'temperature_init must be > 0, got {temperature_init}')
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        self.templates_per_class = templates_per_class
        self.evidence_pool = evidence_pool
        self.eps = eps
        self.temperature_init = temperature_init
        self.evidence_weight_init = evidence_weight_init
        self._norm_layer = norm_layer
        # log-parameterized so the temperature stays > 0 whatever the optimizer does
        self.log_temperature = nn.Parameter(torch.empty((), **dd))
        self.evidence_weight = nn.Parameter(torch.empty((), **dd))
        self.num_classes = 0
        self.reset_classes(num_classes, **dd)
        self.log_temperature.data.fill_(math.log(temperature_init))
        self.evidence_weight.data.fill_(evidence_weight_init)

    @property
    def num_templates(self) -> int:
        return self.num_classes * self.templates_per_class

    @torch.jit.ignore
    def reset_classes(self, num_classes: int, device=None, dtype=None) -> None:
        """Rebuild the class-tied parts (templates, score norm, embedding) for ``num_classes`` classes.

        The new block is the identity again (zero embedding) and its evidence weight is back at its initial
        value. Device, dtype, training mode and requires_grad follow the existing parameters.
        """
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1 for a TemplateMatching block, got {num_classes}')
        if device is None or dtype is None:
            device = device or self.log_temperature.device
            dtype = dtype or self.log_temperature.dtype
        dd = {'device': device, 'dtype': dtype}
        requires_grad = self.log_temperature.requires_grad
        self.num_classes = num_classes
        k = self.num_templates
        # templates as a 1x1 conv weight (K x C x 1 x 1): each kernel is a template
        self.templates = nn.Conv2d(self.channels, k, 1, bias=False, **dd)
        self.norm = self._norm_layer(k, **dd)
        self.embed = nn.Conv2d(k, self.channels, 1, bias=False, **dd)
        if not torch.device(device).type == 'meta':
            nn.init.normal_(self.templates.weight)
            self.zero_init_last()
        if self.evidence_weight.device.type != 'meta':
            self.evidence_weight.data.fill_(self.evidence_weight_init)
        for m in (self.templates, self.norm, self.embed):
            m.train(self.training)
            m.requires_grad_(requires_grad)

    def zero_init_last(self) -> None:
        """Zero the embedding so the block is the identity (timm's ResNet calls this from init_weights)."""
        nn.init.zeros_(self.embed.weight)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def match(self, x: torch.Tensor) -> torch.Tensor:
        """Matching scores, B x K x H x W: temperature * cosine(region, template)."""
        check_input_shape(x, self.channels, 'TemplateMatching', 'channels')
        weight = self.templates.weight
        templates = F.normalize(weight.flatten(1), dim=1, eps=self.eps).reshape(weight.shape).to(x.dtype)
        # the region norm is taken in fp32 (a sum of squares of 2048 channels overflows fp16 easily), and the regions
        # are scaled to norm temperature before the conv, not its output after: the conv then sees bounded vectors
        # under fp16 / bf16, an all-zero region's gradient is 0, not 0 * (huge 1 / eps scale overflowing fp16) = NaN,
        # and the conv output already is the score (no pass over, and no saved copy of, the B x K x H x W dots).
        # For fp32 input the final `.to` returns its input as is (no copy).
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32).clamp_min(self.eps)
        scale = self.log_temperature.float().exp() / norm  # B x 1 x H x W
        return F.conv2d((x * scale).to(x.dtype), templates)

    def pool_classes(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-region class map, B x N x H x W: a class's m template scores pooled per region."""
        b, _, h, w = scores.shape
        m = self.templates_per_class
        if m == 1:
            return scores
        grouped = scores.reshape(b, self.num_classes, m, h, w)
        if self.evidence_pool == 'max':
            return grouped.amax(dim=2)
        # soft maximum; minus log(m) so that m equal scores pool to that score, whatever m
        return torch.logsumexp(grouped.float(), dim=2).sub(math.log(m)).to(scores.dtype)

    @torch.jit.export
    def forward_with_evidence(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B x C x H x W features, B x N weighted class evidence)."""
        evidence: List[torch.Tensor] = []
        y = self.forward(x, evidence)
        return y, evidence[0]

    @torch.jit.export
    def forward_class_map(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B x C x H x W features, B x N x H x W per-region class map, unweighted)."""
        scores = self.match(x)
        y = x + self.embed(F.relu(self.norm(scores)))
        return y, self.pool_classes(scores)

    def forward(self, x: torch.Tensor, evidence: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """B x C x H x W -> B x C x H x W; appends the B x N weighted class evidence to ``evidence`` when given.

        A model collects the evidence through this call (not ``forward_with_evidence``) so that the block runs as a
        module: forward hooks fire, and FX feature extraction scopes the block's nodes, its output last, under its name.
        """
        scores = self.match(x)
        if evidence is not None:
            e = self.pool_classes(scores).mean(dim=(2, 3))
            evidence.append(e * self.evidence_weight.to(e.dtype))
        return x + self.embed(F.relu(self.norm(scores)))

    def extra_repr(self) -> str:
        return (
            f'channels={self.channels}, num_classes={self.num_classes}, '
            f'templates_per_class={self.templates_per_class}, evidence_pool={self.evidence_pool!r}'
        )

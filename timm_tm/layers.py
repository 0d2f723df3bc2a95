"""Template-matching (TM) layer.

"Feature Embedding by Template Matching as a ResNet Block" (Gorgun, Gurbuz, Alatan; BMVC 2022,
https://arxiv.org/abs/2210.00992). Every local region of a feature map is scored against class-specific
templates (cosine similarity), BatchNorm + ReLU select the templates a region matches better than usual,
and a zero-initialized 1x1 convolution embeds that selection back into the feature map (a residual block
that starts as the identity). The pooled scores of each class form the block's ``class_evidence``.

The layer knows nothing about ResNet: it takes a channel count and a class count and can follow any
stage of any CNN with NCHW features.
"""

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

__all__ = [
    'TemplateMatching', 'EVIDENCE_POOLS', 'EVIDENCE_MODES', 'EMBEDDINGS', 'DEFAULT_EMBEDDING', 'CONFIG_KEY',
    'CONFIG_FIELDS',
    'tm_config_problem',
]  # fmt: skip

EVIDENCE_POOLS = ('logsumexp', 'max')
EVIDENCE_MODES = ('gradient', 'logits')
EMBEDDINGS = ('none', 'templates', 'classes', 'tied', 'argmax')
# the paper's block embeds features; 'argmax' (a region gets the direction of the template it matches best) is the
# form measured best on Fashion-MNIST (README "Results"); 'none' is the evidence-only ablation
DEFAULT_EMBEDDING = 'argmax'

# A block's state_dict records its configuration under CONFIG_KEY (int64, one value per field of CONFIG_FIELDS), so
# that weights made with other options are refused on load whatever loads them (load_state_dict, timm's loaders, EMA,
# export): the same shapes with another evidence mode, pool or class layout would load and compute something else.
# The options are stored as their position in EVIDENCE_MODES / EVIDENCE_POOLS / EMBEDDINGS: those tuples only ever
# grow at their end (tests/test_layer.py pins the positions).
CONFIG_KEY = 'tm_config'
CONFIG_VERSION = 1
CONFIG_FIELDS = ('version', 'evidence_mode', 'evidence_pool', 'embedding', 'templates_per_class', 'num_classes')
_CONFIG_CHOICES = {'evidence_mode': EVIDENCE_MODES, 'evidence_pool': EVIDENCE_POOLS, 'embedding': EMBEDDINGS}
_logger = logging.getLogger(__name__)
CONFIG_ADVICE = (
    'create the model with the TM options the weights were made with (num_classes is template_classes for a '
    'num_classes=0 model)'
)


def _config_text(config: Dict[str, Any], fields: Sequence[str] = CONFIG_FIELDS[1:]) -> str:
    """The ``fields`` of a decoded ``tm_config`` as keyword arguments: "evidence_mode='gradient', ..."."""
    return ', '.join(f'{f}={config[f]!r}' for f in fields)


@register_notrace_function  # a leaf call under timm's FX tracer (feature extraction): shapes are not traceable
def check_input_shape(x: torch.Tensor, channels: int, owner: str, param: str) -> None:
    """Raise a ValueError naming the expected shape unless ``x`` is B x ``channels`` x H x W."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f'{owner} expects input of shape (B, {channels}, H, W) ({param}={channels}), got {list(x.shape)}'
        )


@register_notrace_function
def block_output(x: torch.Tensor) -> torch.Tensor:
    """Returns ``x`` itself. Under FX it is a leaf call, so a block's output is always a node of the block's own,
    created last: FX feature extraction takes a module's last node as its output, and a block that returns its input
    unchanged (``embedding='none'``) would otherwise hand over its class evidence instead."""
    return x


class TemplateMatching(nn.Module):
    """Residual template-matching block.

    Shapes: input ``x`` is B x C x H x W; with N classes and m templates per class there are K = N * m
    templates (class-major: template ``n * m + j`` belongs to class ``n``).

    * ``scores``: B x K x H x W, ``temperature * cos(x[:, :, i, j], template_k)``, bounded by the temperature.
    * ``class_map``: B x N x H x W, the scores pooled over each class's m templates.
    * ``class_evidence``: B x N, the class map averaged over positions, scaled by ``evidence_weight``. A model adds
      it to its logits so that the labels reach the templates through any loss on the logits; with
      ``evidence_mode='gradient'`` (the default) its value is zero and only its gradient reaches the templates.
    * ``forward(x)``: B x C x H x W, ``x + embedding`` (see ``embedding``; ``x`` itself for ``'none'``).

    Its state_dict records the block's configuration (``tm_config``: evidence mode, pool, embedding, m, N): loading
    weights made with another one is refused with an error naming what differs. Weights without the record (timm
    ResNet weights being converted, checkpoints saved before it existed) load as before.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        templates_per_class: int = 1,
        temperature_init: float = 16.0,
        evidence_weight_init: float = 0.3,
        evidence_pool: str = 'logsumexp',
        evidence_mode: str = 'gradient',
        embedding: str = DEFAULT_EMBEDDING,
        temperature_range: Tuple[float, float] = (4.0, 32.0),
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
            temperature_init: Initial temperature of the cosine scores (learnable within ``temperature_range``).
            evidence_weight_init: Weight of the class evidence in the logits. Learnable with
                ``evidence_mode='logits'``; with ``'gradient'`` it is a fixed gain of the labels' gradient.
            evidence_pool: How a class's m template scores are pooled per region: 'logsumexp' or 'max'.
            evidence_mode: 'gradient': the evidence reaches the logits as gradient only (``w * (e - e.detach())``,
                zero in the forward pass: predictions are the head's, the labels still train the templates);
                'logits': the evidence is added to the logits.
            embedding: What the block adds to the features: 'none' (nothing: the block only sends the labels'
                gradient into the stage), 'templates' (BN + ReLU over the K scores, a zero-initialized 1x1
                conv K -> C), 'classes' (a per-region softmax over the N classes, one learned, zero-initialized
                vector per class), 'tied' (a per-region softmax over the K templates, the templates' own
                directions, a zero-initialized per-channel scale), 'argmax' (as 'tied', with a hard assignment: each
                region gets the direction of the one template it matches best; the softmax's gradient passes
                through, straight-through; the default).
            temperature_range: (min, max) of the temperature: it is clamped to it in the forward pass.
            eps: Smallest feature norm used in the cosine, so an all-zero region scores 0, not NaN.
            norm_layer: Normalization over the K scores for ``embedding='templates'``.
        """
        super().__init__()
        t_min, t_max = _check_args(
            channels, num_classes, templates_per_class, evidence_pool, evidence_mode, embedding,
            evidence_weight_init, eps, temperature_range, temperature_init,
        )  # fmt: skip
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        self.templates_per_class = templates_per_class
        self.evidence_pool = evidence_pool
        self.evidence_mode = evidence_mode
        self.embedding = embedding
        self.eps = eps
        self.temperature_init = float(temperature_init)
        self.log_temperature_min = math.log(t_min)
        self.log_temperature_max = math.log(t_max)
        self.evidence_weight_init = float(evidence_weight_init)
        self._norm_layer = norm_layer
        # a model that cannot pass ``evidence`` through its stages (timm_tm.models.tm_attach) sets a list here for one
        # forward pass, and sets reports_evidence for good (see _report_evidence)
        self.evidence_sink: Optional[List[torch.Tensor]] = None
        self.reports_evidence = False
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
        """Rebuild the class-tied parts (templates, and the embedding's) for ``num_classes`` classes.

        The new block is the identity again (zero embedding) and its evidence weight is back at its initial
        value. Device, dtype, training mode and requires_grad follow the existing parameters.
        """
        check_int('num_classes', num_classes, 1, ' for a TemplateMatching block')
        if device is None or dtype is None:
            device = device or self.log_temperature.device
            dtype = dtype or self.log_temperature.dtype
        dd = {'device': device, 'dtype': dtype}
        requires_grad = self.log_temperature.requires_grad
        self.num_classes = num_classes
        self.register_buffer(CONFIG_KEY, self._config_record(device), persistent=True)
        k = self.num_templates
        # templates as a 1x1 conv weight (K x C x 1 x 1): each kernel is a template
        self.templates = nn.Conv2d(self.channels, k, 1, bias=False, **dd)
        # None where the embedding has no such part (TorchScript prunes the branches of None attributes)
        self.norm: Optional[nn.Module] = self._norm_layer(k, **dd) if self.embedding == 'templates' else None
        embed_in = {'templates': k, 'classes': self.num_classes}.get(self.embedding)
        self.embed: Optional[nn.Module] = nn.Conv2d(embed_in, self.channels, 1, bias=False, **dd) if embed_in else None
        if self.embedding in ('tied', 'argmax'):
            self.embed_scale = nn.Parameter(torch.empty(self.channels, **dd))
        else:
            self.register_parameter('embed_scale', None)
        if torch.device(device).type != 'meta':
            nn.init.normal_(self.templates.weight)
            self.zero_init_last()
        if self.evidence_weight.device.type != 'meta':
            self.evidence_weight.data.fill_(self.evidence_weight_init)
        for m in self.children():
            m.train(self.training)
        for p in self.parameters():
            if p is not self.log_temperature and p is not self.evidence_weight:
                p.requires_grad_(requires_grad)

    def _config_record(self, device=None) -> torch.Tensor:
        """The block's configuration as its state_dict records it: an int64 value per field of CONFIG_FIELDS."""
        values = {'version': CONFIG_VERSION, 'templates_per_class': self.templates_per_class}
        values.update({k: choices.index(getattr(self, k)) for k, choices in _CONFIG_CHOICES.items()})
        values['num_classes'] = self.num_classes
        return torch.tensor([values[f] for f in CONFIG_FIELDS], dtype=torch.int64, device=device)

    @torch.jit.ignore
    def config(self) -> Dict[str, Any]:
        """The options that give the stored weights their meaning, as ``tm_config`` records them."""
        return _decode_config(self._config_record())

    @torch.jit.ignore
    def config_problem(self, record: Any, classes: bool = True) -> Optional[str]:
        """Why weights whose ``tm_config`` is ``record`` do not fit this block, or None: a clause such as "was made
        with evidence_mode='logits', this model has evidence_mode='gradient'". ``classes=False`` leaves out the class
        count (a fine-tuning start rebuilds the class-tied parts)."""
        theirs, ours = _decode_config(record), self.config()
        if theirs is None:
            return f'records {CONFIG_KEY} {_shown(record)}, not a TM block configuration of this timm-tm version'
        fields = [f for f in CONFIG_FIELDS[1:] if classes or f != 'num_classes']
        differs = [f for f in fields if theirs[f] != ours[f]]
        if not differs:
            return None
        return f'was made with {_config_text(theirs, differs)}, this model has {_config_text(ours, differs)}'

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """torch's load, after checking the recorded configuration (a mismatch is an error, and nothing of this block
        is copied); without a record (older checkpoints) the block loads as before, with a warning that names what it
        assumes (converted ResNet weights get the model's own record)."""
        key = prefix + CONFIG_KEY
        if key in state_dict:
            problem = self.config_problem(state_dict[key])
            if problem:
                error_msgs.append(f'TM block {prefix[:-1] or "(root)"} {problem}: {CONFIG_ADVICE}')
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)
            if prefix + 'templates.weight' in state_dict:  # TM weights saved before the record: say what is assumed
                _logger.warning(
                    f'TM block {prefix[:-1] or "(root)"}: the checkpoint has no {CONFIG_KEY} record (saved before '
                    'timm-tm recorded it), so its evidence_mode, evidence_pool, embedding and class layout are '
                    f"taken to be this model's ({_config_text(self.config())}): weights made otherwise predict "
                    'otherwise'
                )

    def zero_init_last(self) -> None:
        """Zero the embedding so the block is the identity (timm's ResNet calls this from init_weights)."""
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)
        if self.embed_scale is not None:
            nn.init.zeros_(self.embed_scale)

    @torch.jit.ignore
    def identity_state_keys(self) -> List[str]:
        """State-dict keys (relative to the block) that are zero when the block changes neither the features nor
        the logits: what converting a ResNet's weights zeroes for an exact start."""
        keys = [k for k, part in (('embed.weight', self.embed), ('embed_scale', self.embed_scale)) if part is not None]
        if self.evidence_mode == 'logits':  # with 'gradient' the evidence is zero in the forward pass anyway
            keys.append('evidence_weight')
        return keys

    @property
    def temperature(self) -> torch.Tensor:
        """The temperature in use: ``exp(log_temperature)`` clamped to ``temperature_range``."""
        return self._clamped_log_temperature().exp()

    def _clamped_log_temperature(self) -> torch.Tensor:
        return self.log_temperature.float().clamp(self.log_temperature_min, self.log_temperature_max)

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
        scale = self._clamped_log_temperature().exp() / norm  # B x 1 x H x W
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

    def class_evidence(self, scores: torch.Tensor) -> torch.Tensor:
        """B x K x H x W scores -> B x N weighted class evidence, as it enters the logits.

        With ``evidence_mode='gradient'`` it is ``w * (e - e.detach())``: zero, with e's gradient (w is then a
        fixed gain: its own gradient, ``e - e.detach()``, is zero).
        """
        e = self.pool_classes(scores).mean(dim=(2, 3))
        if self.evidence_mode == 'gradient':
            e = e - e.detach()
        return e * self.evidence_weight.to(e.dtype)

    def embed_regions(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """B x C x H x W features and their B x K x H x W scores -> the block's output, B x C x H x W."""
        embed = self.embed
        if embed is not None:
            norm = self.norm
            if norm is not None:  # 'templates': BN + ReLU, the soft arg-max over templates
                assignment = F.relu(norm(scores))
            else:  # 'classes': a soft assignment of each region to the classes
                assignment = torch.softmax(self.pool_classes(scores).float(), dim=1).to(scores.dtype)
            return x + embed(assignment)
        embed_scale = self.embed_scale
        if embed_scale is not None:  # 'tied' / 'argmax': the directions of the templates a region matches
            assignment = torch.softmax(scores.float(), dim=1)
            if self.embedding == 'argmax':  # the best template only; the gradient is the softmax's (straight-through)
                best = F.one_hot(assignment.argmax(dim=1), assignment.shape[1]).permute(0, 3, 1, 2)
                assignment = best.to(assignment.dtype) + assignment - assignment.detach()
            assignment = assignment.to(x.dtype)
            weight = self.templates.weight
            directions = F.normalize(weight.flatten(1), dim=1, eps=self.eps).to(x.dtype)  # K x C
            v = F.conv2d(assignment, directions.t()[:, :, None, None])
            return x + v * embed_scale.to(x.dtype).view(1, -1, 1, 1)
        return x

    def match_and_embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B x C x H x W block output, B x K x H x W matching scores): the block's one pass."""
        scores = self.match(x)
        return self.embed_regions(x, scores), scores

    @torch.jit.export
    def forward_with_evidence(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B x C x H x W features, B x N weighted class evidence)."""
        y, scores = self.match_and_embed(x)
        return y, self.class_evidence(scores)

    @torch.jit.export
    def forward_class_map(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B x C x H x W features, B x N x H x W per-region class map, unweighted)."""
        y, scores = self.match_and_embed(x)
        return y, self.pool_classes(scores)

    def forward(self, x: torch.Tensor, evidence: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """B x C x H x W -> B x C x H x W; appends the B x N weighted class evidence to ``evidence`` when given.

        A model collects the evidence through this call (not ``forward_with_evidence``) so that the block runs as a
        module: forward hooks fire, and FX feature extraction scopes the block's nodes, its output last, under its name.
        """
        y, scores = self.match_and_embed(x)
        if evidence is not None:
            evidence.append(self.class_evidence(scores))
        elif self.reports_evidence and not torch.jit.is_scripting():
            self._report_evidence(x, scores)
        return block_output(y)

    @torch.jit.unused
    def _report_evidence(self, x: torch.Tensor, scores: torch.Tensor) -> None:
        """Append the B x N weighted class evidence to ``evidence_sink`` when it is set.

        It is computed whenever autograd records, sink or not, so that a non-reentrant gradient checkpoint's
        recomputation (in backward, the sink unset) saves the tensors its forward saved. Inside a reentrant checkpoint
        the forward runs without autograd: the evidence is then computed again from the block's input with autograd
        on, so that the labels still reach the templates (and the stage below, when the block is a checkpoint segment
        of its own).
        """
        sink = self.evidence_sink
        if torch.is_grad_enabled():
            evidence = self.class_evidence(scores)
        elif sink is None:
            return
        elif self.training and not torch.is_inference_mode_enabled():  # a reentrant checkpoint's forward
            with torch.enable_grad():
                evidence = self.class_evidence(self.match(x))
        else:
            evidence = self.class_evidence(scores)
        if sink is not None:
            sink.append(evidence)

    def extra_repr(self) -> str:
        return (
            f'channels={self.channels}, num_classes={self.num_classes}, '
            f'templates_per_class={self.templates_per_class}, evidence_pool={self.evidence_pool!r}, '
            f'evidence_mode={self.evidence_mode!r}, embedding={self.embedding!r}'
        )


def tm_config_problem(
    blocks: Dict[str, TemplateMatching], state_dict: Dict[str, Any], classes: bool = True
) -> Optional[str]:
    """The first TM block (of ``blocks``, by module name) whose configuration recorded in ``state_dict`` differs from
    its own, as one line naming the block and the options; None when every recorded one fits (or none is recorded).

    A model checks this before it copies anything (``TemplateMatching`` itself checks it again as it loads).
    """
    for name, block in blocks.items():
        key = f'{name}.{CONFIG_KEY}' if name else CONFIG_KEY
        if key in state_dict:
            problem = block.config_problem(state_dict[key], classes=classes)
            if problem:
                return f'its TM block {name} {problem}: {CONFIG_ADVICE}'
    return None


def _decode_config(record: Any) -> Optional[Dict[str, Any]]:
    """A ``tm_config`` record as {field: value} (option names for the coded fields); None when it is not one."""
    if not isinstance(record, torch.Tensor) or record.dtype.is_floating_point or record.shape != (len(CONFIG_FIELDS),):
        return None
    values = dict(zip(CONFIG_FIELDS, (int(v) for v in record.tolist())))
    if values['version'] != CONFIG_VERSION:
        return None
    for field, choices in _CONFIG_CHOICES.items():
        code = values[field]
        values[field] = choices[code] if 0 <= code < len(choices) else f'<unknown code {code}>'
    return values


def _shown(record: Any) -> str:
    if isinstance(record, torch.Tensor):
        return f'{record.tolist()}' if record.numel() <= 16 else f'of shape {list(record.shape)}'
    return type(record).__name__


def _check_args(
    channels: Any,
    num_classes: Any,
    templates_per_class: Any,
    evidence_pool: Any,
    evidence_mode: Any,
    embedding: Any,
    evidence_weight_init: Any,
    eps: Any,
    temperature_range: Any,
    temperature_init: Any,
) -> Tuple[float, float]:
    """TemplateMatching's arguments, each error naming its parameter; returns the (min, max) temperature."""
    check_int('channels', channels, 1)
    check_int('num_classes', num_classes, 1, ' for a TemplateMatching block')
    check_int('templates_per_class', templates_per_class, 1)
    check_choice('evidence_pool', evidence_pool, EVIDENCE_POOLS)
    check_choice('evidence_mode', evidence_mode, EVIDENCE_MODES)
    check_choice('embedding', embedding, EMBEDDINGS)
    check_finite('evidence_weight_init', evidence_weight_init)
    check_finite('eps', eps, positive=True)
    if not (isinstance(temperature_range, (tuple, list)) and len(temperature_range) == 2):
        raise TypeError(f'temperature_range must be a (min, max) pair, got {temperature_range!r}')
    t_min, t_max = (check_finite('temperature_range', t, positive=True) for t in temperature_range)
    if not t_min <= t_max:
        raise ValueError(f'temperature_range must be (min, max) with min <= max, got {temperature_range!r}')
    check_finite('temperature_init', temperature_init, positive=True)
    if not t_min <= temperature_init <= t_max:
        raise ValueError(
            f'temperature_init must lie in temperature_range {tuple(temperature_range)}, got {temperature_init}'
        )
    return t_min, t_max


def check_int(name: str, value: Any, minimum: int, where: str = '') -> int:
    """``value`` as an integer >= ``minimum``; a TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an integer >= {minimum}{where}, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}{where}, got {value}')
    return value


def check_finite(name: str, value: Any, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``); a TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number, got {value!r}')
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f'{name} must be a finite number{" > 0" if positive else ""}, got {value}')
    return float(value)


def check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
    return value

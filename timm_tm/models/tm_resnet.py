"""Template-matching ResNets: tm_resnet18 ... tm_resnet152 and timm's ResNet variants (tm_resnet50d,
tm_resnext50_32x4d, tm_seresnext50_32x4d, tm_ecaresnet50d, tm_wide_resnet50_2, ...), one table (``TM_ARCHS``).

timm's ``ResNet`` with a :class:`~timm_tm.layers.TemplateMatching` block appended to the end of chosen stages
(``layerN``), and the blocks' class evidence added to the logits::

    logits = fc(pool(features)) + sum over TM blocks b of evidence_weight_b * class_evidence_b

so that any loss on the logits (as timm's train.py computes it) guides the templates with the labels. By default
(``evidence_mode='gradient'``) each evidence term is ``w * (e - e.detach())``: zero in the forward pass (the
predictions are the head's) with the labels' gradient into the templates, a deep supervision of the stages that
survives an unmodified train.py. Why: docs/DESIGN.md.

With every TM embedding and evidence weight at zero ``tm_X`` computes exactly what timm's ``X`` computes with the
same weights: :func:`convert_resnet_state_dict` and the pretrained tags built on timm's ImageNet weights set them so.
Weights of another architecture of the family (resnet50's into tm_resnet50d) are refused, naming what differs.
"""

import functools
import inspect
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm import __version__ as timm_version
from timm.models import (
    build_model_with_cfg,
    checkpoint,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from timm_tm.layers import (
    DEFAULT_EMBEDDING,
    TemplateMatching,
    check_finite,
    check_input_shape,
    check_int,
)
from timm_tm.models._loading import checked_state_dict, convert_to_tm, source_tm_blocks
from timm_tm.pretrained import prepare_pretrained, tm_weight_cfgs

__all__ = [
    'TemplateMatchingResNet',
    'TemplateMatchingStage',
    'convert_resnet_state_dict',
    'TM_ARCHS',
    'STAGES',
    'TM_MACS_BUDGET',
    'tm_baseline',
    'tm_block_macs',
    'tm_stage_macs',
    'choose_tm_stages',
]


# A TM block's cost: a 1x1 match (and, with an embedding, a 1x1 embed back) over the stage's map, i.e. about
# 2 * C * K * H * W multiply-adds with K = num_classes * templates_per_class (README "The family"). The placement
# rule: at 1000 classes and the base's input size, the TM blocks with an embedding may add up to TM_MACS_BUDGET of
# the base's MACs; stages 3 and 4 where that holds, stage 4 alone where it does not (a bottleneck ResNet's stage 3
# block costs twice its stage 4 one: half the channels on four times the regions). choose_tm_stages computes it;
# tests/test_tm_resnet.py checks every default below against it.
TM_MACS_BUDGET = 0.10
TM_PLACEMENTS = ((3, 4), (4,))  # most preferred first

# timm's ResNet-D: a deep stem (three 3x3 convs, 32 wide) and average-pool downsampling (arXiv:1812.01187)
_RESNET_D = dict(stem_width=32, stem_type='deep', avg_down=True)
_R18 = dict(block=BasicBlock, layers=(2, 2, 2, 2))
_R34 = dict(block=BasicBlock, layers=(3, 4, 6, 3))
_R50 = dict(block=Bottleneck, layers=(3, 4, 6, 3))
_R101 = dict(block=Bottleneck, layers=(3, 4, 23, 3))
_RESNEXT_32X4D = dict(cardinality=32, base_width=4)

# tm_X: the architecture kwargs of timm's X (its entry point in timm/models/resnet.py; X = the name without tm_)
# and the TM stages the placement rule gives it.
TM_ARCHS: Dict[str, Dict[str, Any]] = {
    'tm_resnet18': dict(**_R18, tm_stages=(3, 4)),
    'tm_resnet26': dict(block=Bottleneck, layers=(2, 2, 2, 2), tm_stages=(4,)),
    'tm_resnet34': dict(**_R34, tm_stages=(3, 4)),
    'tm_resnet50': dict(**_R50, tm_stages=(4,)),
    'tm_resnet101': dict(**_R101, tm_stages=(3, 4)),
    'tm_resnet152': dict(block=Bottleneck, layers=(3, 8, 36, 3), tm_stages=(3, 4)),
    'tm_resnet18d': dict(**_R18, **_RESNET_D, tm_stages=(3, 4)),
    'tm_resnet34d': dict(**_R34, **_RESNET_D, tm_stages=(3, 4)),
    'tm_resnet50d': dict(**_R50, **_RESNET_D, tm_stages=(4,)),
    'tm_resnet101d': dict(**_R101, **_RESNET_D, tm_stages=(3, 4)),
    'tm_resnext50_32x4d': dict(**_R50, **_RESNEXT_32X4D, tm_stages=(4,)),
    'tm_seresnext50_32x4d': dict(**_R50, **_RESNEXT_32X4D, block_args=dict(attn_layer='se'), tm_stages=(4,)),
    'tm_ecaresnet50d': dict(**_R50, **_RESNET_D, block_args=dict(attn_layer='eca'), tm_stages=(4,)),
    'tm_wide_resnet50_2': dict(**_R50, base_width=128, tm_stages=(3, 4)),
    # small-input variant (3x3 stem, no max-pool) for 32-64 px datasets; its baseline is tm_stages=()
    'tm_resnet18_small': dict(**_R18, tm_stages=(3, 4), small_stem=True),
}
STAGES = (1, 2, 3, 4)  # a ResNet's stages (layer1 ... layer4), the places a TM block may follow


def tm_baseline(name: str) -> Tuple[str, Dict[str, Any]]:
    """(timm model name, kwargs) that the tm_* model ``name`` (an architecture, or one with a tag) is measured and
    loaded against: timm's ``X`` for ``tm_X``; for tm_resnet18_small, which has no twin in timm, itself with
    ``tm_stages=()``."""
    arch = name.split('.')[0]
    if arch not in TM_ARCHS:
        raise ValueError(f'{name!r} is not a tm_resnet model; the family: {", ".join(TM_ARCHS)}')
    if TM_ARCHS[arch].get('small_stem'):
        return arch, dict(tm_stages=())
    return arch[len('tm_') :], {}


def tm_block_macs(channels: int, height: int, width: int, num_templates: int, embedding: bool = True) -> int:
    """Multiply-adds of one TM block over a B=1 x C x H x W map with K templates: the match, C * K * H * W, and as
    many again for an embedding (the elementwise work on the K x H x W scores is left out)."""
    return (2 if embedding else 1) * channels * num_templates * height * width


def tm_stage_macs(
    feature_info: Sequence[Dict[str, Any]], img_size: int = 224, num_templates: int = 1000, embedding: bool = True
) -> Dict[int, int]:
    """Stage (1-4) -> multiply-adds of a TM block after it, for a model with timm's ResNet ``feature_info`` (the
    stem, then one entry per stage) at ``img_size`` px."""
    out = {}
    for stage in STAGES:
        info = feature_info[stage]
        side = -(-img_size // info['reduction'])  # each stride-2 layer rounds up
        out[stage] = tm_block_macs(info['num_chs'], side, side, num_templates, embedding)
    return out


def choose_tm_stages(base_macs: float, stage_macs: Dict[int, float], budget: float = TM_MACS_BUDGET) -> Tuple[int, ...]:
    """The placement rule: the first of ``TM_PLACEMENTS`` whose TM blocks (``stage_macs``, as
    :func:`tm_stage_macs` gives them) cost at most ``budget`` x ``base_macs``; the cheapest placement when none
    does."""
    for stages in TM_PLACEMENTS:
        if sum(stage_macs[s] for s in stages) <= budget * base_macs:
            return stages
    return min(TM_PLACEMENTS, key=lambda stages: sum(stage_macs[s] for s in stages))


class TemplateMatchingStage(nn.Sequential):
    """One ResNet stage: its residual blocks, then a TM block where the model has one.

    The same children (and state_dict keys) as timm's stage, an ``nn.Sequential``; its ``forward`` also collects the
    TM blocks' class evidence. It is the model's one forward path: eager, TorchScript, FX, ``torch.compile`` and
    gradient checkpointing all run it.
    """

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, evidence: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """B x C x H x W -> the stage's output; each TM block appends its B x N class evidence to ``evidence``."""
        for i, blk in enumerate(self):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = self._forward_checkpointed(i, x, evidence)
            elif hasattr(blk, 'forward_with_evidence'):  # a TM block: TorchScript resolves this per unrolled block
                x = blk(x, evidence)
            else:
                x = blk(x)
        return x

    @torch.jit.ignore
    def _forward_checkpointed(
        self, index: int, x: torch.Tensor, evidence: Optional[List[torch.Tensor]]
    ) -> torch.Tensor:
        blk = self[index]
        if evidence is not None and isinstance(blk, TemplateMatching):
            # the evidence is an output of the checkpointed call: with reentrant checkpointing only outputs get gradient
            x, e = checkpoint(blk.forward_with_evidence, x)
            evidence.append(e)
            return x
        return checkpoint(blk, x)


class TemplateMatchingResNet(ResNet):
    """timm ResNet with TemplateMatching blocks after the last residual block of chosen stages.

    Inputs are B x in_chans x H x W; ``forward`` returns B x num_classes logits (head + class evidence),
    or B x num_features pooled features when ``num_classes=0``.
    """

    def __init__(
        self,
        block: type,
        layers: Tuple[int, ...],
        num_classes: int = 1000,
        tm_stages: Sequence[int] = (3, 4),
        templates_per_class: int = 1,
        template_classes: Optional[int] = None,
        temperature_init: float = 16.0,
        evidence_weight_init: float = 0.3,
        evidence_pool: str = 'logsumexp',
        evidence_mode: str = 'gradient',
        embedding: str = DEFAULT_EMBEDDING,
        small_stem: bool = False,
        device=None,
        dtype=None,
        **kwargs,
    ):
        """
        Args:
            block, layers, num_classes, **kwargs: as timm's ``ResNet``.
            tm_stages: Stages (1-4) whose last residual block is followed by a TM block; empty for none.
            templates_per_class: Templates m per class in each TM block.
            template_classes: Classes the templates belong to when ``num_classes=0`` (an embedding model
                keeps the templates it was trained with); must equal ``num_classes`` otherwise.
            temperature_init: Initial cosine temperature of the TM blocks.
            evidence_weight_init: Weight of each TM block's class evidence in the logits (the gain of the labels'
                gradient with ``evidence_mode='gradient'``).
            evidence_pool: Pooling of a class's templates: 'logsumexp' or 'max'.
            evidence_mode: 'gradient' (the evidence reaches the logits as gradient only: predictions are the
                head's) or 'logits' (the evidence is added to the logits); see :class:`TemplateMatching`.
            embedding: What each TM block adds to the features: 'argmax' (the default: a region gets the direction
                of the template it matches best), 'tied', 'templates', 'classes' or 'none' (the evidence-only
                ablation: the model computes exactly its ResNet; see :class:`TemplateMatching`).
            small_stem: A 3x3 stride-1 stem conv and no max-pool (output stride 8) for 32-64 px images.
        """
        tm_stages = _check_tm_args(
            num_classes, tm_stages, templates_per_class, template_classes, temperature_init, evidence_weight_init
        )
        super().__init__(block, layers, num_classes=num_classes, device=device, dtype=dtype, **kwargs)
        self.in_chans = kwargs.get('in_chans', 3)  # timm < 1.0.25's ResNet does not keep it
        if small_stem:
            self._use_small_stem(kwargs.get('stem_type'), device, dtype)
        self.small_stem = small_stem
        self.tm_stages = tuple(sorted(tm_stages))
        self.templates_per_class = templates_per_class
        template_classes = num_classes or template_classes or 1000
        for stage in STAGES:  # timm's nn.Sequential stages become stages that collect the class evidence
            setattr(self, f'layer{stage}', TemplateMatchingStage(*getattr(self, f'layer{stage}')))
        for stage in self.tm_stages:
            getattr(self, f'layer{stage}').append(
                TemplateMatching(
                    self.feature_info[stage]['num_chs'],
                    template_classes,
                    templates_per_class=templates_per_class,
                    temperature_init=temperature_init,
                    evidence_weight_init=evidence_weight_init,
                    evidence_pool=evidence_pool,
                    evidence_mode=evidence_mode,
                    embedding=embedding,
                    device=device,
                    dtype=dtype,
                )
            )

    def _use_small_stem(self, stem_type: Optional[str], device=None, dtype=None) -> None:
        """A 3x3 stride-1 stem conv and no max-pool: the feature maps are 4x larger (output stride 8)."""
        if stem_type:
            raise ValueError('small_stem replaces the stem: do not pass stem_type with it')
        stem_width = self.conv1.out_channels
        self.conv1 = nn.Conv2d(
            self.in_chans, stem_width, 3, stride=1, padding=1, bias=False, device=device, dtype=dtype
        )
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        for info in self.feature_info:
            info['reduction'] = max(1, info['reduction'] // 4)

    @torch.jit.ignore
    def tm_blocks(self) -> Dict[str, TemplateMatching]:
        """The TM blocks by module name, e.g. ``{'layer3.2': TemplateMatching(...), ...}``."""
        return {n: m for n, m in self.named_modules() if isinstance(m, TemplateMatching)}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Reset the head; for ``num_classes > 0`` the templates are rebuilt with it (one set per class).

        ``num_classes=0`` keeps the templates: the model becomes an embedding extractor that still matches.
        """
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        if global_pool is None:  # keep the pooling (timm < 1.0.31's ResNet resets it to 'avg')
            global_pool = self.global_pool.pool_type
        super().reset_classifier(num_classes, global_pool)
        if num_classes > 0:
            for tm in self.tm_blocks().values():
                tm.reset_classes(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            stage.grad_checkpointing = enable

    def _forward_stages(self, x: torch.Tensor, evidence: Optional[List[torch.Tensor]]) -> torch.Tensor:
        """B x C_in x H x W -> B x num_features x H/32 x W/32; TM blocks append their evidence to ``evidence``."""
        check_input_shape(x, self.in_chans, 'TemplateMatchingResNet', 'in_chans')
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.maxpool(x)
        x = self.layer1(x, evidence)
        x = self.layer2(x, evidence)
        x = self.layer3(x, evidence)
        return self.layer4(x, evidence)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B x C_in x H x W -> B x num_features x H/32 x W/32 (TM blocks run, evidence is not computed)."""
        return self._forward_stages(x, None)

    def forward_features_with_evidence(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns (B x num_features x h x w features, B x N summed weighted class evidence or None)."""
        evidence: List[torch.Tensor] = []
        x = self._forward_stages(x, evidence)
        if len(evidence) == 0:
            return x, None
        return x, torch.stack(evidence).sum(dim=0)

    def forward_head(
        self,
        x: torch.Tensor,
        pre_logits: bool = False,
        class_evidence: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """B x C x h x w features -> B x num_classes logits (plus ``class_evidence``, B x N, when given).

        With ``features, evidence = model.forward_features_with_evidence(x)``, ``model(x)`` equals
        ``model.forward_head(features, class_evidence=evidence)``. Without ``class_evidence`` the logits are the
        linear head's alone: the same values as ``model(x)`` in the default ``evidence_mode='gradient'`` (the evidence
        is zero in the forward pass), without the labels' path into the templates.
        """
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        if pre_logits:
            return x
        x = self.fc(x)
        if class_evidence is None or self.num_classes == 0:
            return x
        return x + class_evidence.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x in_chans x H x W -> B x num_classes logits (B x num_features when num_classes=0)."""
        if self.num_classes == 0:
            return self.forward_head(self.forward_features(x))
        x, evidence = self.forward_features_with_evidence(x)
        return self.forward_head(x, class_evidence=evidence)

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):
        """Load a tm_resnet state_dict, or a timm ResNet one (converted by :func:`convert_resnet_state_dict`).

        A state_dict with none of this model's TM entries but its other keys is read as a timm ResNet's, so
        timm's ``load_checkpoint`` (train.py ``--initial-checkpoint``) starts from ResNet weights. The architecture,
        the TM blocks (placement, embedding, templates per class, recorded options), keys and shapes are checked
        before anything is copied, as in every TM family (``checked_state_dict``): a load that fails leaves the model
        untouched, and its error names what differs (the tm_stages or TM options to create the model with) or the
        missing, unexpected and mis-shaped keys, the TM ones called out as such.
        """
        problem = _architecture_problem(state_dict, self)
        if problem:
            raise RuntimeError(
                f'Error(s) in loading state_dict for {type(self).__name__} (nothing was loaded): {problem}'
            )
        state_dict = checked_state_dict(
            self, state_dict, strict, 'fc', functools.partial(convert_resnet_state_dict, model=self),
            functools.partial(_placement_problem, model=self), 'timm ResNet',
        )  # fmt: skip
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _check_tm_args(
    num_classes: Any,
    tm_stages: Any,
    templates_per_class: Any,
    template_classes: Any,
    temperature_init: Any,
    evidence_weight_init: Any,
) -> Tuple[int, ...]:
    """The TM arguments of a TemplateMatchingResNet checked before anything is built; returns ``tm_stages`` as a tuple.

    Each error names its parameter: a wrong type would otherwise fail deep in torch (or be truncated, 2.5 templates
    per class), a non-finite init would give a model of NaN outputs. The TM options not named here reach
    TemplateMatching as they are, which checks its own.
    """
    check_int('num_classes', num_classes, 0)
    check_int('templates_per_class', templates_per_class, 1)
    if template_classes is not None:
        check_int('template_classes', template_classes, 1)
    check_finite('temperature_init', temperature_init, positive=True)
    check_finite('evidence_weight_init', evidence_weight_init)
    if isinstance(tm_stages, str) or not isinstance(tm_stages, Sequence):
        raise TypeError(f'tm_stages must be a sequence of stages from {STAGES} (e.g. (3, 4)), got {tm_stages!r}')
    tm_stages = tuple(tm_stages)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in tm_stages):  # 3.0 == 3 would pass below
        raise TypeError(f'tm_stages must be integer stages from {STAGES}, got {tm_stages!r}')
    bad = [s for s in tm_stages if s not in STAGES]
    if bad or len(set(tm_stages)) != len(tm_stages):
        raise ValueError(f'tm_stages must be distinct stages from {STAGES}, got {tm_stages}')
    if num_classes > 0 and template_classes not in (None, num_classes):
        raise ValueError(
            f'template_classes ({template_classes}) must equal num_classes ({num_classes}) when num_classes > 0'
        )
    return tm_stages


def _backbone_shapes(state_dict: Dict[str, Any], skip: Sequence[str] = ()) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of a (tm_)resnet state_dict's tensors, all but its head (fc), TM blocks (and the modules named in
    ``skip``) and BN batch counters (which older checkpoints lack): what says which architecture it is."""
    tm_prefixes = tuple(f'{name}.' for name in (*source_tm_blocks(state_dict), *skip))
    return {
        k: tuple(v.shape)
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor)
        and not k.startswith('fc.')
        and not k.endswith('num_batches_tracked')
        and not (tm_prefixes and k.startswith(tm_prefixes))
    }


@functools.cache
def _family_backbone(arch: str, in_chans: int) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """The backbone shapes (:func:`_backbone_shapes`) of the family's ``arch``, built on the meta device."""
    kwargs = {k: v for k, v in TM_ARCHS[arch].items() if k != 'tm_stages'}
    model = TemplateMatchingResNet(**kwargs, num_classes=0, tm_stages=(), in_chans=in_chans, device='meta')
    return tuple(_backbone_shapes(model.state_dict()).items())


def _family_member(shapes: Dict[str, Tuple[int, ...]], in_chans: int) -> Optional[str]:
    """The architecture of ``TM_ARCHS`` whose backbone has exactly these shapes, or None."""
    return next((arch for arch in TM_ARCHS if dict(_family_backbone(arch, in_chans)) == shapes), None)


def _arch_differences(theirs: str, ours: str) -> List[str]:
    """'stem_type \'\' vs \'deep\'', ...: the architecture kwargs in which two entries of ``TM_ARCHS`` differ."""
    defaults = {
        name: p.default
        for cls in (ResNet, TemplateMatchingResNet)
        for name, p in inspect.signature(cls.__init__).parameters.items()
    }

    def shown(value: Any) -> str:
        return value.__name__ if isinstance(value, type) else repr(value)

    out = []
    for key in dict.fromkeys([*TM_ARCHS[theirs], *TM_ARCHS[ours]]):
        a, b = (TM_ARCHS[arch].get(key, defaults.get(key)) for arch in (theirs, ours))
        if key != 'tm_stages' and a != b:
            out.append(f'{key} {shown(a)} vs {shown(b)}')
    return out


def _architecture_problem(state_dict: Dict[str, Any], model: 'TemplateMatchingResNet') -> Optional[str]:
    """Why ``state_dict`` is another architecture of the family than ``model``'s (e.g. resnet50's weights for
    tm_resnet50d), in one line naming both and the kwargs that differ; None when its backbone is ``model``'s, or
    no architecture of the family (the key-by-key report then says what differs)."""
    ours = _backbone_shapes(model.state_dict())
    # the model's own TM block names left out too: timm's loader drops the templates (the classifier) of weights for
    # another class count, and the rest of a TM block no longer reads as one
    if _backbone_shapes(state_dict, skip=tuple(model.tm_blocks())) == ours:
        return None
    theirs = _backbone_shapes(state_dict)
    their_arch = _family_member(theirs, model.in_chans)
    if their_arch is None:
        return None
    their_base = tm_baseline(their_arch)[0]
    kind = f' (a {their_arch} checkpoint)' if source_tm_blocks(state_dict) else ''
    our_arch = _family_member(ours, model.in_chans)
    if our_arch is None:
        return f"its backbone is {their_base}'s{kind}, this model's is not: create {their_arch} to load it"
    differ = ', '.join(_arch_differences(their_arch, our_arch))
    return (
        f"its backbone is {their_base}'s{kind}, this model's is {tm_baseline(our_arch)[0]}'s ({our_arch}): "
        f'{differ} (checkpoint vs model); create {their_arch} to load it'
    )


def convert_resnet_state_dict(
    state_dict: Dict[str, torch.Tensor],
    model: TemplateMatchingResNet,
    new_head: bool = False,
    source: str = 'the checkpoint',
) -> Dict[str, torch.Tensor]:
    """A timm ResNet (or tm_resnet) state_dict in, a state_dict for ``model`` out.

    A ResNet's (no TM entries) gets ``model``'s own fresh TM blocks; when its head fits ``model`` (same class count,
    or ``num_classes=0``) they are set to the identity: ``model`` then computes exactly what the ResNet computes.
    A tm_resnet's must have ``model``'s TM configuration (stages, templates per class, TM options), else a
    RuntimeError names what differs. Only another class count is adapted (a fine-tuning start): the class-tied TM
    entries, and the head with ``new_head``, are taken from ``model``'s fresh ones, with a warning naming them.
    Weights of another architecture of the family (resnet50's for tm_resnet50d) are refused, naming what differs;
    other entries pass through unchanged, so any other wrong backbone is still reported by ``load_state_dict``.

    Args:
        state_dict: The checkpoint's state_dict (or a dict holding it under 'state_dict').
        model: The model it is for.
        new_head: Re-initialize a head shaped for another class count too (timm's pretrained loader).
        source: How the error and the warning name the checkpoint (e.g. with its file).
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    architecture = _architecture_problem(state_dict, model)  # first: another architecture moves the TM blocks too
    return convert_to_tm(
        state_dict, model, 'fc', functools.partial(_placement_problem, model=model), new_head, source, architecture
    )


def _placement_problem(source_tm: List[str], model: TemplateMatchingResNet) -> Optional[str]:
    """Why a tm_resnet state_dict's TM blocks (``source_tm``, by module name) are not where ``model``'s are, or None."""
    blocks = sorted(model.tm_blocks())
    if not source_tm or source_tm == blocks:
        return None
    stage_of = {f'layer{s}': s for s in STAGES}
    stages = tuple(stage_of.get(name.split('.')[0], 0) for name in source_tm)
    where = f"its TM blocks are {', '.join(source_tm)}, this model's {', '.join(blocks) or 'none'}"
    if 0 not in stages and stages != model.tm_stages:
        return f'{where}: create the model with tm_stages={stages}'
    return f'{where}: create the model (architecture) that the checkpoint was made with'  # another depth


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: loads ResNet or tm_resnet weights (see convert_resnet_state_dict).

    Another class count re-initializes the head too, whether or not timm's loader then drops it (it does when the
    model's num_classes differs from the pretrained cfg's). Errors and warnings name the weights' file or Hub repo.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    where = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url')
    return convert_resnet_state_dict(
        state_dict, model, new_head=True, source=f'the checkpoint {where}' if where else 'the checkpoint'
    )


def _create_tm_resnet(variant: str, pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    if pretrained:
        # unpublished TM tags (error, or the local HF cache); the local weights file is verified before loading
        kwargs = prepare_pretrained(variant, kwargs)
    kwargs = dict(TM_ARCHS[variant], **kwargs)

    num_classes = kwargs.get('num_classes')
    if isinstance(num_classes, int) and num_classes < 0:  # another type: the model's own check names it
        raise ValueError(f'num_classes must be >= 0, got {num_classes}')
    if num_classes == 0 or kwargs.get('features_only', False):
        # an embedding / feature model keeps the templates its weights were trained with: size them from the
        # pretrained cfg and keep timm's loader from dropping them with the head
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        if num_classes == 0:
            kwargs.setdefault('template_classes', cfg.num_classes or 1000)
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
        overlay.setdefault('classifier', 'fc')
        kwargs['pretrained_cfg_overlay'] = overlay

    return build_model_with_cfg(
        TemplateMatchingResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


def _classifier_names(variant: str) -> Tuple[str, ...]:
    arch = TM_ARCHS[variant]
    return ('fc',) + tuple(f'layer{s}.{arch["layers"][s - 1]}.templates' for s in arch['tm_stages'])


def _cfg(variant: str, **kwargs) -> Dict[str, Any]:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1.0' if TM_ARCHS[variant].get('stem_type') else 'conv1',  # a deep stem: three convs
        'classifier': _classifier_names(variant),
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2210.00992',
        **kwargs,
    }


def _from_resnet_cfg(variant: str, resnet_tag: str) -> Optional[Dict[str, Any]]:
    """Pretrained cfg for timm's ``X.<tag>`` ImageNet weights loaded into ``tm_X`` (TM at identity).

    None, with a warning, when this timm has no such tag: the other tags and the models still register.
    """
    base = tm_baseline(variant)[0]
    src = get_pretrained_cfg(f'{base}.{resnet_tag}')
    if src is None:
        warnings.warn(
            f'timm {timm_version} has no {base}.{resnet_tag} weights: {variant}.{resnet_tag} is left out',
            stacklevel=2,
        )
        return None
    return _cfg(
        variant,
        hf_hub_id=src.hf_hub_id,
        input_size=src.input_size,
        pool_size=src.pool_size,
        crop_pct=src.crop_pct,
        interpolation=src.interpolation,
        mean=src.mean,
        std=src.std,
        first_conv=src.first_conv,
        test_input_size=src.test_input_size,
        test_crop_pct=src.test_crop_pct,
        license=src.license,
        origin_url=src.origin_url,
        notes=(f'timm {base}.{resnet_tag} weights, TM blocks at identity (exact start for fine-tuning)',),
    )


# tm_X.<tag>: timm's X.<tag> weights, TM at identity. timm's default tag for X first (tm_resnet50: a1_in1k,
# tm_resnet101 and 152: a1h_in1k), then torchvision's where timm hosts it.
RESNET_TAGS = {
    'tm_resnet18': ('a1_in1k', 'tv_in1k'),
    'tm_resnet26': ('bt_in1k',),
    'tm_resnet34': ('a1_in1k', 'tv_in1k'),
    'tm_resnet50': ('a1_in1k', 'tv_in1k'),
    'tm_resnet101': ('a1h_in1k', 'tv_in1k'),
    'tm_resnet152': ('a1h_in1k', 'tv_in1k'),
    'tm_resnet18d': ('ra2_in1k',),
    'tm_resnet34d': ('ra2_in1k',),
    'tm_resnet50d': ('ra2_in1k', 'a1_in1k'),
    'tm_resnet101d': ('ra2_in1k',),
    'tm_resnext50_32x4d': ('a1h_in1k', 'tv_in1k'),
    'tm_seresnext50_32x4d': ('racm_in1k',),
    'tm_ecaresnet50d': ('miil_in1k',),
    'tm_wide_resnet50_2': ('racm_in1k', 'tv_in1k'),
}


def _resnet_weight_cfgs() -> Dict[str, Dict[str, Any]]:
    """``tm_X.<tag>`` cfgs for the ``RESNET_TAGS`` this timm has (the first listed is the default)."""
    cfgs = {f'{v}.{tag}': _from_resnet_cfg(v, tag) for v, tags in RESNET_TAGS.items() for tag in tags}
    return {name: cfg for name, cfg in cfgs.items() if cfg is not None}


default_cfgs = generate_default_cfgs(
    {
        **_resnet_weight_cfgs(),
        'tm_resnet18_small': _cfg('tm_resnet18_small', input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0),
        # TM-trained weights under timm_tm.pretrained.HUB_NAMESPACE (after the defaults: never a default tag)
        **{name: _cfg(name.split('.')[0], **cfg) for name, cfg in tm_weight_cfgs().items()},
    }
)


@register_model
def tm_resnet18(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-18 with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet18', pretrained, **kwargs)


@register_model
def tm_resnet26(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-26 with a TM block after stage 4."""
    return _create_tm_resnet('tm_resnet26', pretrained, **kwargs)


@register_model
def tm_resnet34(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-34 with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet34', pretrained, **kwargs)


@register_model
def tm_resnet50(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-50 with a TM block after stage 4."""
    return _create_tm_resnet('tm_resnet50', pretrained, **kwargs)


@register_model
def tm_resnet101(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-101 with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet101', pretrained, **kwargs)


@register_model
def tm_resnet152(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-152 with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet152', pretrained, **kwargs)


@register_model
def tm_resnet18_small(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-18 for 32-64 px images (3x3 stem, no max-pool) with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet18_small', pretrained, **kwargs)


@register_model
def tm_resnet18d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-18-D (deep stem, average-pool downsampling: timm's resnet18d) with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet18d', pretrained, **kwargs)


@register_model
def tm_resnet34d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-34-D (timm's resnet34d) with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet34d', pretrained, **kwargs)


@register_model
def tm_resnet50d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-50-D (timm's resnet50d) with a TM block after stage 4."""
    return _create_tm_resnet('tm_resnet50d', pretrained, **kwargs)


@register_model
def tm_resnet101d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNet-101-D (timm's resnet101d) with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_resnet101d', pretrained, **kwargs)


@register_model
def tm_resnext50_32x4d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ResNeXt-50 32x4d (timm's resnext50_32x4d) with a TM block after stage 4."""
    return _create_tm_resnet('tm_resnext50_32x4d', pretrained, **kwargs)


@register_model
def tm_seresnext50_32x4d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """SE-ResNeXt-50 32x4d (timm's seresnext50_32x4d) with a TM block after stage 4."""
    return _create_tm_resnet('tm_seresnext50_32x4d', pretrained, **kwargs)


@register_model
def tm_ecaresnet50d(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """ECA-ResNet-50-D (timm's ecaresnet50d) with a TM block after stage 4."""
    return _create_tm_resnet('tm_ecaresnet50d', pretrained, **kwargs)


@register_model
def tm_wide_resnet50_2(pretrained: bool = False, **kwargs) -> TemplateMatchingResNet:
    """Wide ResNet-50-2 (timm's wide_resnet50_2) with TM blocks after stages 3 and 4."""
    return _create_tm_resnet('tm_wide_resnet50_2', pretrained, **kwargs)

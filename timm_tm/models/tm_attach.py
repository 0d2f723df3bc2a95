"""TM blocks after chosen stages of any timm CNN: one mechanism, read from the model's own ``feature_info``.

:func:`with_template_matching` takes a timm model (or its name) and puts a
:class:`~timm_tm.layers.TemplateMatching` block at the end of each chosen stage, the module that
``model.feature_info[i]['module']`` names (``tm_stages`` are indices into ``feature_info``, as timm's
``out_indices``):

* an ``nn.Sequential`` stage (EfficientNet's ``blocks.6``) gets the block as its next child (``blocks.6.1``): it
  runs wherever the stage runs, timm's flattened gradient checkpointing (which calls the children one by one)
  included;
* any other stage (ConvNeXt's ``stages.2``, RegNet's ``s4``) holds it as ``tm.block`` (:class:`BlockAfterStage`, a
  pass-through when the stage's own forward runs its children, as RegNet's does) and becomes a subclass of its own
  class whose forward runs the stage's own forward, then the block.

Either way the stage's output is the block's output (``features_only``, ``forward_intermediates``, FX feature
extraction), and the base model's state_dict keys are unchanged: only the blocks' keys are added, so the base's
weights load (:func:`convert_state_dict`, TM blocks at identity). The model becomes a subclass of its own class,
:class:`TemplateMatchingModel` first, whose ``forward`` is timm's ``forward_head(forward_features(x))`` plus the
blocks' class evidence (``model(x) = head(features) + sum_b evidence_b``; zero in value, the labels' gradient into
the templates, with the default ``evidence_mode='gradient'``). The base's ``forward_features`` runs the blocks; each
block appends its evidence to the list the model hands it for that one call (``evidence_sink``), so no family needs
a forward of its own. Why, and what it cannot do: docs/DESIGN.md, "Other timm CNNs".

:func:`register_tm_model` registers ``tm_<base>`` with timm (``timm.create_model``, train.py ``--model``), with one
pretrained tag per tag of the base's weights, loaded with the TM blocks at identity; ``TM_VARIANTS`` lists the
variants registered on import.
"""

import functools
import logging
import types
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    is_model,
    list_pretrained,
    model_entrypoint,
    register_model,
    resolve_pretrained_cfg,
)

from timm_tm.layers import TemplateMatching, check_int
from timm_tm.models._loading import checked_state_dict, convert_to_tm
from timm_tm.pretrained import prepare_pretrained

__all__ = [
    'TemplateMatchingModel',
    'TM_VARIANTS',
    'with_template_matching',
    'register_tm_model',
    'convert_state_dict',
    'base_model_name',
    'stage_module_name',
]

_logger = logging.getLogger(__name__)

# The variants registered on import: tm name -> (timm base model, default tm_stages as feature_info indices, the
# base's weight tags to offer, the first the default). A block after a stage of width C and an H x W map costs about
# 2 * C * K * H * W multiply-adds with an embedding (K = classes x templates per class): at 1000 classes and 224 px the
# stages below keep it within about 10% of the base's GMACs (measured: README "Other timm CNNs").
TM_VARIANTS: Dict[str, Dict[str, Any]] = {
    # stages.2 (384 x 14 x 14) +3.4%, stages.3 (768 x 7 x 7) +1.7% of 4.47 GMACs
    'tm_convnext_tiny': dict(base='convnext_tiny', tm_stages=(2, 3), tags=('in12k_ft_in1k', 'fb_in1k')),
    # s4 (888 x 7 x 7) +5.3% of 1.63 GMACs; s3 (336 x 14 x 14) would add +8.1% more
    'tm_regnety_016': dict(base='regnety_016', tm_stages=(4,), tags=('tv2_in1k', 'pycls_in1k')),
    # blocks.6 (320 x 7 x 7) +7.8% of 0.40 GMACs; blocks.4 (112 x 14 x 14) would add +11% more
    'tm_efficientnet_b0': dict(base='efficientnet_b0', tm_stages=(4,), tags=('ra_in1k', 'ra4_e3600_r224_in1k')),
}

# the kwargs that shape the TM blocks (the others go to the base model)
TM_KWARGS = (
    'tm_stages', 'template_classes', 'templates_per_class', 'temperature_init', 'evidence_weight_init',
    'evidence_pool', 'evidence_mode', 'embedding',
)  # fmt: skip


def stage_module_name(block_name: str) -> str:
    """The stage a TM block ends, by module name: ``'stages.2.tm.block'`` -> ``'stages.2'``, ``'blocks.6.1'`` ->
    ``'blocks.6'``."""
    if block_name.endswith('.tm.block'):
        return block_name[: -len('.tm.block')]
    return block_name.rsplit('.', 1)[0]


def _method_as(function: types.FunctionType, name: str) -> types.FunctionType:
    """``function`` under another name. TorchScript compiles a method under its function's ``__name__``: a class
    that keeps its base's ``forward`` as ``forward_before_tm`` needs a copy so named."""
    renamed = types.FunctionType(
        function.__code__, function.__globals__, name, function.__defaults__, function.__closure__
    )
    renamed.__kwdefaults__ = function.__kwdefaults__
    renamed.__qualname__ = name
    renamed.__doc__ = function.__doc__
    return renamed


def _forward_then_tm(self, x: torch.Tensor) -> torch.Tensor:
    """The stage's own forward, then its TM block: B x C x H x W -> B x C x H x W."""
    return self.tm.block(self.forward_before_tm(x))


class BlockAfterStage(nn.Module):
    """Holds the TM block of a stage that is not an ``nn.Sequential``, as the stage's child ``tm``.

    Called, it passes its input on: a stage whose forward runs each of its children (RegNet's ``RegStage``) runs it
    harmlessly. The stage's forward (:func:`_forward_then_tm`) runs ``block`` itself, after its own.
    """

    def __init__(self, block: TemplateMatching):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_STAGE_CLASSES: Dict[type, type] = {}
_MODEL_CLASSES: Dict[type, type] = {}


def _reduce_by_base(self, protocol: int):
    """``__reduce_ex__`` of the generated classes (pickle, ``torch.save(model)``, ``copy.deepcopy``): by their base
    class, which is importable, the generated class being made again where it is loaded."""
    return _remake, (type(self)._tm_kind, type(self)._tm_base_class), self.__dict__


def _remake(kind: str, base: type) -> nn.Module:
    cls = _stage_class(base) if kind == 'stage' else _model_class(base)
    return cls.__new__(cls)


def _stage_class(cls: type) -> type:
    """``cls`` with a TM block (child ``tm``) run after its own forward; one class per ``cls``."""
    if cls not in _STAGE_CLASSES:
        name = f'TemplateMatchingAfter{cls.__name__}'
        attrs = dict(
            forward=_forward_then_tm,
            forward_before_tm=_method_as(cls.forward, 'forward_before_tm'),
            __reduce_ex__=_reduce_by_base,
            _tm_kind='stage',
            _tm_base_class=cls,
            __module__=__name__,
        )
        _STAGE_CLASSES[cls] = type(name, (cls,), attrs)
    return _STAGE_CLASSES[cls]


class TemplateMatchingModel:
    """Mixed into a timm model's own class when TM blocks are attached to it (``TemplateMatching<Base>``).

    ``model(x)``: B x num_classes logits, the base's ``forward_head(forward_features(x))`` plus the sum of the TM
    blocks' B x N class evidence (B x num_features pooled features when ``num_classes=0``). Everything else (stages,
    ``forward_features``, ``forward_intermediates``, ``set_grad_checkpointing``, ``group_matcher``, ...) is the base's.
    """

    @torch.jit.ignore
    def tm_blocks(self) -> Dict[str, TemplateMatching]:
        """The TM blocks by module name, e.g. ``{'stages.2.tm': TemplateMatching(...), ...}``."""
        return {n: m for n, m in self.named_modules() if isinstance(m, TemplateMatching)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x in_chans x H x W -> B x num_classes logits (B x num_features when num_classes=0)."""
        if torch.jit.is_scripting() or self.num_classes == 0:
            return self.forward_head(self.forward_features(x))
        features, evidence = self.forward_features_with_evidence(x)
        return self.forward_head(features, class_evidence=evidence)

    @torch.jit.unused
    def forward_features_with_evidence(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns (the base's ``forward_features(x)``, the B x N summed weighted class evidence of the TM blocks, or
        None without blocks). Each block appends its evidence to the list set as its ``evidence_sink`` for this call."""
        blocks = [(n, m) for n, m in self.named_modules() if isinstance(m, TemplateMatching) and m.reports_evidence]
        sink: List[torch.Tensor] = []
        for _, block in blocks:
            block.evidence_sink = sink
        try:
            features = self.forward_features(x)
        finally:
            for _, block in blocks:
                block.evidence_sink = None
        if len(sink) != len(blocks):
            raise RuntimeError(
                f'{type(self).__name__}.forward_features ran its {len(blocks)} TM blocks '
                f'({", ".join(n for n, _ in blocks)}) {len(sink)} times in all: each must run once per forward'
            )
        if not sink:
            return features, None
        evidence = sink[0]
        for e in sink[1:]:
            evidence = evidence + e
        return features, evidence

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, class_evidence: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The base's ``forward_head`` (B x num_classes logits, or pooled features with ``pre_logits``), plus
        ``class_evidence`` (B x N) when given: ``model(x)`` equals ``model.forward_head(*model.forward_features_with_
        evidence(x))``."""
        out = self.forward_head_without_evidence(x, pre_logits)
        if class_evidence is None or pre_logits or self.num_classes == 0:
            return out
        return out + class_evidence.to(out.dtype)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **kwargs) -> None:
        """The base's ``reset_classifier`` (``kwargs``: its own options, e.g. ConvNeXt's ``reset_other``); for
        ``num_classes > 0`` the templates are rebuilt with the head (fresh blocks, at identity). ``num_classes=0``
        keeps them: the model becomes an embedding model that still matches."""
        check_int('num_classes', num_classes, 0)
        if global_pool is None:  # the base's default (timm >= 1.0.31: keep the pooling)
            super().reset_classifier(num_classes, **kwargs)
        else:
            super().reset_classifier(num_classes, global_pool, **kwargs)
        if num_classes > 0:
            for block in self.tm_blocks().values():
                block.reset_classes(num_classes)

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):
        """Load this model's state_dict, or its base model's (converted by :func:`convert_state_dict`: TM blocks at
        identity). A state_dict with none of this model's TM keys goes through the conversion, which refuses TM blocks
        placed elsewhere; keys and shapes are checked before anything is copied, and an error names the missing,
        unexpected and mis-shaped keys, the TM ones called out as such."""
        state_dict = checked_state_dict(
            self, state_dict, strict, _head_name(self), functools.partial(convert_state_dict, model=self),
            functools.partial(_placement_problem, model=self), self.tm_base,
        )  # fmt: skip
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    def __prepare_scriptable__(self):
        """torch.jit.script's hook: refuse a model whose evidence changes the logits' values (TorchScript runs the
        forward without collecting it); with ``evidence_mode='gradient'`` the scripted logits are the same."""
        adds = [n for n, b in self.tm_blocks().items() if b.evidence_mode == 'logits']
        if adds and self.num_classes > 0:
            raise RuntimeError(
                f'cannot script {type(self).__name__}: its TM block {adds[0]} adds its class evidence to the logits '
                "(evidence_mode='logits'), which only the Python forward collects; evidence_mode='gradient' scripts"
            )
        return self


def _model_class(cls: type) -> type:
    """``cls`` with :class:`TemplateMatchingModel` mixed in first; one class per ``cls``."""
    if cls not in _MODEL_CLASSES:
        attrs = dict(
            forward_head_without_evidence=_method_as(cls.forward_head, 'forward_head_without_evidence'),
            __reduce_ex__=_reduce_by_base,
            _tm_kind='model',
            _tm_base_class=cls,
            __module__=__name__,
        )
        _MODEL_CLASSES[cls] = type(f'TemplateMatching{cls.__name__}', (TemplateMatchingModel, cls), attrs)
    return _MODEL_CLASSES[cls]


def _check_stages(tm_stages: Any, count: int) -> Tuple[int, ...]:
    """``tm_stages`` as a sorted tuple of distinct feature_info indices below ``count``; errors name it."""
    if isinstance(tm_stages, str) or not isinstance(tm_stages, Sequence):
        raise TypeError(f'tm_stages must be a sequence of feature_info indices (e.g. (2, 3)), got {tm_stages!r}')
    if any(isinstance(s, bool) or not isinstance(s, int) for s in tm_stages):
        raise TypeError(f'tm_stages must be integer feature_info indices, got {tuple(tm_stages)!r}')
    if len(set(tm_stages)) != len(tm_stages) or any(not 0 <= s < count for s in tm_stages):
        raise ValueError(
            f'tm_stages must be distinct feature_info indices from 0 to {count - 1}, got {tuple(tm_stages)}'
        )
    return tuple(sorted(tm_stages))


def _attach(model: nn.Module, tm_stages: Sequence[int], template_classes: Optional[int] = None, **block_kwargs):
    """Attach TM blocks to ``model`` (a timm classification model) in place; returns it. See the module docstring."""
    if isinstance(model, TemplateMatchingModel) or any(isinstance(m, TemplateMatching) for m in model.modules()):
        raise ValueError(f'{type(model).__name__} already has TM blocks')
    info = getattr(model, 'feature_info', None)
    if not isinstance(info, list) or not all(isinstance(i, dict) and 'module' in i for i in info):
        raise ValueError(
            f'{type(model).__name__} has no feature_info list of stages (a timm classification model has one; a '
            'features_only model does not): build the classification model, attach, then wrap it'
        )
    stages = _check_stages(tm_stages, len(info))
    num_classes = check_int('num_classes', model.num_classes, 0)
    if template_classes is not None:
        check_int('template_classes', template_classes, 1)
        if num_classes > 0 and template_classes != num_classes:
            raise ValueError(f'template_classes ({template_classes}) must equal num_classes ({num_classes})')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classes = num_classes or template_classes or cfg.get('num_classes') or 1000
    param = next(model.parameters(), None)
    dd = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    placements = []  # every stage checked before any is changed: a refused stage leaves the model as it was
    for i in stages:
        where = info[i]['module']
        stage = model.get_submodule(where)
        if isinstance(stage, (nn.ModuleList, nn.ModuleDict)):  # e.g. DenseNet's dense blocks
            raise ValueError(
                f'cannot place a TM block after {where} ({type(stage).__name__}): a stage that is a list or dict of '
                'modules runs them its own way, which no added block ends; choose other tm_stages'
            )
        # an nn.Sequential runs its children in turn, wherever it runs (timm's flattened gradient checkpointing calls
        # them one by one): the block is its next child. Any other stage runs it after its own forward.
        sequential = isinstance(stage, nn.Sequential) and type(stage).forward is nn.Sequential.forward
        child = str(len(stage)) if sequential else 'tm'
        if child in stage._modules or hasattr(stage, child):
            raise ValueError(f'cannot place a TM block after {where}: it already has a child or attribute {child!r}')
        block = TemplateMatching(info[i]['num_chs'], classes, **block_kwargs, **dd)
        block.reports_evidence = True  # the model collects the evidence through the blocks' evidence_sink
        placements.append((stage, child, sequential, block))
    for stage, child, sequential, block in placements:
        block.train(model.training)
        if sequential:
            stage.add_module(child, block)
        else:
            stage.add_module(child, BlockAfterStage(block))
            stage.__class__ = _stage_class(type(stage))
    model.tm_base = cfg.get('architecture') or type(model).__name__
    model.__class__ = _model_class(type(model))
    model.tm_stages = stages
    model.templates_per_class = block_kwargs.get('templates_per_class', 1)
    return model


def with_template_matching(
    model: Any, tm_stages: Sequence[int], pretrained: bool = False, **kwargs
) -> TemplateMatchingModel:
    """TM blocks after the ``feature_info`` stages ``tm_stages`` of a timm CNN, at identity: one call. The model
    computes exactly what it computed before (its weights are kept, the blocks' embeddings, and in 'logits' mode their
    evidence weights, are zero), and the labels reach the templates through any loss on its logits.

    Args:
        model: A timm classification model (changed in place and returned), or its name: built with
            ``timm.create_model(model, pretrained=pretrained, **kwargs)``, its own weights loaded by timm.
        tm_stages: Indices into ``model.feature_info`` (as timm's ``out_indices``), e.g. ``(3, 4)``.
        pretrained: With a name: load the base's weights (the TM blocks start at identity, so the model computes
            exactly what the base computes).
        **kwargs: The TM block options (``templates_per_class``, ``template_classes``, ``embedding``,
            ``evidence_mode``, ...; see :class:`~timm_tm.layers.TemplateMatching`); with a name, the others go to
            ``timm.create_model``.

    ``timm_tm.with_template_matching('mobilenetv3_large_100', (3, 4), pretrained=True, num_classes=10)``
    """
    tm_kwargs = {k: kwargs.pop(k) for k in TM_KWARGS if k in kwargs}
    if isinstance(model, str):
        import timm

        model = timm.create_model(model, pretrained=pretrained, **kwargs)
    elif kwargs or pretrained:
        unknown = ', '.join(sorted(kwargs)) or 'pretrained'
        raise TypeError(f'with_template_matching got a built model: {unknown} apply(ies) to a model name only')
    model = _attach(model, tm_stages, **tm_kwargs)
    with torch.no_grad():  # the blocks at identity (in 'logits' mode the evidence weight too): the model's outputs
        for block in model.tm_blocks().values():
            for key in block.identity_state_keys():
                block.get_parameter(key).zero_()
    return model


# --- loading weights: the base's, or a TM model's of the same placement ---------------------------------------------


def _head_name(model: nn.Module) -> Optional[str]:
    """Module name of the model's classifier (``get_classifier()``), e.g. 'head.fc'; None without one."""
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    return next((n for n, m in model.named_modules() if head is not None and m is head), None)


def convert_state_dict(
    state_dict: Dict[str, torch.Tensor], model: nn.Module, new_head: bool = False, source: str = 'the checkpoint'
) -> Dict[str, torch.Tensor]:
    """A state_dict of ``model``'s base (or of a TM model with ``model``'s TM blocks) in, one for ``model`` out.

    The base's (no TM entries) gets ``model``'s own fresh TM blocks, at identity when its head fits (same class count,
    or ``num_classes=0``): ``model`` then computes exactly what the base computes. TM blocks elsewhere, or of another
    embedding or templates per class, are refused with a RuntimeError naming what differs. Another class count is
    adapted (a fine-tuning start): the class-tied TM entries, and the head with ``new_head``, are ``model``'s fresh
    ones, with a warning naming them. Other entries pass through: a wrong backbone is ``load_state_dict``'s to report.

    Args:
        state_dict: The checkpoint's state_dict (or a dict holding it under 'state_dict').
        model: The model it is for (built by :func:`with_template_matching` or a ``tm_*`` entrypoint of this module).
        new_head: Re-initialize a head shaped for another class count too (timm's pretrained loader).
        source: How the error and the warning name the checkpoint (e.g. with its file).
    """
    return convert_to_tm(
        state_dict, model, _head_name(model), functools.partial(_placement_problem, model=model), new_head, source
    )


def _placement_problem(source_tm: List[str], model: nn.Module) -> Optional[str]:
    """Why a state_dict's TM blocks (``source_tm``, by module name) are not where ``model``'s are, or None."""
    blocks = sorted(model.tm_blocks())
    if not source_tm or source_tm == blocks:
        return None
    stage_of = {info['module']: i for i, info in enumerate(model.feature_info)}
    stages = [stage_of.get(stage_module_name(name)) for name in source_tm]
    where = f"its TM blocks are {', '.join(source_tm)}, this model's {', '.join(blocks) or 'none'}"
    if None in stages or tuple(sorted(stages)) == model.tm_stages:  # another architecture
        return f'{where}: create the model (architecture) that the checkpoint was made with'
    return f'{where}: create the model with tm_stages={tuple(sorted(stages))}'


# --- registration with timm --------------------------------------------------------------------------------------

default_cfgs: Dict[str, Any] = {}  # timm's register_model reads the pretrained cfgs of an entrypoint from here
_REGISTERED: Dict[str, Dict[str, Any]] = {}  # tm name -> dict(base=..., tm_stages=...)


def _weight_cfgs(name: str, base: str, tags: Optional[Sequence[str]]) -> Dict[str, Dict[str, Any]]:
    """``{'<name>.<tag>': pretrained cfg}``: the base's weights for each of ``tags`` (default: every tag of the base
    with weights), loaded with the TM blocks at identity; a tag this timm lacks is left out with a warning."""
    if tags is None:
        tags = [n.split('.', 1)[1] for n in list_pretrained(f'{base}.*')]
    cfgs = {}
    for tag in tags:
        src = get_pretrained_cfg(f'{base}.{tag}')
        if src is None:
            _logger.warning(f'this timm has no {base}.{tag} weights: {name}.{tag} is left out')
            continue
        cfg = {k: v for k, v in src.__dict__.items() if k not in ('architecture', 'tag')}
        cfg['notes'] = (f'timm {base}.{tag} weights, TM blocks at identity (exact start for fine-tuning)',)
        cfgs[f'{name}.{tag}'] = cfg
    if not cfgs:  # no weights: the base's default cfg, for its input size and head
        src = get_pretrained_cfg(base)
        cfgs[name] = {k: v for k, v in src.__dict__.items() if k not in ('architecture', 'tag')}
    return cfgs


def register_tm_model(
    base: str, tm_stages: Sequence[int], tags: Optional[Sequence[str]] = None, name: Optional[str] = None
) -> str:
    """Register ``tm_<base>`` (or ``name``) with timm: ``base`` with TM blocks after its ``feature_info`` stages
    ``tm_stages`` (the default; ``tm_stages=`` at creation overrides it), one pretrained tag per tag of the base's
    weights (``tags``: default every tag with weights), the TM blocks at identity on load. Returns the name.

    ``timm.create_model(name, pretrained=True, num_classes=...)`` then works as for any timm model, and so do
    timm's scripts (a module that calls this, imported with train.py ``--device-modules``).
    """
    name = name or f'tm_{base}'
    if not is_model(base):
        raise ValueError(f'{base!r} is not a timm model (timm.list_models())')
    tm_stages = tuple(tm_stages)
    default_cfgs.update(generate_default_cfgs(_weight_cfgs(name, base, tags)))

    def entrypoint(pretrained: bool = False, **kwargs) -> TemplateMatchingModel:
        kwargs.setdefault('tm_stages', tm_stages)
        return _create(name, base, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'timm {base} with TM blocks after its feature_info stages {tm_stages}.'
    register_model(entrypoint)
    _REGISTERED[name] = dict(base=base, tm_stages=tm_stages)
    return name


def base_model_name(name: str) -> str:
    """The timm model a ``tm_*`` architecture is built on: ``'tm_convnext_tiny'`` -> ``'convnext_tiny'``."""
    arch = name.split('.', 1)[0]
    if arch in _REGISTERED:
        return _REGISTERED[arch]['base']
    if arch.startswith('tm_') and is_model(arch[len('tm_') :]):
        return arch[len('tm_') :]
    raise ValueError(f'{name!r} is not a tm_* model built on a timm model')


def _feature_count(base: str) -> int:
    """How many feature_info entries ``base`` has (its architecture built once on the meta device)."""
    if base not in _FEATURE_COUNTS:
        with torch.device('meta'):
            _FEATURE_COUNTS[base] = len(model_entrypoint(base)(pretrained=False).feature_info)
    return _FEATURE_COUNTS[base]


_FEATURE_COUNTS: Dict[str, int] = {}


def _build(base: str, **kwargs) -> TemplateMatchingModel:
    """The base model (random weights; timm's loader loads the weights after) with TM blocks attached."""
    tm_kwargs = {k: kwargs.pop(k) for k in TM_KWARGS if k in kwargs}
    return _attach(model_entrypoint(base)(pretrained=False, **kwargs), **tm_kwargs)


def _filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: the base's weights (or a TM model's) converted by :func:`convert_state_dict`."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    where = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url')
    return convert_state_dict(state_dict, model, new_head=True, source=f'the checkpoint {where}' if where else '')


def _create(name: str, base: str, pretrained: bool, **kwargs) -> TemplateMatchingModel:
    if pretrained:  # the local weights file is verified before timm's loader reads it
        kwargs = prepare_pretrained(name, kwargs)
    if kwargs.get('num_classes') == 0:  # an embedding model keeps templates for the classes its weights have
        cfg = resolve_pretrained_cfg(name, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        kwargs.setdefault('template_classes', cfg.num_classes or 1000)
    feature_cfg: Dict[str, Any] = dict(flatten_sequential=True)
    if kwargs.get('features_only') and 'out_indices' not in kwargs:
        feature_cfg['out_indices'] = tuple(range(_feature_count(base)))
    return build_model_with_cfg(
        lambda **kw: _build(base, **kw), name, pretrained, pretrained_filter_fn=_filter_fn, feature_cfg=feature_cfg,
        **kwargs,
    )  # fmt: skip


for _name, _variant in TM_VARIANTS.items():
    register_tm_model(_variant['base'], _variant['tm_stages'], tags=_variant['tags'], name=_name)

"""Variant names: ``baseline[-ep<int>]`` or ``tm[-option...]`` -> the model overrides they stand for.

The options are listed in the docstring of :mod:`timm_tm.compare`; ``control_pairs`` says which variants a
comparison sets against which.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_tm.layers import DEFAULT_EMBEDDING

__all__ = [
    'Variant', 'parse_variant', 'expand_variant_names', 'control_pairs', 'table_reference', 'DEFAULT_VARIANTS',
    'ABLATION_VARIANTS',
]  # fmt: skip

DEFAULT_VARIANTS = ('baseline', 'tm', 'tm-noembed')
ABLATION_VARIANTS = ('baseline', 'tm', 'tm-noguide', 'tm-w0', 'tm-fixw', 'tm-m2', 'tm-m4', 'tm-s4')

# option token -> the model's ``embedding`` argument
_EMBED_TOKENS = {
    'noembed': 'none', 'embtemplates': 'templates', 'embclasses': 'classes', 'embtied': 'tied', 'embargmax': 'argmax',
}  # fmt: skip
# what an option sets besides model keyword arguments (the names the error for two options that set it gives)
_EPOCHS, _FREEZE = 'epochs', 'the frozen evidence weight'


@dataclass(frozen=True)
class Variant:
    """A named model configuration: keyword overrides for ``timm.create_model``, whether w is frozen, and the
    variant's own epoch count (``None``: the recipe's)."""

    name: str
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    freeze_evidence_weight: bool = False
    epochs: Optional[int] = None

    @property
    def is_baseline(self) -> bool:
        return self.model_kwargs.get('tm_stages', None) == ()


def parse_variant(name: str) -> Variant:
    """``'baseline[-ep<int>]'`` or ``'tm[-option...]'`` (see the module docstring) -> Variant. Raises ValueError,
    also for two options that set the same thing (``tm-m1-m4``, ``tm-w1-noguide``): the last one would win."""
    parts = name.split('-')
    if parts[0] not in ('baseline', 'tm'):
        raise ValueError(f"unknown variant {name!r}: expected 'baseline' or 'tm[-option...]' (e.g. tm-noembed)")
    settings: Dict[str, Any] = {}
    set_by: Dict[str, str] = {}
    for tok in parts[1:]:
        for key, value in _option(name, parts[0], tok).items():
            if key in set_by:
                raise ValueError(f'variant {name!r}: {set_by[key]!r} and {tok!r} both set {key}: keep one')
            set_by[key] = tok
            settings[key] = value
    epochs = settings.pop(_EPOCHS, None)
    freeze = settings.pop(_FREEZE, False)
    kwargs = {'tm_stages': ()} if parts[0] == 'baseline' else {}
    return Variant(name, {**kwargs, **settings}, freeze, epochs)


def _option(name: str, kind: str, tok: str) -> Dict[str, Any]:
    """What one option ``tok`` of the variant ``name`` (``kind`` 'baseline' or 'tm') sets: model keyword
    arguments, and the variant's own epochs / frozen w under ``_EPOCHS`` / ``_FREEZE``. Raises ValueError."""
    if m := re.fullmatch(r'ep(\d+)', tok):
        if int(m.group(1)) < 1:
            raise ValueError(f'variant {name!r}: epochs must be >= 1, got {tok!r}')
        return {_EPOCHS: int(m.group(1))}
    if kind == 'baseline':
        raise ValueError(f'unknown option {tok!r} in variant {name!r}: the baseline takes only ep<int>')
    if tok == 'fixw':
        return {_FREEZE: True}
    if tok == 'noguide':  # no label guidance: w frozen at 0
        return {_FREEZE: True, 'evidence_weight_init': 0.0}
    return _tm_option(name, tok)


def _tm_option(name: str, tok: str) -> Dict[str, Any]:
    """The model keyword arguments of one option ``tok`` of the TM variant ``name``. Raises ValueError."""
    if m := re.fullmatch(r'm(\d+)', tok):
        if int(m.group(1)) < 1:
            raise ValueError(f'variant {name!r}: templates per class must be >= 1, got {tok!r}')
        return {'templates_per_class': int(m.group(1))}
    if m := re.fullmatch(r's([1-4]+)', tok):
        stages = tuple(int(c) for c in m.group(1))
        if len(set(stages)) != len(stages):
            raise ValueError(f'variant {name!r}: repeated stage in {tok!r}')
        return {'tm_stages': tuple(sorted(stages))}
    if m := re.fullmatch(r'w(-?\d+(?:\.\d+)?)', tok):
        return {'evidence_weight_init': float(m.group(1))}
    if m := re.fullmatch(r't(\d+(?:\.\d+)?)', tok):
        if float(m.group(1)) <= 0:
            raise ValueError(f'variant {name!r}: temperature must be > 0, got {tok!r}')
        return {'temperature_init': float(m.group(1))}
    if tok in ('max', 'lse'):
        return {'evidence_pool': 'max' if tok == 'max' else 'logsumexp'}
    if tok in _EMBED_TOKENS:
        return {'embedding': _EMBED_TOKENS[tok]}
    if tok in ('evgrad', 'evlogits'):
        return {'evidence_mode': 'gradient' if tok == 'evgrad' else 'logits'}
    raise ValueError(
        f'unknown option {tok!r} in variant {name!r}: expected m<int>, s<stages>, w<float>, t<float>, '
        f'fixw, noguide, max, lse, {", ".join(_EMBED_TOKENS)}, evgrad, evlogits or ep<int>'
    )


def expand_variant_names(requested: Sequence[str]) -> List[str]:
    """``--variants`` as names: ``'ablations'`` stands for ``ABLATION_VARIANTS``; repeats are dropped, order kept."""
    names: List[str] = []
    for v in requested:
        for n in ABLATION_VARIANTS if v == 'ablations' else (v,):
            if n not in names:
                names.append(n)
    return names


def control_pairs(variants: Sequence[str]) -> List[Tuple[str, str]]:
    """(variant, reference) pairs worth a verdict: every variant against the baseline (of its own epoch count, for
    an ``-ep<E>`` variant, when there is one); a variant with an embedding against its evidence-only twin (the same
    variant without embedding, e.g. ``tm-noembed`` for ``tm`` or ``tm-embtied``); a variant against its
    ``-noguide`` control (the same blocks without label guidance) when they were run; a longer ``baseline-ep<E>``
    against the next shorter one (the plateau check of that budget); a TM variant against the one it extends by an
    option (``tm-embargmax-m2`` against ``tm-embargmax``: the option's effect), and an embedding whose own
    evidence-only twin did not run against ``tm-noembed`` of its budget (the target of a knob screen: better than
    both the baseline and the evidence-only block)."""
    parsed = {v: parse_variant(v) for v in variants}
    pairs = []
    for v, pv in parsed.items():  # against the baseline trained as long (``baseline-ep<E>`` for ``-ep<E>`` variants)
        reference = 'baseline' if pv.epochs is None or pv.is_baseline else f'baseline-ep{pv.epochs}'
        if v != reference and reference in parsed:
            pairs.append((v, reference))
    # the plateau check of a budget: a longer baseline against the next shorter ``baseline-ep<E>`` that ran
    longer_baselines = sorted((pv.epochs, v) for v, pv in parsed.items() if pv.is_baseline and pv.epochs is not None)
    pairs += [(v, shorter) for (_, shorter), (_, v) in zip(longer_baselines, longer_baselines[1:])]

    def without(variant: Variant, key: str) -> Tuple:
        kwargs = {k: v for k, v in variant.model_kwargs.items() if k != key}
        return tuple(sorted(kwargs.items())), variant.freeze_evidence_weight, variant.epochs

    for a, va in parsed.items():
        if va.is_baseline:
            continue
        if _embedding(va) != 'none':
            pairs += [(a, b) for b, vb in parsed.items() if b != a and not vb.is_baseline
                      and _embedding(vb) == 'none'
                      and without(vb, 'embedding') == without(va, 'embedding')]  # fmt: skip
        if f'{a}-noguide' in parsed:
            pairs.append((a, f'{a}-noguide'))
    for a, va in parsed.items():
        if va.is_baseline:
            continue
        for b in _one_option_less(a):  # the option's effect: tm-embargmax-m2 against tm-embargmax
            if b in parsed and (a, b) not in pairs and (b, a) not in pairs:
                pairs.append((a, b))
        # an embedding whose own evidence-only twin did not run: against the recipe's evidence-only block
        evidence_only = 'tm-noembed' + (f'-ep{va.epochs}' if va.epochs else '')
        if _embedding(va) != 'none' and not va.freeze_evidence_weight and evidence_only in parsed:
            if not any(a == x and _embedding(parsed[y]) == 'none' for x, y in pairs):
                pairs.append((a, evidence_only))
    return pairs


def _one_option_less(name: str) -> List[str]:
    """The TM variant names ``name`` extends by one option (``tm-embargmax-m2`` -> ``tm-m2``, ``tm-embargmax``),
    budget (``ep<int>``) and ``noguide`` options kept: those pairs are the plateau and guidance checks above."""
    kind, *options = name.split('-')
    return [
        '-'.join([kind, *options[:i], *options[i + 1 :]])
        for i, tok in enumerate(options)
        if tok != 'noguide' and not re.fullmatch(r'ep\d+', tok)
    ]


def table_reference(variants: Sequence[str]) -> str:
    """The variant a results table gives every other's difference to: ``baseline`` when it is among ``variants``,
    else the shortest ``baseline-ep<E>`` among them (a study at a longer budget), else ``baseline``."""
    if 'baseline' in variants:
        return 'baseline'
    longer = sorted((pv.epochs, v) for v, pv in ((v, parse_variant(v)) for v in variants) if pv.is_baseline)
    return longer[0][1] if longer else 'baseline'


def _embedding(variant: Variant) -> str:
    """The TM blocks' ``embedding`` of a TM variant (the model's default unless the variant sets one)."""
    return variant.model_kwargs.get('embedding', DEFAULT_EMBEDDING)

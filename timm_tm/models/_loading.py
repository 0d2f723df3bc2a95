"""What both TM model families check and fill before a state_dict loads: one set of rules for ``tm_resnet*``
(:mod:`timm_tm.models.tm_resnet`) and for TM blocks on any timm CNN (:mod:`timm_tm.models.tm_attach`).

* :func:`tm_block_problems`: a checkpoint's TM blocks against the model's (keys, so another embedding; template
  count; the recorded ``tm_config``), after the family's own check of where the blocks are;
* :func:`fill_tm_entries`: a base model's checkpoint gets the model's fresh TM entries (at identity when its head
  fits), and class-tied ones for another class count are re-initialized;
* :func:`load_errors`: torch's missing / unexpected / mis-shaped keys, found before anything is copied, the TM
  ones called out as such.

Why each refusal: a checkpoint that loads "fine" into blocks of another configuration predicts otherwise.
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from timm_tm.layers import CONFIG_KEY, EMBEDDINGS, TemplateMatching, tm_config_problem

__all__ = [
    'convert_to_tm', 'is_base_state_dict', 'source_tm_blocks', 'class_count', 'tm_keys', 'template_class_count',
    'tm_block_problems', 'template_count_problem', 'fill_tm_entries', 'load_errors', 'checked_state_dict',
]  # fmt: skip

_logger = logging.getLogger(__name__)

# what a TM block's state_dict may lack: BN batch counters and the configuration record (older checkpoints)
_OPTIONAL = ('num_batches_tracked', CONFIG_KEY)


def convert_to_tm(
    state_dict: Dict[str, Any],
    model: nn.Module,
    head: Optional[str],
    placement_problem: Callable[[List[str]], Optional[str]],
    new_head: bool = False,
    source: str = 'the checkpoint',
    first_problem: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """A state_dict of ``model``'s base (no TM entries), or of a TM model made as ``model`` is, in; one for
    ``model`` out (the body of both families' converters).

    The base's gets ``model``'s own fresh TM blocks, at identity when its head fits (same class count, or
    ``num_classes=0``). A TM model's must have ``model``'s TM configuration: ``first_problem`` (the family's, e.g.
    another architecture), ``placement_problem(source_tm)`` (its blocks elsewhere) and :func:`tm_block_problems`
    are refused in one RuntimeError naming ``source``. Only another class count is adapted (a fine-tuning start):
    the class-tied TM entries, and the ``head`` with ``new_head``, are ``model``'s fresh ones, with a warning.
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    source_classes = class_count(state_dict, head)
    subject = source[:1].upper() + source[1:]  # sentence case
    model_sd, blocks, source_tm = model.state_dict(), model.tm_blocks(), source_tm_blocks(state_dict)
    model_classes = template_class_count(model, blocks)
    problems = (
        [first_problem]
        if first_problem
        else tm_block_problems(
            state_dict, source_tm, source_classes, blocks, model_classes, head, placement_problem(source_tm)
        )
    )
    if problems:
        raise RuntimeError(
            f'{subject} does not fit {type(model).__name__} (nothing was loaded): ' + '; '.join(problems)
        )
    class_change = source_classes is not None and model_classes > 0 and source_classes != model_classes
    out, refreshed = fill_tm_entries(state_dict, not source_tm, source_classes, class_change, model, model_sd, blocks)
    if new_head and class_change and model.num_classes > 0 and head:  # another class count: a fresh head as well
        for k in (f'{head}.weight', f'{head}.bias'):
            if k in state_dict and k in model_sd and state_dict[k].shape != model_sd[k].shape:
                out[k] = model_sd[k].detach().clone()
                refreshed.append(k)
    if refreshed:
        _logger.warning(
            f'{subject} is for {source_classes} classes, this model for {model_classes}: its class-tied entries '
            'were re-initialized (a fine-tuning start, not its trained predictions): ' + ', '.join(refreshed)
        )
    return out


def checked_state_dict(
    model: nn.Module,
    state_dict: Dict[str, Any],
    strict: bool,
    head: Optional[str],
    convert: Callable[[Dict[str, Any]], Dict[str, Any]],
    placement_problem: Callable[[List[str]], Optional[str]],
    base: str,
) -> Dict[str, Any]:
    """``state_dict`` as ``model`` loads it, checked before anything is copied (the body of both families'
    ``load_state_dict``). A ``base`` model's (none of the model's TM keys) goes through ``convert``; a TM model's
    blocks must be where ``model``'s are (``placement_problem``) and made as they are (:func:`tm_block_problems`);
    then torch's key and shape checks (:func:`load_errors`). Raises RuntimeError naming what does not fit."""
    own, blocks = model.state_dict(), model.tm_blocks()
    converted = is_base_state_dict(state_dict, own, blocks)
    if converted:
        state_dict = convert(dict(state_dict))
    source_tm = source_tm_blocks(state_dict)
    # a converted base's blocks are this model's own: a head of another class count is load_errors' to name
    if source_tm and not converted:
        problems = tm_block_problems(
            state_dict, source_tm, class_count(state_dict, head), blocks, template_class_count(model, blocks), head,
            placement_problem(source_tm),
        )  # fmt: skip
        if problems:
            raise RuntimeError(
                f'The state_dict does not fit {type(model).__name__} (nothing was loaded): ' + '; '.join(problems)
            )
    errors = load_errors(model, own, state_dict, strict, base if converted else None, head)
    if errors:
        raise RuntimeError(errors)
    return state_dict


def is_base_state_dict(state_dict: Dict[str, Any], own: Dict[str, Any], blocks: Dict[str, TemplateMatching]) -> bool:
    """Whether ``state_dict`` is the base model's (none of the TM keys of the model's state_dict ``own``, some of
    its other keys): a checkpoint to convert, TM blocks at identity."""
    own_tm = set(tm_keys(own, blocks))
    return bool(own_tm) and not any(k in own_tm for k in state_dict) and any(k in own for k in state_dict)


def source_tm_blocks(state_dict: Dict[str, Any]) -> List[str]:
    """The TM blocks of a state_dict by module name: every TM block has a templates conv."""
    return sorted(k[: -len('.templates.weight')] for k in state_dict if k.endswith('.templates.weight'))


def class_count(state_dict: Dict[str, Any], head: Optional[str]) -> Optional[int]:
    """The class count of a state_dict's classifier ``head`` (its weight's rows), or None without one."""
    weight = state_dict.get(f'{head}.weight') if head else None
    return weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def tm_keys(state: Dict[str, Any], blocks: Dict[str, TemplateMatching]) -> List[str]:
    """The keys of a model's ``state`` (its state_dict) that belong to its TM ``blocks`` (by module name)."""
    prefixes = tuple(name + '.' for name in blocks)
    return [k for k in state if prefixes and k.startswith(prefixes)]


def template_class_count(model: nn.Module, blocks: Dict[str, TemplateMatching]) -> int:
    """The classes the templates of ``model`` belong to (``template_classes`` for an embedding model)."""
    return next(iter(blocks.values())).num_classes if blocks else model.num_classes


def tm_block_problems(
    state_dict: Dict[str, Any],
    source_tm: List[str],
    source_classes: Optional[int],
    blocks: Dict[str, TemplateMatching],
    model_classes: int,
    head: Optional[str],
    placement_problem: Optional[str] = None,
) -> List[str]:
    """What differs between the checkpoint's TM blocks (``source_tm``, by module name) and the model's ``blocks``:
    ``placement_problem`` (the family's word on blocks at other places) if any, then, on the blocks both have, the
    first one whose keys differ (another embedding) and the first whose template count does not fit; the recorded
    options (tm_config) only when nothing else differs, the class count among them only where it cannot be adapted
    (no head, or the model's ``model_classes``). ``head``: the classifier whose weight gave ``source_classes``."""
    problems = [placement_problem] if placement_problem else []
    shared = [n for n in source_tm if n in blocks]
    for name in shared:
        prefix = name + '.'
        own = {prefix + k for k in blocks[name].state_dict() if not k.endswith(_OPTIONAL)}
        theirs = {k for k in state_dict if k.startswith(prefix) and not k.endswith(_OPTIONAL)}
        if own != theirs:
            differs = ' and '.join(
                f'{what} {sorted(keys)}' for what, keys in (('has', theirs - own), ('lacks', own - theirs)) if keys
            )
            problems.append(
                f'its TM block {name} {differs} (another embedding?): create the model with the TM options (e.g. '
                f'embedding) that the checkpoint was made with; this model has embedding={blocks[name].embedding!r}'
            )
            break
    for name in shared:
        count = state_dict[f'{name}.templates.weight'].shape[0]
        problem = template_count_problem(name, count, blocks[name], source_classes, head or 'head')
        if problem:
            problems.append(problem)
            break
    if not problems:
        problem = tm_config_problem(
            {n: blocks[n] for n in shared}, state_dict, classes=source_classes in (None, model_classes)
        )
        if problem:
            problems.append(problem)
    return problems


def template_count_problem(
    name: str, count: int, block: TemplateMatching, source_classes: Optional[int], head: str = 'fc'
) -> Optional[str]:
    """Why ``count`` templates in the checkpoint's block ``name`` do not fit ``block``, or None (``head``: the
    classifier whose weight gave ``source_classes``)."""
    if source_classes is None:  # no head: its class count is unknown, so its template count must be this one
        if count == block.num_templates:
            return None
        return (
            f'it has no head ({head}.weight) and {count} templates in {name}, this model {block.num_templates} '
            f'({block.num_classes} classes x {block.templates_per_class} per class): create the model with '
            "num_classes=0 and the checkpoint's template_classes and templates_per_class"
        )
    if count % source_classes:
        return (
            f'its {count} templates in {name} are no whole number per class of its {source_classes} classes '
            f'({head}.weight): it was not made for this model'
        )
    if count // source_classes != block.templates_per_class:
        per_class = count // source_classes
        return (
            f'it has {per_class} templates per class ({count} for its {source_classes} classes in {name}), '
            f'this model {block.templates_per_class}: create the model with templates_per_class={per_class}'
        )
    return None


def fill_tm_entries(
    state_dict: Dict[str, torch.Tensor],
    from_base: bool,
    source_classes: Optional[int],
    class_change: bool,
    model: nn.Module,
    model_sd: Dict[str, torch.Tensor],
    blocks: Dict[str, TemplateMatching],
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(``state_dict`` with ``model``'s fresh TM entries where it has none, or where they are for another class
    count, the keys it had that were re-initialized). A base model's (``from_base``: no TM blocks) whose head fits
    gets TM blocks at identity."""
    same_head = source_classes is not None and model.num_classes > 0 and source_classes == model.num_classes
    exact = from_base and (same_head or model.num_classes == 0)
    identity_keys = {f'{name}.{k}' for name, tm in blocks.items() for k in tm.identity_state_keys()}
    out, refreshed = dict(state_dict), []
    for k in tm_keys(model_sd, blocks):
        src = state_dict.get(k)
        if k.endswith('.' + CONFIG_KEY):  # checked by tm_block_problems: the model's own, for its class count
            if from_base or src is not None:  # a TM checkpoint without one stays without: the block warns on load
                out[k] = model_sd[k].detach().clone()
            continue
        if src is not None and (src.shape == model_sd[k].shape or not class_change):
            continue  # a mis-shaped entry with the same class count is load_state_dict's to report
        v = model_sd[k].detach().clone()
        if exact and k in identity_keys:
            v.zero_()
        out[k] = v
        if src is not None:
            refreshed.append(k)
    return out, refreshed


def load_errors(
    model: nn.Module,
    own: Dict[str, torch.Tensor],
    state_dict: Dict[str, Any],
    strict: bool,
    converted_from: Optional[str],
    head: Optional[str],
    max_keys: int = 12,
) -> str:
    """What keeps ``state_dict`` from loading into ``model`` (its state_dict ``own``): torch's checks, the TM keys
    named apart; '' if nothing. ``converted_from``: the base model it was read as (it had no TM keys), or None;
    ``head``: the classifier tied to the classes with the templates. Called by :func:`checked_state_dict` after the
    TM blocks' own check, so their placement is not repeated here."""
    # a TM block's configuration record is optional (checkpoints saved before it existed)
    missing = [k for k in own if k not in state_dict and not k.endswith('.' + CONFIG_KEY)] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    mismatched = [
        k
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return ''
    # TM blocks elsewhere were refused before (checked_state_dict): the state_dict's blocks are the model's
    tm_prefixes = tuple(f'{p}.' for p in model.tm_blocks())
    tm_leaves = {k for e in EMBEDDINGS for k in TemplateMatching(1, 1, embedding=e).state_dict()}

    def is_tm(key: str) -> bool:
        return any(key.startswith(p) and key[len(p) :] in tm_leaves for p in tm_prefixes)

    def keys(ks: List[str]) -> str:
        shown = ', '.join(f'"{k}"' for k in ks[:max_keys])
        return shown + (f', ... ({len(ks) - max_keys} more)' if len(ks) > max_keys else '')

    lines = [f'Error(s) in loading state_dict for {type(model).__name__} (nothing was loaded):']
    if converted_from:
        lines.append(f'\t(it has none of the TM keys, so it was read as a {converted_from} state_dict and converted)')
    for what, ks in (('Missing', missing), ('Unexpected', unexpected)):
        plain, tm = [k for k in ks if not is_tm(k)], [k for k in ks if is_tm(k)]
        if plain:
            lines.append(f'\t{what} key(s) in state_dict: {keys(plain)}.')
        if tm:
            lines.append(f'\t{what} TM (template-matching block) key(s) in state_dict: {keys(tm)}.')
    for k in mismatched[:max_keys]:
        tag = 'TM key ' if is_tm(k) else ''
        lines.append(
            f'\tsize mismatch for {tag}{k}: copying a param with shape {list(state_dict[k].shape)} from checkpoint, '
            f'the shape in current model is {list(own[k].shape)}.'
        )
    if len(mismatched) > max_keys:  # another architecture mis-shapes hundreds: the first ones say what it is
        lines.append(f'\t... and {len(mismatched) - max_keys} more size mismatch(es).')
    class_tied = [k for k in mismatched if k.endswith('.templates.weight') or (head and k == f'{head}.weight')]
    if any(state_dict[k].shape[0] != own[k].shape[0] for k in class_tied):  # another class count, not width
        lines.append(
            'The head and the templates are tied to the classes: create the model with the num_classes (and '
            "templates_per_class) of the checkpoint, or fine-tune from it with timm's pretrained_cfg_overlay="
            'dict(file=...) (train.py --pretrained-path), which re-initializes the class-tied parts.'
        )
    return '\n'.join(lines)

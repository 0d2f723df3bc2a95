"""Reading a timm train.py checkpoint: the one place ``timm-tm export`` and ``timm-tm visualize`` take weights,
training args and class names from, so that the two commands cannot disagree on what a checkpoint holds.

* :func:`read_checkpoint`: the state_dict (model or EMA weights, never one in place of the other) and the
  metadata train.py stored (``args``, ``epoch``, ``metric``, ``arch``, ``label_names``). Pickled files are read
  with ``weights_only=True``, ``.safetensors`` files are verified (:func:`timm_tm.pretrained.verify_weights_file`)
  before they are read, and weights that are not all finite tensors are refused.
* :func:`model_kwargs_from_args` / :func:`data_args_from_args`: the model kwargs and the preprocessing the run
  used, checked for type.
* :func:`label_names_from_args`, :func:`read_label_names_file`, :func:`check_label_names`: class names from the
  run's ``--class-map`` or train folder, from a ``--label-names`` file, or from a config.

Every error is a :class:`CheckpointError` with a one-line message that names the file (or flag) at fault.
"""

import argparse
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import safetensors.torch
import torch
from timm.models import clean_state_dict, get_pretrained_cfg_value
from timm.utils import natural_key

from timm_tm.cli import first_line
from timm_tm.pretrained import WeightsFileError, verify_weights_file

__all__ = [
    'CheckpointError',
    'read_checkpoint',
    'model_kwargs_from_args',
    'data_args_from_args',
    'num_classes_from',
    'label_names_from_args',
    'read_label_names_file',
    'check_label_names',
]

# entries of a train.py checkpoint that hold weights; the EMA ones only with use_ema, the others only without
MODEL_KEYS = ('state_dict', 'model')
EMA_KEYS = ('state_dict_ema', 'model_ema')
# train.py arguments that describe the preprocessing the weights were trained / evaluated with
DATA_ARGS = ('input_size', 'img_size', 'in_chans', 'crop_pct', 'mean', 'std', 'interpolation', 'crop_mode')
# dataset names timm's create_dataset reads as an ImageFolder (class folders give the label names)
_FOLDER_DATASETS = ('', 'folder', 'imagefolder', 'image_folder')


class CheckpointError(ValueError):
    """A checkpoint, args or label-names file that cannot be used; the message names the file (or flag)."""


def read_checkpoint(path, use_ema: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A train.py checkpoint (``.pth.tar``), a bare state_dict (``.pth``) or ``.safetensors`` -> (state_dict, meta).

    ``use_ema`` takes ``state_dict_ema`` and fails when the file has none (it never falls back to the model
    weights). ``meta`` holds ``args`` (a dict, empty when not recorded), ``epoch``, ``metric``, ``arch``,
    ``label_names`` (a list, or None) and ``key`` (the entry the weights came from; None for a bare state_dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: checkpoint not found')
    checkpoint = _load_safetensors(path) if path.name.endswith('.safetensors') else _load_pickled(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'{path}: expected a dict (a state_dict or a train.py checkpoint), got {type(checkpoint).__name__}'
        )
    if any(k in checkpoint for k in MODEL_KEYS + EMA_KEYS):
        meta = _train_script_meta(checkpoint, path)
        meta['key'] = _weights_key(checkpoint, path, use_ema)
        state_dict = checkpoint[meta['key']]
    else:
        if use_ema:
            raise CheckpointError(f'{path}: --use-ema: a bare state_dict has no EMA weights')
        meta = _train_script_meta({}, path)  # nothing recorded: every field empty
        state_dict = checkpoint
    _check_weights(state_dict, path)
    return clean_state_dict(state_dict), meta


def _load_safetensors(path: Path) -> Dict[str, Any]:
    try:
        verify_weights_file(path)  # header, size, and the SHA-256 a config.json beside it records
        return safetensors.torch.load_file(str(path), device='cpu')
    except WeightsFileError as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:  # safetensors raises its own SafetensorError, not exported under one name
        raise CheckpointError(f'{path}: not a readable safetensors file ({first_line(e)})') from e


def _load_pickled(path: Path) -> Any:
    try:
        # train.py stores its args as an argparse.Namespace: the one class allowed besides tensors
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f'{path}: not a readable PyTorch checkpoint with weights_only=True (truncated, altered or not a torch '
            f'checkpoint): {first_line(e)}'
        ) from e


def _train_script_meta(checkpoint: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """What train.py recorded beside the weights, type-checked (``key`` still None)."""
    args = _args_dict(checkpoint.get('args'), path)
    arch = checkpoint.get('arch')
    if arch is not None and not isinstance(arch, str):
        raise CheckpointError(f"{path}: 'arch' has type {type(arch).__name__}, expected a model name")
    label_names = checkpoint.get('label_names')
    if label_names is not None:
        label_names = check_label_names(label_names, f"{path} ('label_names')")
    return {
        'args': args,
        'epoch': checkpoint.get('epoch'),
        'metric': checkpoint.get('metric'),
        'arch': arch,
        'label_names': label_names,
        'key': None,
    }


def _weights_key(checkpoint: Dict[str, Any], path: Path, use_ema: bool) -> str:
    """The entry of a train.py checkpoint that holds the weights asked for (EMA or model, never the other)."""
    keys = EMA_KEYS if use_ema else MODEL_KEYS
    key = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
    if key is not None:
        return key
    if use_ema:
        raise CheckpointError(
            f'{path}: --use-ema: the checkpoint has no EMA weights (state_dict_ema); train with --model-ema, '
            'or leave out --use-ema'
        )
    raise CheckpointError(f'{path}: the checkpoint has no "state_dict" entry (found {sorted(checkpoint)})')


def _check_weights(state_dict: Dict[Any, Any], path: Path) -> None:
    """Refuse an empty state_dict, entries that are not tensors, and non-finite weights (a diverged run)."""
    if not state_dict:
        raise CheckpointError(f'{path}: the state_dict is empty')
    not_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f'{path}: state_dict entries that are not tensors: {not_tensors[:8]}')
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f'{path}: non-finite values (NaN / inf) in {bad[:8]}: the run diverged')


def _args_dict(args: Any, path: Path) -> Dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CheckpointError(
            f"{path}: 'args' has type {type(args).__name__}, expected train.py's argparse.Namespace or a dict of its "
            'arguments'
        )
    return dict(args)


def model_kwargs_from_args(args: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The model kwargs a train.py run built its model with: ``--model-kwargs``, ``--in-chans``, ``--gp``,
    ``--bn-eps`` (``num_classes`` apart: see :func:`num_classes_from`)."""
    model_kwargs = args.get('model_kwargs') or {}
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise CheckpointError(f"{source}: args 'model_kwargs' has type {type(model_kwargs).__name__}, expected a dict")
    kwargs = dict(model_kwargs)
    for arg, kwarg, kind in (('in_chans', 'in_chans', int), ('gp', 'global_pool', str), ('bn_eps', 'bn_eps', float)):
        value = args.get(arg)
        if value is None:
            continue
        if not _is_kind(value, kind):
            raise CheckpointError(f"{source}: args '{arg}' is {value!r}, expected a {kind.__name__}")
        kwargs[kwarg] = value
    kwargs.pop('num_classes', None)
    return kwargs


def _is_kind(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return isinstance(value, kind)


def data_args_from_args(args: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The preprocessing args (``input_size``, ``mean``, ``crop_pct``, ...) a train.py run set, type-checked, for
    timm's ``resolve_data_config(args=...)``; unset (None) ones are left out."""
    out = {}
    for k in DATA_ARGS:
        v = args.get(k)
        if v is None:
            continue
        if k in ('input_size', 'mean', 'std', 'img_size') and isinstance(v, (list, tuple)):
            ok = len(v) > 0 and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
            if k == 'input_size':
                ok = ok and len(v) == 3 and all(isinstance(x, int) and x > 0 for x in v)
            if k == 'img_size':
                ok = ok and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)
            if k == 'std':
                ok = ok and all(x > 0 for x in v)
        elif k in ('img_size', 'in_chans'):
            ok = _is_kind(v, int)
        elif k == 'crop_pct':
            ok = _is_kind(v, float)
        elif k in ('interpolation', 'crop_mode'):
            ok = isinstance(v, str)
        else:
            ok = False
        if not ok:
            raise CheckpointError(f"{source}: args '{k}' is {v!r}, not a valid value for timm's data config")
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def num_classes_from(
    args: Dict[str, Any], state_dict: Dict[str, Any], source: str, model_name: Optional[str] = None
) -> Optional[int]:
    """The classes of the run's head: ``args['num_classes']``, else the rows of the head's weight (the classifier
    that ``model_name``'s pretrained cfg names, ``fc`` without one); None if unknown."""
    n = args.get('num_classes')
    if n is not None:
        if not _is_kind(n, int):
            raise CheckpointError(f"{source}: args 'num_classes' is {n!r}, expected a positive int")
        return n
    try:
        classifier = get_pretrained_cfg_value(model_name, 'classifier') if model_name else None
    except RuntimeError:  # a name timm has no pretrained cfg for
        classifier = None
    if isinstance(classifier, (tuple, list)):
        classifier = classifier[0] if classifier else None
    fc = state_dict.get(f'{classifier or "fc"}.weight')
    if fc is not None and fc.ndim == 2:
        return int(fc.shape[0])
    return None


def check_label_names(names: Any, source: str) -> List[str]:
    """``names`` as a list of str, or a CheckpointError naming ``source`` when it is not a list of names."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise CheckpointError(f'{source}: label_names has type {type(names).__name__}, expected a list of class names')
    bad = [n for n in names if not isinstance(n, (str, int)) or isinstance(n, bool)]
    if bad:
        raise CheckpointError(f'{source}: label_names holds {bad[0]!r}: class names must be strings')
    return [str(n) for n in names]


def read_label_names_file(path, flag: str = '--label-names') -> List[str]:
    """Class names from a text file (one per line), a JSON list, or a JSON dict (``{"0": "cat"}`` or
    ``{"cat": 0}``), in class-index order."""
    path = Path(path)
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{flag}: cannot read {path} ({first_line(e)})') from e
    if path.suffix.lower() != '.json':
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:  # trailing blank lines end the file; they name no class
            names.pop()
        if not names:
            raise CheckpointError(f'{flag}: {path} names no classes')
        if '' in names:  # line i is class i: dropping a blank line would shift every later class
            raise CheckpointError(f'{flag}: {path} line {names.index("") + 1} is blank: one class name per line')
        return names
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f'{flag}: {path} is not valid JSON ({first_line(e)})') from e
    if isinstance(data, dict):
        data = _names_by_index(data, f'{flag}: {path}')
    return check_label_names(data, f'{flag}: {path}')


def _names_by_index(data: Dict[Any, Any], source: str) -> List[Any]:
    """A JSON dict of class indices and names (``{"0": "cat"}`` or ``{"cat": 0}``) as the list of names in index
    order; the indices must be exactly 0 .. N-1, each once: a gap or a repeat would shift every later class."""
    digit_keys = all(str(k).isdigit() for k in data)
    pairs = [(k, v) for k, v in data.items()] if digit_keys else [(v, k) for k, v in data.items()]
    indices = []
    for index, _ in pairs:
        if isinstance(index, bool) or not (isinstance(index, int) or (isinstance(index, str) and index.isdigit())):
            raise CheckpointError(
                f'{source}: a JSON dict must map indices to names or names to indices, found index {index!r}'
            )
        indices.append(int(index))
    expected = list(range(len(indices)))
    if sorted(indices) != expected:
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        missing = sorted(set(expected) - set(indices))
        what = f'index {repeated[0]} is given twice' if repeated else f'index {missing[0]} is missing'
        raise CheckpointError(f'{source}: the class indices must be 0 to {len(indices) - 1}, each once: {what}')
    return [name for _, name in sorted(pairs, key=lambda p: int(p[0]))]


def label_names_from_args(args: Dict[str, Any]) -> Optional[Tuple[List[str], str]]:
    """(class names, where from) of a train.py run, when its ``--class-map`` (.txt) or its ImageFolder train folder
    is still on disk; None otherwise. The order is train.py's: the class map's lines (line i is class i, so a blank
    line between names, an unreadable or an empty map is a CheckpointError: the class folders' order need not be the
    map's), else the class folders sorted by timm's ``natural_key``."""
    class_map = args.get('class_map')
    # a .pkl class map is not unpickled here: reading the checkpoint must not run code
    if isinstance(class_map, str) and class_map.lower().endswith('.txt') and os.path.isfile(class_map):
        return read_label_names_file(class_map, "the run's --class-map"), class_map
    data_dir = args.get('data_dir') or args.get('data')
    dataset = args.get('dataset') or ''
    if not isinstance(data_dir, str) or not isinstance(dataset, str) or dataset.lower() not in _FOLDER_DATASETS:
        return None
    split = args.get('train_split') or 'train'
    for root in (Path(data_dir) / str(split), Path(data_dir)):
        if root.is_dir():
            names = sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key)
            if names:
                return names, str(root)
    return None

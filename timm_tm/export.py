"""``timm-tm export``: a timm train.py checkpoint -> a Hub-ready folder (model.safetensors, config.json, README.md).

::

    timm-tm export output/train/RUN/model_best.pth.tar --model tm_resnet50 --summary output/train/RUN/summary.csv \\
        --out tm_resnet50.my_data

The folder is what timm itself writes with ``save_for_hf`` (``model.safetensors``, ``config.json``) plus the model
card (``README.md``, see :mod:`timm_tm.model_card`); ``config.json`` also records the SHA-256 of the weights
(``weights_sha256``), which the tm_* loaders check (:mod:`timm_tm.pretrained`). It loads back with
``timm.create_model('local-dir:FOLDER', pretrained=True)`` and, once uploaded with ``timm-tm push``
(:mod:`timm_tm.push`), ``'hf-hub:ORG/NAME'``.

:func:`export_request` runs the steps in order: check the request and ``--out``; read the checkpoint; resolve what
it is exported as (architecture, name, classes) and build the model; read what the run recorded (class names,
summary.csv, preprocessing); write the folder beside ``--out`` under a temporary name; check that it reloads with
the checkpoint's logits; write the card; move the folder into place.
"""

import argparse
import ast
import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import save_for_hf, split_model_name_tag

from timm_tm import __version__, model_card
from timm_tm.checkpoints import (
    CheckpointError,
    data_args_from_args,
    label_names_from_args,
    model_kwargs_from_args,
    num_classes_from,
    read_checkpoint,
    read_label_names_file,
)
from timm_tm.cli import command_parser, one_line, report_error
from timm_tm.files import PathLike, make_shareable
from timm_tm.layers import TemplateMatching
from timm_tm.pretrained import (
    HUB_NAMESPACE,
    TM_WEIGHTS,
    WEIGHTS_NAME,
    WeightsFileError,
    hub_name_problem,
    repo_id_problem,
    sha256_file,
    tm_hub_id,
)
from timm_tm.profiling import profile_model

__all__ = ['EXPORT_FILES', 'ExportError', 'ExportRequest', 'parse_model_kwargs', 'export', 'export_request', 'main']

# the card's words for weights exported with --untrained-templates (a checkpoint without TM weights)
UNTRAINED_TM = (
    '**The TM blocks are untrained**: the checkpoint had no TM weights (a model without TM blocks), so the templates '
    "are random and the blocks at identity; the predictions are the backbone's, and the class maps mean nothing "
    'until the model is trained.'
)
# what an export writes, and so all that `--force` may replace and `push` may upload
EXPORT_FILES: Tuple[str, ...] = ('README.md', 'config.json', WEIGHTS_NAME)
# the export's temporary folders (<out>.partial while written, <out>.old while swapped) are named after the
# process that made them, so that a later export can tell an abandoned one (SIGKILL) from one still running
_WORK_TAG = 'timm-tm-export'


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the file, argument or keys at fault."""


class _Terminated(BaseException):
    """SIGTERM, raised where the export is, so that it unwinds (and removes its partial folder) as Ctrl-C does."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export and how: the arguments of :func:`export` (and of ``timm-tm export``)."""

    checkpoint: PathLike  # a train.py checkpoint, a bare state_dict or .safetensors
    out: PathLike  # the folder to write
    model: Optional[str] = None
    name: Optional[str] = None
    repo_id: Optional[str] = None
    num_classes: Optional[int] = None
    use_ema: bool = False
    summary: Optional[PathLike] = None  # the run's summary.csv
    label_names: Optional[PathLike] = None  # a class names file
    model_kwargs: Optional[Dict[str, Any]] = None
    dataset: Optional[str] = None
    card: Optional[PathLike] = None  # a model card template
    force: bool = False
    run_label_names: bool = False  # read class names from the run's class map / folders the checkpoint's args name
    untrained_templates: bool = False  # export a checkpoint without TM weights (a plain ResNet's) with fresh TM blocks

    def inputs(self) -> Dict[str, Any]:
        """The files the export reads, by the flag that names them (None: not given)."""
        return {
            'checkpoint': self.checkpoint,
            '--summary': self.summary,
            '--label-names': self.label_names,
            '--card': self.card,
        }

    def argument_problem(self) -> Optional[str]:
        """What is wrong with the arguments themselves (before any file is read), in one line; None if nothing."""
        names = (('--name', self.name, hub_name_problem), ('--repo', self.repo_id, repo_id_problem))
        for flag, value, problem_of in names:
            problem = problem_of(value) if value is not None else None
            if problem:
                return f'{flag} {value!r}: not a valid Hugging Face Hub name: {problem}'
        if self.num_classes is not None and self.num_classes < 1:
            return f'--num-classes {self.num_classes}: must be >= 1'
        if self.dataset is not None and (not self.dataset.strip() or not self.dataset.isprintable()):
            return f'--dataset {self.dataset!r}: must be a non-empty name on one line'
        return None


@dataclass(frozen=True)
class _Target:
    """What the checkpoint is exported as."""

    model_name: str  # the timm architecture
    name: str  # the weights' name, MODEL or MODEL.TAG
    repo_id: str  # the Hub repo the card's snippets load from
    num_classes: int
    kwargs: Dict[str, Any]  # model kwargs besides num_classes
    untrained_tm: bool = False  # the model's TM blocks are fresh: the checkpoint has no TM weights


@dataclass(frozen=True)
class _RunRecord:
    """What the training run recorded besides the weights, for config.json and the card."""

    args: Dict[str, Any]  # train.py's arguments ({} for a bare state_dict)
    epoch: Optional[int]  # the epoch the weights are from
    label_names: Optional[List[str]]
    label_names_from: Optional[str]  # where the class names were found
    metrics: Optional[Dict[str, Any]]  # top1, top5, loss, epoch of summary.csv
    data_config: Dict[str, Any]  # the preprocessing args the run set
    dataset: str


class _WrittenFolder(NamedTuple):
    sha256: str  # of model.safetensors
    input_size: Tuple[int, int, int]  # of the pretrained_cfg in config.json


# ------------------------------------------------------------------------------------------------- the arguments


def parse_model_kwargs(values: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``key=value`` pairs (values read as Python literals, else strings), as train.py's --model-kwargs."""
    kw = {}
    for item in values or ():
        key, sep, value = item.partition('=')
        if not sep or not key.isidentifier():
            raise ExportError(f'--model-kwargs: expected key=value with a Python name as key, got {item!r}')
        try:
            kw[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            kw[key] = value
    return kw


def _check_out(out: PathLike, force: bool, inputs: Dict[str, Any]) -> Path:
    """``out`` as an absolute path, once it is clear that writing it loses nothing: it is none of the export's
    inputs, nor holds one, nor holds the working directory; and if it exists, ``force`` is given and it is empty or
    a previous export (only files an export writes, and the config.json it writes)."""
    out = Path(os.path.abspath(out))
    if out.parent == out:
        raise ExportError(f'--out {out}: a file system root cannot be an export folder')
    real = out.resolve()
    for flag, value in inputs.items():
        if value is None:
            continue
        src = Path(value).resolve()
        if src == real or real in src.parents:
            raise ExportError(
                f"--out {out}: holds the export's own input ({flag} {value}); export to a new folder instead"
            )
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ExportError(f'--out {out}: is the current directory or one above it; export to a new folder instead')
    if out.is_symlink():
        raise ExportError(f'--out {out}: is a symbolic link; give the folder itself')
    if not out.exists():
        return out
    if not out.is_dir():
        raise ExportError(f'--out {out} exists and is not a folder')
    _check_previous_export(out)
    if not force:
        raise ExportError(f'--out {out} exists: pass --force to replace it')
    return out


def _check_previous_export(out: Path) -> None:
    """Refuse an existing ``out`` that is not empty nor a previous export: replacing it would lose files."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES or p.is_symlink() or not p.is_file())
    if foreign:
        shown = ', '.join(foreign[:8]) + (f' and {len(foreign) - 8} more' if len(foreign) > 8 else '')
        raise ExportError(
            f'--out {out} exists and holds {shown}, which an export does not write: it is not a previous export, and '
            '--force only replaces one; export to a new folder instead'
        )
    if any(out.iterdir()) and not _is_export_config(out / 'config.json'):
        raise ExportError(
            f'--out {out} exists and its config.json (if any) has no weights_sha256: it was not written by timm-tm '
            'export, and --force only replaces an export; export to a new folder instead'
        )


def _is_export_config(path: Path) -> bool:
    """True when ``path`` is the config.json of a timm-tm export (the only writer of ``weights_sha256``)."""
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get('weights_sha256'), dict)


# ------------------------------------------------------------------------------------- what is exported, and how


def _resolve_target(request: ExportRequest, state_dict: Dict[str, Any], meta: Dict[str, Any]) -> _Target:
    """The architecture, name and Hub repo (from the request, else the checkpoint), classes and model kwargs."""
    args = meta['args']
    requested = request.model or args.get('model') or meta.get('arch')
    if not isinstance(requested, str) or not timm.is_model(requested):
        raise ExportError(f'--model: unknown model {requested!r} (checkpoint arch {meta.get("arch")!r})')
    # the architecture: a run started from a tag (--model tm_resnet50d.ra2_in1k) has weights of its own, not the tag's
    model_name = split_model_name_tag(requested)[0]
    trained_as = split_model_name_tag(args['model'])[0] if isinstance(args.get('model'), str) else None
    if trained_as and trained_as != model_name:
        print(f'timm-tm export: note: {request.checkpoint} was trained as {args["model"]}, exporting as {model_name}')
    name = request.name or model_name
    if name.split('.')[0] != model_name:
        raise ExportError(f'--name {name}: must be {model_name} or {model_name}.<tag>')
    problem = hub_name_problem(name)
    if problem:
        raise ExportError(f'--name {name!r}: not a valid Hugging Face Hub name: {problem}')
    repo_id = request.repo_id or tm_hub_id(name)
    problem = repo_id_problem(repo_id)
    if problem:
        raise ExportError(f'--repo {repo_id!r} (default {HUB_NAMESPACE}/NAME): not a valid Hub repo id: {problem}')
    num_classes, kwargs = _classes_and_kwargs(request, args, state_dict, model_name)
    if name in TM_WEIGHTS and request.untrained_templates:
        raise ExportError(
            f'--name {name}: that tag holds TM-trained weights; untrained templates go under another name'
        )
    if name in TM_WEIGHTS:
        tag_classes = TM_WEIGHTS[name].num_classes
        extra = {k: v for k, v in kwargs.items() if not (k == 'in_chans' and v == 3)}
        if num_classes != tag_classes or extra:
            raise ExportError(
                f'--name {name}: that tag loads into the default {model_name}(num_classes={tag_classes}); these '
                f'weights need num_classes={num_classes}, {extra}: export them under another --name'
            )
    return _Target(model_name, name, repo_id, num_classes, kwargs, untrained_tm=request.untrained_templates)


def _classes_and_kwargs(
    request: ExportRequest, args: Dict[str, Any], state_dict: Dict[str, Any], model_name: str
) -> Tuple[int, Dict[str, Any]]:
    """(classes of the head, the other model kwargs): the request's, else the run's, else the head's rows."""
    source = str(request.checkpoint)
    kwargs = model_kwargs_from_args(args, source)
    kwargs.update(request.model_kwargs or {})
    num_classes = request.num_classes if request.num_classes is not None else kwargs.get('num_classes')
    kwargs.pop('num_classes', None)
    if num_classes is None:
        num_classes = num_classes_from(args, state_dict, source, model_name)
    if num_classes is None:
        raise ExportError(f'{request.checkpoint}: cannot tell the number of classes: pass --num-classes')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ExportError(f'--model-kwargs num_classes={num_classes!r}: must be an int >= 1')
    return num_classes, kwargs


def _build_model(
    target: _Target, state_dict: Dict[str, Any], checkpoint: PathLike, weights_key: Optional[str]
) -> nn.Module:
    """``target``'s model holding ``state_dict`` (the entry ``weights_key`` of ``checkpoint``), in eval mode.

    A checkpoint without TM weights (a plain ResNet's, which a tm model loads with fresh TM blocks) is refused unless
    ``target.untrained_tm`` says the user asked for it: the card would otherwise present random templates.
    """
    # the source tag's provenance (hf_hub_id, tag, notes) does not describe the exported weights
    tag = target.name.split('.', 1)[1] if '.' in target.name else None
    overlay = dict(tag=tag, notes=None, origin_url=None, hf_hub_id=None, url=None)
    try:
        net = timm.create_model(
            target.model_name,
            pretrained=False,
            num_classes=target.num_classes,
            pretrained_cfg_overlay=overlay,
            **target.kwargs,
        )
    except Exception as e:  # a kwarg the model does not take, a bad value: whatever the constructor raised
        msg = ' '.join(str(e).split()) or type(e).__name__
        raise ExportError(
            f'cannot build {target.model_name} with kwargs {target.kwargs} (from --model-kwargs and the args of '
            f'{checkpoint}): {msg}'
        ) from e
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as e:  # torch's page of keys, on one line
        raise ExportError(
            f'{checkpoint} ({weights_key or "state_dict"}) does not fit {target.model_name}: {one_line(e)}'
        ) from e
    blocks = [n for n, m in net.named_modules() if isinstance(m, TemplateMatching)]
    if blocks and not any(k.startswith(tuple(f'{n}.' for n in blocks)) for k in state_dict):
        if not target.untrained_tm:
            raise ExportError(
                f'{checkpoint} has no weights for the TM blocks of {target.model_name} ({", ".join(blocks)}): it is '
                'a model without TM blocks (a plain ResNet), and the export would hold untrained templates; pass '
                '--untrained-templates to export it so (the card says so), or export the model it was trained as'
            )
        print(f'timm-tm export: note: {checkpoint} has no TM weights: the TM blocks are fresh (untrained templates)')
    elif target.untrained_tm:
        raise ExportError(f'--untrained-templates: {checkpoint} holds trained TM blocks; leave the flag out')
    return net.eval()


def _read_run_record(request: ExportRequest, target: _Target, meta: Dict[str, Any]) -> _RunRecord:
    """Class names, summary.csv metrics, preprocessing and dataset of the run, from the request and ``meta``."""
    args = meta['args']
    label_names, label_names_from = _label_names(request, target.num_classes, meta)
    metrics = _summary_metrics(Path(request.summary), meta.get('epoch')) if request.summary else None
    if metrics and args.get('model_ema') and not request.use_ema:
        print(
            "timm-tm export: warning: the run used --model-ema, so summary.csv holds the EMA model's eval metrics; "
            'pass --use-ema to export the weights they describe'
        )
    return _RunRecord(
        args=args,
        epoch=meta.get('epoch'),
        label_names=label_names,
        label_names_from=label_names_from,
        metrics=metrics,
        data_config=data_args_from_args(args, str(request.checkpoint)),
        dataset=request.dataset or _dataset_name(target.name, args),
    )


def _label_names(
    request: ExportRequest, num_classes: int, meta: Dict[str, Any]
) -> Tuple[Optional[List[str]], Optional[str]]:
    """(class names, where from): ``--label-names``, else the checkpoint's own, else (``--run-label-names``) the
    run's class map or folders.

    The run's are read only when asked: a checkpoint is not a trusted input, and its args may name any file or
    folder, whose lines or names would go into config.json and so to the Hub.
    """
    if request.label_names:
        names = read_label_names_file(request.label_names, '--label-names')
        if len(names) != num_classes:
            raise ExportError(
                f'--label-names: {request.label_names} names {len(names)} classes, the model has {num_classes}'
            )
        return names, str(request.label_names)
    if meta.get('label_names') and len(meta['label_names']) == num_classes:
        return meta['label_names'], f'{request.checkpoint} (label_names)'
    if not request.run_label_names:
        named = [str(meta['args'][k]) for k in ('class_map', 'data_dir', 'data') if meta['args'].get(k)]
        if named:
            print(
                f'timm-tm export: note: no class names exported; the run names {", ".join(named)}: pass '
                '--run-label-names to read them from there, or --label-names FILE'
            )
        return None, None
    found = label_names_from_args(meta['args'])
    if not found:
        raise ExportError(
            f"--run-label-names: {request.checkpoint}: the run's class map or class folders are not found"
        )
    if len(found[0]) != num_classes:
        raise ExportError(f'--run-label-names: {found[1]} names {len(found[0])} classes, the model has {num_classes}')
    return found


def _summary_metrics(path: Path, epoch: Optional[int]) -> Dict[str, Any]:
    """The row of train.py's summary.csv for ``epoch`` (else the best eval_top1): top-1, top-5, loss, epoch."""
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ExportError(f'--summary: cannot read {path} as a CSV file: {e}') from e

    def num(row: Dict[str, Any], key: str) -> Optional[float]:
        v = row.get(key)
        if v in (None, ''):
            return None
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x):
            raise ExportError(f'--summary: {path}: {key} is {v!r} at epoch {row.get("epoch")!r}, not a number')
        return x

    rows = [r for r in rows if r.get('eval_top1') not in (None, '')]
    if not rows:
        raise ExportError(f'--summary: {path} has no eval_top1 column or rows (was the run evaluated?)')
    top1 = [num(r, 'eval_top1') for r in rows]  # every row checked: the best one is picked among them
    row = next((r for r in rows if epoch is not None and r.get('epoch') == str(epoch)), None)
    if row is None:
        row = rows[max(range(len(rows)), key=lambda i: top1[i])]
    return {
        'top1': num(row, 'eval_top1'),
        'top5': num(row, 'eval_top5'),
        'loss': num(row, 'eval_loss'),
        'epoch': row.get('epoch'),
    }


def _dataset_name(name: str, args: Dict[str, Any]) -> str:
    if name in TM_WEIGHTS:
        return TM_WEIGHTS[name].dataset
    dataset = args.get('dataset') or ''
    if isinstance(dataset, str) and dataset.split('/')[-1].isprintable() and dataset.split('/')[-1]:
        return dataset.split('/')[-1]
    data_dir = args.get('data_dir') or args.get('data')
    if isinstance(data_dir, str) and Path(data_dir).name and Path(data_dir).name.isprintable():
        return Path(data_dir).name
    return 'unknown'


# ------------------------------------------------------------------------------------------------ the folder


def _write_hub_folder(net: nn.Module, folder: Path, record: _RunRecord) -> _WrittenFolder:
    """timm's ``save_for_hf`` files in ``folder``, config.json recording the weights' SHA-256."""
    model_config = {'label_names': record.label_names} if record.label_names else None
    save_for_hf(net, folder, model_config=model_config, safe_serialization=True, data_config=record.data_config)
    sha = sha256_file(folder / WEIGHTS_NAME)
    config_path = folder / 'config.json'
    config = json.loads(config_path.read_text(encoding='utf-8'))
    config['weights_sha256'] = {WEIGHTS_NAME: sha}
    config_path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
    return _WrittenFolder(sha, tuple(config['pretrained_cfg']['input_size']))


def _check_reload(folder: Path, net: nn.Module, input_size: Tuple[int, int, int]) -> None:
    """The folder must give back the checkpoint's model: the same logits through timm's own local-dir: loader."""
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn((2, *input_size), generator=torch.Generator().manual_seed(0))  # B x C x H x W
    with torch.no_grad():
        if not torch.equal(reloaded(x), net(x)):
            raise ExportError(f"{folder}: the exported folder does not reproduce the checkpoint's logits")


def _write_card(
    folder: Path, request: ExportRequest, target: _Target, record: _RunRecord, net: nn.Module, written: _WrittenFolder
) -> None:
    """README.md: the card template (``--card``, else ``model_cards/NAME.md``, else the default) filled in."""
    stats = profile_model(net, written.input_size)
    image_size = written.input_size[1:]
    split = record.args.get('val_split') or 'validation'
    initial, initial_hub = model_card.initial_weights(record.args)
    fields = {
        'model_name': target.name,
        'repo_id': target.repo_id,
        'architecture': target.model_name,
        'license': net.pretrained_cfg.get('license') or 'apache-2.0',
        'datasets_yaml': f'- {json.dumps(record.dataset)}',  # a JSON string is a YAML scalar whatever the name holds
        'dataset': record.dataset,
        'description': _description(target, record),
        'num_classes': str(target.num_classes),
        'params_m': f'{stats["params_m"]:.2f}',
        'gmacs': f'{stats["gmacs"]:.3f}',
        'activations_m': f'{stats["activations_m"]:.2f}',
        'image_size': f'{image_size[0]} x {image_size[1]}',
        'base_model': model_card.base_model_text(target.model_name),
        'initial_weights': initial,
        'base_model_yaml': f'base_model: {json.dumps(initial_hub)}' if initial_hub else '',
        'tm_block': model_card.tm_block_text(net),
        'tm_details': (UNTRAINED_TM + ' ' if target.untrained_tm else '') + model_card.tm_details(net),
        'training': model_card.training_text(record.args, record.epoch, request.use_ema),
        'metrics': model_card.metrics_text(
            target.name, record.metrics, stats, image_size, record.dataset, split, request.use_ema
        ),
        'weights_sha256': written.sha256,
        'timm_version': timm.__version__,
        'timm_tm_version': __version__,
    }
    template_path = model_card.find_card_template(target.name, request.card)
    template = template_path.read_text(encoding='utf-8') if template_path else None
    source = str(template_path or 'timm_tm.model_card.DEFAULT_CARD')
    readme = model_card.render_card(fields, template, source=source)
    (folder / 'README.md').write_text(readme, encoding='utf-8')


def _description(target: _Target, record: _RunRecord) -> str:
    """The card's opening paragraph: the tag's recipe, else the dataset (with a warning when it is not known)."""
    if target.name in TM_WEIGHTS:
        description = f'{TM_WEIGHTS[target.name].recipe}.'
    elif record.dataset == 'unknown':
        description = (
            f'{target.model_name} weights; the checkpoint does not record its dataset (export with --dataset).'
        )
        print('timm-tm export: warning: no dataset recorded in the checkpoint: pass --dataset NAME for the card')
    else:
        description = f'{target.model_name} weights trained on {record.dataset}.'
    if target.untrained_tm:
        description += f' {UNTRAINED_TM}'
    if record.label_names:
        description += f' Class names ({target.num_classes}) are in `config.json` (`label_names`).'
    return description


def _work_prefix(out: Path, pid: Optional[int] = None) -> str:
    """Name prefix of the temporary folders an export of ``out`` makes beside it (hidden, tagged with the host and
    process that made them)."""
    pid = os.getpid() if pid is None else pid
    return f'.{out.name}.{_WORK_TAG}.{socket.gethostname()}.{pid}.'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or no way to tell: keep its folder
    return True


def _holds_only_export_files(folder: Path) -> bool:
    """True when ``folder`` holds nothing but regular files an export writes (no links, no folders)."""
    try:
        return all(p.name in EXPORT_FILES and p.is_file() and not p.is_symlink() for p in folder.iterdir())
    except OSError:
        return False


def _remove_abandoned_work(out: Path) -> None:
    """Remove the temporary folders of exports of ``out`` whose process is gone (killed with SIGKILL, or the machine
    went down): a ``.partial`` folder holds a loadable config.json + model.safetensors that nothing should mistake
    for an export. Only folders this host's exports made, holding only export files, are removed."""
    head = f'.{out.name}.{_WORK_TAG}.{socket.gethostname()}.'
    pattern = re.compile(re.escape(head) + r'(\d+)\.[a-z0-9_]+\.(partial|old)')
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir() or _pid_alive(int(m.group(1))):
            continue
        if m.group(2) == 'partial':
            removable = _holds_only_export_files(p)
        else:  # <prefix>.old/export: the previous export, taken out of the way of the new one
            children = list(p.iterdir())
            removable = all(c.name == 'export' and c.is_dir() and not c.is_symlink() for c in children) and all(
                _holds_only_export_files(c) for c in children
            )
        if removable:
            shutil.rmtree(p, ignore_errors=True)
            print(f'timm-tm export: removed {p}, left by an export of {out} that was killed')


def _make_work_folder(out: Path) -> Path:
    """A new, empty folder beside ``out`` to write the export in (after removing killed exports' leftovers)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(out)
    work = Path(tempfile.mkdtemp(prefix=_work_prefix(out), suffix='.partial', dir=out.parent))
    make_shareable(work)
    return work


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``; an existing ``out`` (a previous export) is swapped out, then
    removed. On failure, ``out`` is left as it was."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=_work_prefix(out), suffix='.old', dir=out.parent))
    try:
        os.rename(out, old / 'export')
    except BaseException:
        old.rmdir()
        raise
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / 'export', out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ export


def export(
    checkpoint: PathLike,
    out: PathLike,
    model: Optional[str] = None,
    name: Optional[str] = None,
    repo_id: Optional[str] = None,
    num_classes: Optional[int] = None,
    use_ema: bool = False,
    summary: Optional[PathLike] = None,
    label_names: Optional[PathLike] = None,
    model_kwargs: Optional[Dict[str, Any]] = None,
    dataset: Optional[str] = None,
    card: Optional[PathLike] = None,
    force: bool = False,
    run_label_names: bool = False,
    untrained_templates: bool = False,
) -> Path:
    """Write ``out`` (model.safetensors, config.json, README.md) from a train.py ``checkpoint``; returns ``out``.

    The arguments are those of ``timm-tm export`` (see :class:`ExportRequest` and :func:`export_request`).
    """
    request = ExportRequest(
        checkpoint=checkpoint,
        out=out,
        model=model,
        name=name,
        repo_id=repo_id,
        num_classes=num_classes,
        use_ema=use_ema,
        summary=summary,
        label_names=label_names,
        model_kwargs=model_kwargs,
        dataset=dataset,
        card=card,
        force=force,
        run_label_names=run_label_names,
        untrained_templates=untrained_templates,
    )
    return export_request(request)


def export_request(request: ExportRequest) -> Path:
    """Run the export ``request``; returns the folder written.

    The folder is written beside ``out`` under a temporary name, checked (``local-dir:`` reload gives the same
    logits as the checkpoint), then renamed: an interrupted export leaves no half folder (one killed outright leaves
    a hidden ``.partial`` folder, removed by the next export of ``out``). ``force`` replaces an existing ``out``
    only when it is empty or a previous export (nothing but ``EXPORT_FILES``, with the config.json an export
    writes) and none of the inputs is in it.
    """
    out = _check_out(request.out, request.force, request.inputs())
    problem = request.argument_problem()
    if problem:
        raise ExportError(problem)
    state_dict, meta = read_checkpoint(request.checkpoint, use_ema=request.use_ema)
    target = _resolve_target(request, state_dict, meta)
    net = _build_model(target, state_dict, request.checkpoint, meta['key'])
    record = _read_run_record(request, target, meta)

    work = _make_work_folder(out)
    try:
        written = _write_hub_folder(net, work, record)
        _check_reload(work, net, written.input_size)
        _write_card(work, request, target, record, net, written)
        for p in work.iterdir():  # safetensors writes 0600; a published folder is world-readable like timm's
            make_shareable(p)
        if record.label_names_from and not request.label_names:
            print(f'timm-tm export: label names from {record.label_names_from} (in config.json: push uploads them)')
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------------- CLI


def _raise_terminated(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM (kill, a job scheduler's time limit) raises ``_Terminated`` where the export is, so that
    it unwinds like Ctrl-C and removes its partial folder. Only the main thread receives signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        'export',
        'Turn a timm train.py checkpoint into a Hub-ready folder: model.safetensors, config.json '
        '(timm save_for_hf) and README.md (the model card, with measured numbers).',
    )
    parser.add_argument('checkpoint', help='model_best.pth.tar / checkpoint-N.pth.tar of train.py, or .safetensors')
    parser.add_argument('--out', required=True, help='folder to write (refused if it exists, unless --force)')
    parser.add_argument('--model', help='architecture, e.g. tm_resnet50 (default: the one the checkpoint records)')
    parser.add_argument('--name', help='name of the weights, MODEL or MODEL.TAG (default: MODEL)')
    parser.add_argument(
        '--repo',
        dest='repo_id',  # the parser's names are ExportRequest's
        metavar='REPO',
        help=f"Hub repo the card's snippets load from (default: {HUB_NAMESPACE}/NAME)",
    )
    parser.add_argument('--num-classes', type=int, help='classes of the head (default: from the checkpoint)')
    parser.add_argument('--use-ema', action='store_true', help='export the EMA weights (state_dict_ema)')
    parser.add_argument('--summary', help="the run's summary.csv: top-1 / top-5 for the card")
    parser.add_argument('--label-names', help='class names: a text file (one per line) or a JSON list / dict')
    parser.add_argument(
        '--run-label-names',
        action='store_true',
        help="class names from the run's --class-map file or train class folders, at the paths its args record "
        '(printed); without it, only --label-names or names stored in the checkpoint are exported',
    )
    parser.add_argument(
        '--untrained-templates',
        action='store_true',
        help='export a checkpoint that has no TM weights (a plain ResNet) with fresh, untrained TM blocks',
    )
    parser.add_argument('--dataset', help='dataset name for the card (default: from the checkpoint args)')
    parser.add_argument('--model-kwargs', nargs='*', default=None, metavar='KEY=VALUE', help='as train.py')
    parser.add_argument('--card', help='model card template (default: model_cards/NAME.md, else the packaged one)')
    parser.add_argument('--force', action='store_true', help='replace an existing --out folder')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        request = ExportRequest(**dict(vars(ns), model_kwargs=parse_model_kwargs(ns.model_kwargs)))
    except ExportError as e:
        parser.error(str(e))
    problem = request.argument_problem()
    if problem:
        parser.error(problem)
    try:
        with _sigterm_unwinds():
            out = export_request(request)
    except _Terminated:
        return 128 + signal.SIGTERM
    except (ExportError, CheckpointError, WeightsFileError, OSError, ValueError, RuntimeError) as e:
        return report_error('export', e)
    files = ', '.join(f'{p.name} ({p.stat().st_size:,} B)' for p in sorted(out.iterdir()))
    print(f'exported {out}: {files}')
    return 0

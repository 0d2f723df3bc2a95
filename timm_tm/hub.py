"""Export a timm train.py checkpoint to a Hub-ready folder, and publish it: ``timm-tm export`` / ``timm-tm push``.

::

    timm-tm export output/train/RUN/model_best.pth.tar --model tm_resnet50 --summary output/train/RUN/summary.csv \\
        --out tm_resnet50.my_data
    timm-tm push tm_resnet50.my_data --repo ORG/tm_resnet50.my_data [--dry-run]

The exported folder is what timm itself writes with ``save_for_hf`` (``model.safetensors``, ``config.json``) plus
the model card (``README.md``, see :mod:`timm_tm.model_card`); ``config.json`` also records the SHA-256 of the
weights (``weights_sha256``), which the tm_* loaders check (:mod:`timm_tm.pretrained`). It loads back with
``timm.create_model('local-dir:FOLDER', pretrained=True)`` and, once pushed, ``'hf-hub:ORG/NAME'``.
"""

import argparse
import ast
import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_tm.checkpoints import (
    CheckpointError,
    data_args_from_args,
    label_names_from_args,
    model_kwargs_from_args,
    num_classes_from,
    read_checkpoint,
    read_label_names_file,
)
from timm_tm.pretrained import (
    HUB_NAMESPACE,
    TM_WEIGHTS,
    WEIGHTS_NAME,
    WeightsFileError,
    sha256_file,
    tm_hub_id,
    verify_weights_file,
)

__all__ = [
    'HUB_NAMESPACE',
    'EXPORT_FILES',
    'ExportError',
    'PushError',
    'load_checkpoint_file',
    'hub_name_problem',
    'export',
    'push',
    'export_main',
    'push_main',
]

# what an export writes, and so all that `--force` may replace and `push` may upload
EXPORT_FILES: Tuple[str, ...] = ('README.md', 'config.json', WEIGHTS_NAME)
# a Hub repo / user / org name: ASCII letters, digits, '_', '-', '.', not starting or ending with '-' or '.'
_HUB_NAME_RE = re.compile(r'[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?')
# the export's temporary folders (<out>.partial while written, <out>.old while swapped) are named after the
# process that made them, so that a later export can tell an abandoned one (SIGKILL) from one still running
_WORK_TAG = 'timm-tm-export'


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the file, argument or keys at fault."""


class PushError(RuntimeError):
    """An upload that cannot be done or was refused; a one-line message (never contains the token)."""


# --------------------------------------------------------------------------------------------------------- export


# train.py checkpoints are read in one place, shared with `timm-tm visualize` (timm_tm.checkpoints)
load_checkpoint_file = read_checkpoint


def hub_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` is not a valid Hub repo (or user / org) name, as the Hub's rules go; None when it is."""
    if not isinstance(name, str) or not name:
        return 'empty'
    if not _HUB_NAME_RE.fullmatch(name):
        return (
            "use only ASCII letters, digits, '_', '-' and '.', not starting or ending with '-' or '.', at most 96 "
            'characters'
        )
    if '--' in name or '..' in name:
        return "'--' and '..' are not allowed"
    if name.endswith('.git'):
        return "it may not end with '.git'"
    return None


def _repo_id_problem(repo_id: Any) -> Optional[str]:
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        return 'expected ORG/NAME'
    for part in repo_id.split('/'):
        problem = hub_name_problem(part)
        if problem:
            return f'{part!r}: {problem}'
    return None


def _read_label_names(path: Path, num_classes: int) -> List[str]:
    names = read_label_names_file(path, '--label-names')
    if len(names) != num_classes:
        raise ExportError(f'--label-names: {path} names {len(names)} classes, the model has {num_classes}')
    return names


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


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return 'n/a' if x is None else f'{x:.{digits}f}'


def _training_text(args: Dict[str, Any], meta: Dict[str, Any], use_ema: bool) -> str:
    if not args:
        return 'not recorded in the checkpoint (a bare state_dict)'
    parts = []
    if args.get('epochs') is not None:
        done = meta.get('epoch')
        epochs = args['epochs']
        parts.append(
            f'{epochs} epoch{"s" if epochs != 1 else ""}' + (f' (weights of epoch {done})' if done is not None else '')
        )
    if args.get('opt'):
        parts.append(f'optimizer {args["opt"]}, lr {args.get("lr")}, weight decay {args.get("weight_decay")}')
    if args.get('sched'):
        parts.append(f'{args["sched"]} schedule')
    if args.get('batch_size'):
        parts.append(f'batch size {args["batch_size"]}')
    aug = [f'{k} {args[k]}' for k in ('mixup', 'cutmix', 'smoothing', 'aa') if args.get(k)]
    if aug:
        parts.append(', '.join(aug))
    if args.get('amp'):
        parts.append(f'AMP ({args.get("amp_dtype", "float16")})')
    parts.append('EMA weights' if use_ema else 'model weights (not EMA)')
    return 'timm train.py: ' + '; '.join(parts)


def _tm_details(model) -> str:
    blocks = model.tm_blocks() if hasattr(model, 'tm_blocks') else {}
    if not blocks:
        return 'no TM blocks (the TM-free baseline, tm_stages=())'
    first = next(iter(blocks.values()))
    return (
        f'blocks after {", ".join(blocks)}; {first.templates_per_class} template(s) per class, '
        f'{first.num_classes} classes, {first.evidence_pool} class pooling; class evidence added to the logits'
    )


def _parse_model_kwargs(values: Optional[Sequence[str]]) -> Dict[str, Any]:
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


def _check_out(out, force: bool, inputs: Dict[str, Any]) -> Path:
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
    if not force:
        raise ExportError(f'--out {out} exists: pass --force to replace it')
    return out


def _is_export_config(path: Path) -> bool:
    """True when ``path`` is the config.json of a timm-tm export (the only writer of ``weights_sha256``)."""
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get('weights_sha256'), dict)


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


def export(
    checkpoint,
    out,
    model: Optional[str] = None,
    name: Optional[str] = None,
    repo_id: Optional[str] = None,
    num_classes: Optional[int] = None,
    use_ema: bool = False,
    summary=None,
    label_names=None,
    model_kwargs: Optional[Dict[str, Any]] = None,
    dataset: Optional[str] = None,
    card=None,
    force: bool = False,
) -> Path:
    """Write ``out`` (model.safetensors, config.json, README.md) from a train.py ``checkpoint``; returns ``out``.

    The folder is written beside ``out`` under a temporary name, checked (``local-dir:`` reload gives the same
    logits as the checkpoint), then renamed: an interrupted export leaves no half folder (one killed outright leaves
    a hidden ``.partial`` folder, removed by the next export of ``out``). ``force`` replaces an existing ``out``
    only when it is empty or a previous export (nothing but ``EXPORT_FILES``, with the config.json an export
    writes) and none of the inputs is in it.
    """
    import timm
    import torch
    from timm.models._hub import save_for_hf

    import timm_tm
    from timm_tm.model_card import find_card_template, render_card
    from timm_tm.profiling import profile_model

    inputs = {'checkpoint': checkpoint, '--summary': summary, '--label-names': label_names, '--card': card}
    out = _check_out(out, force, inputs)
    for flag, value in (('--name', name), ('--repo', repo_id)):
        if value is not None:
            problem = (hub_name_problem if flag == '--name' else _repo_id_problem)(value)
            if problem:
                raise ExportError(f'{flag} {value!r}: not a valid Hugging Face Hub name: {problem}')
    if num_classes is not None and num_classes < 1:
        raise ExportError(f'--num-classes {num_classes}: must be >= 1')
    if dataset is not None and (not dataset.strip() or not dataset.isprintable()):
        raise ExportError(f'--dataset {dataset!r}: must be a non-empty name on one line')

    state_dict, meta = read_checkpoint(checkpoint, use_ema=use_ema)
    args = meta['args']
    model_name = model or args.get('model') or meta.get('arch')
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        raise ExportError(f'--model: unknown model {model_name!r} (checkpoint arch {meta.get("arch")!r})')
    if args.get('model') and args['model'] != model_name:
        print(f'timm-tm export: note: {checkpoint} was trained as {args["model"]}, exporting as {model_name}')
    name = name or model_name
    if name.split('.')[0] != model_name:
        raise ExportError(f'--name {name}: must be {model_name} or {model_name}.<tag>')
    problem = hub_name_problem(name)
    if problem:
        raise ExportError(f'--name {name!r}: not a valid Hugging Face Hub name: {problem}')
    repo_id = repo_id or tm_hub_id(name)
    problem = _repo_id_problem(repo_id)
    if problem:
        raise ExportError(f'--repo {repo_id!r} (default {HUB_NAMESPACE}/NAME): not a valid Hub repo id: {problem}')

    kwargs = model_kwargs_from_args(args, str(checkpoint))
    kwargs.update(model_kwargs or {})
    if num_classes is None:
        num_classes = kwargs.get('num_classes')
    kwargs.pop('num_classes', None)
    if num_classes is None:
        num_classes = num_classes_from(args, state_dict, str(checkpoint))
    if num_classes is None:
        raise ExportError(f'{checkpoint}: cannot tell the number of classes: pass --num-classes')
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ExportError(f'--model-kwargs num_classes={num_classes!r}: must be an int >= 1')
    if name in TM_WEIGHTS:
        tag_classes = TM_WEIGHTS[name]['num_classes']
        extra = {k: v for k, v in kwargs.items() if not (k == 'in_chans' and v == 3)}
        if num_classes != tag_classes or extra:
            raise ExportError(
                f'--name {name}: that tag loads into the default {model_name}(num_classes={tag_classes}); these '
                f'weights need num_classes={num_classes}, {extra}: export them under another --name'
            )

    # the source tag's provenance (hf_hub_id, tag, notes) does not describe the exported weights
    tag = name.split('.', 1)[1] if '.' in name else None
    overlay = dict(tag=tag, notes=None, origin_url=None, hf_hub_id=None, url=None)
    try:
        net = timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs
        )
    except Exception as e:  # a kwarg the model does not take, a bad value: whatever the constructor raised
        msg = ' '.join(str(e).split()) or type(e).__name__
        raise ExportError(
            f'cannot build {model_name} with kwargs {kwargs} (from --model-kwargs and the args of {checkpoint}): {msg}'
        ) from e
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ExportError(f'{checkpoint} ({meta["key"] or "state_dict"}) does not fit {model_name}:\n{e}') from e
    net.eval()

    labels, labels_from = None, None
    if label_names:
        labels, labels_from = _read_label_names(Path(label_names), num_classes), str(label_names)
    elif meta.get('label_names') and len(meta['label_names']) == num_classes:
        labels, labels_from = meta['label_names'], f'{checkpoint} (label_names)'
    else:
        found = label_names_from_args(args)
        if found and len(found[0]) == num_classes:
            labels, labels_from = found
    metrics = _summary_metrics(Path(summary), meta.get('epoch')) if summary else None
    if metrics and args.get('model_ema') and not use_ema:
        print(
            "timm-tm export: warning: the run used --model-ema, so summary.csv holds the EMA model's eval metrics; "
            'pass --use-ema to export the weights they describe'
        )
    data_config = data_args_from_args(args, str(checkpoint))
    ds = dataset or _dataset_name(name, args)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(out)
    tmp = Path(tempfile.mkdtemp(prefix=_work_prefix(out), suffix='.partial', dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        model_config = {'label_names': labels} if labels else None
        save_for_hf(net, tmp, model_config=model_config, safe_serialization=True, data_config=data_config)
        weights = tmp / WEIGHTS_NAME
        sha = sha256_file(weights)
        config_path = tmp / 'config.json'
        config = json.loads(config_path.read_text(encoding='utf-8'))
        config['weights_sha256'] = {WEIGHTS_NAME: sha}
        config_path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
        input_size = tuple(config['pretrained_cfg']['input_size'])

        # the folder must give back the checkpoint's model: same logits through timm's own local-dir: loader
        reloaded = timm.create_model(f'local-dir:{tmp}', pretrained=True).eval()
        x = torch.randn((2, *input_size), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            if not torch.equal(reloaded(x), net(x)):
                raise ExportError(f"{tmp}: the exported folder does not reproduce the checkpoint's logits")

        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # fvcore's torch.jit use
            stats = profile_model(net, input_size)
        if metrics:
            split = args.get('val_split') or 'validation'
            metric_text = (
                f'Measured by timm train.py on the {split} split of {ds} '
                f'at {input_size[1]} x {input_size[2]} px ({"EMA" if use_ema else "model"} weights):\n\n'
                '| model | top-1 | top-5 | eval loss | epoch | params (M) | GMACs |\n'
                '|---|---|---|---|---|---|---|\n'
                f'| {name} | {_fmt(metrics["top1"])} | {_fmt(metrics["top5"])} | {_fmt(metrics["loss"], 4)} | '
                f'{metrics["epoch"]} | {stats["params_m"]:.2f} | {stats["gmacs"]:.3f} |'
            )
        else:
            metric_text = 'No evaluation was given to the export (`--summary`): no accuracy is claimed.'
        if name in TM_WEIGHTS:
            description = f'{TM_WEIGHTS[name]["recipe"]}.'
        elif ds == 'unknown':
            description = f'{model_name} weights; the checkpoint does not record its dataset (export with --dataset).'
            print('timm-tm export: warning: no dataset recorded in the checkpoint: pass --dataset NAME for the card')
        else:
            description = f'{model_name} weights trained on {ds}.'
        if labels:
            description += f' Class names ({num_classes}) are in `config.json` (`label_names`).'
        fields = {
            'model_name': name,
            'repo_id': repo_id,
            'architecture': model_name,
            'license': net.pretrained_cfg.get('license') or 'apache-2.0',
            'datasets_yaml': f'- {json.dumps(ds)}',  # a JSON string is a YAML scalar whatever the name holds
            'dataset': ds,
            'description': description,
            'num_classes': str(num_classes),
            'params_m': f'{stats["params_m"]:.2f}',
            'gmacs': f'{stats["gmacs"]:.3f}',
            'activations_m': f'{stats["activations_m"]:.2f}',
            'image_size': f'{input_size[1]} x {input_size[2]}',
            'tm_details': _tm_details(net),
            'training': _training_text(args, meta, use_ema),
            'metrics': metric_text,
            'weights_sha256': sha,
            'timm_version': timm.__version__,
            'timm_tm_version': timm_tm.__version__,
        }
        template_path = find_card_template(name, card)
        template = template_path.read_text(encoding='utf-8') if template_path else None
        readme = render_card(fields, template, source=str(template_path or 'timm_tm.model_card.DEFAULT_CARD'))
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
        for p in tmp.iterdir():  # safetensors writes 0600; a published folder is world-readable like timm's
            os.chmod(p, 0o666 & ~umask)
        if labels_from and not label_names:
            print(f'timm-tm export: label names from {labels_from}')
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _dataset_name(name: str, args: Dict[str, Any]) -> str:
    if name in TM_WEIGHTS:
        return TM_WEIGHTS[name]['dataset']
    dataset = args.get('dataset') or ''
    if isinstance(dataset, str) and dataset.split('/')[-1].isprintable() and dataset.split('/')[-1]:
        return dataset.split('/')[-1]
    data_dir = args.get('data_dir') or args.get('data')
    if isinstance(data_dir, str) and Path(data_dir).name and Path(data_dir).name.isprintable():
        return Path(data_dir).name
    return 'unknown'


def _terminated(signum, frame):
    # SIGTERM (kill, a job scheduler's time limit) unwinds like Ctrl-C, so that the partial folder is removed
    raise SystemExit(128 + signum)


def export_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='timm-tm export',
        description='Turn a timm train.py checkpoint into a Hub-ready folder: model.safetensors, config.json '
        '(timm save_for_hf) and README.md (the model card, with measured numbers).',
    )
    parser.add_argument('checkpoint', help='model_best.pth.tar / checkpoint-N.pth.tar of train.py, or .safetensors')
    parser.add_argument('--out', required=True, help='folder to write (refused if it exists, unless --force)')
    parser.add_argument('--model', help='architecture, e.g. tm_resnet50 (default: the one the checkpoint records)')
    parser.add_argument('--name', help='name of the weights, MODEL or MODEL.TAG (default: MODEL)')
    parser.add_argument('--repo', help=f"Hub repo the card's snippets load from (default: {HUB_NAMESPACE}/NAME)")
    parser.add_argument('--num-classes', type=int, help='classes of the head (default: from the checkpoint)')
    parser.add_argument('--use-ema', action='store_true', help='export the EMA weights (state_dict_ema)')
    parser.add_argument('--summary', help="the run's summary.csv: top-1 / top-5 for the card")
    parser.add_argument('--label-names', help='class names: a text file (one per line) or a JSON list / dict')
    parser.add_argument('--dataset', help='dataset name for the card (default: from the checkpoint args)')
    parser.add_argument('--model-kwargs', nargs='*', default=None, metavar='KEY=VALUE', help='as train.py')
    parser.add_argument('--card', help='model card template (default: model_cards/NAME.md, else the packaged one)')
    parser.add_argument('--force', action='store_true', help='replace an existing --out folder')
    ns = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        out = export(
            ns.checkpoint,
            ns.out,
            model=ns.model,
            name=ns.name,
            repo_id=ns.repo,
            num_classes=ns.num_classes,
            use_ema=ns.use_ema,
            summary=ns.summary,
            label_names=ns.label_names,
            model_kwargs=_parse_model_kwargs(ns.model_kwargs),
            dataset=ns.dataset,
            card=ns.card,
            force=ns.force,
        )
    except (ExportError, CheckpointError, WeightsFileError, OSError, ValueError, RuntimeError) as e:
        print(f'timm-tm export: error: {e}', file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    files = ', '.join(f'{p.name} ({p.stat().st_size:,} B)' for p in sorted(out.iterdir()))
    print(f'exported {out}: {files}')
    return 0


# ----------------------------------------------------------------------------------------------------------- push


def _folder_files(folder: Path) -> Tuple[List[str], List[str]]:
    """(files ``push`` uploads, other entries it leaves out), after the checks that keep a bad folder off the Hub.

    Only ``EXPORT_FILES`` are uploaded; each must be a regular file inside ``folder`` (a link that leads out of it,
    e.g. to a system file, is refused: the upload would send what it points to).
    """
    if not folder.is_dir():
        raise PushError(f'{folder}: not a folder (make one with `timm-tm export`)')
    root = folder.resolve()
    missing = [n for n in EXPORT_FILES if not (folder / n).is_file()]
    if missing:
        raise PushError(f'{folder}: missing {", ".join(missing)} (make the folder with `timm-tm export`)')
    for n in EXPORT_FILES:
        real = (folder / n).resolve()
        if root not in real.parents:
            raise PushError(f'{folder / n}: a link to {real}, outside {folder}; push uploads only files in the folder')
    try:
        verify_weights_file(folder / WEIGHTS_NAME)
    except WeightsFileError as e:
        raise PushError(str(e)) from e
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES and p.name != '.git')
    return list(EXPORT_FILES), others


def _one_line(e: BaseException, token: Optional[str]) -> str:
    text = ' '.join(str(e).split()) or type(e).__name__
    if token:
        text = text.replace(token, '***')
    return text


def push(
    folder,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    revision: Optional[str] = None,
    commit_message: str = 'Add tm_* model (timm-tm push)',
) -> List[Tuple[str, int]]:
    """Upload ``folder`` to the Hub repo ``repo_id`` (created if missing); returns the (file, bytes) uploaded.

    ``dry_run`` prints what would be uploaded and where, without touching the network. The token comes from the
    standard Hugging Face environment (``HF_TOKEN``, ``hf auth login``) and is never printed.
    """
    from huggingface_hub import constants

    folder = Path(folder)
    problem = _repo_id_problem(repo_id)
    if problem:
        raise PushError(f'--repo {repo_id!r}: not a valid Hugging Face Hub repo id: {problem}')
    if revision is not None and (not revision.strip() or not revision.isprintable()):
        raise PushError(f'--revision {revision!r}: not a branch name')
    files, others = _folder_files(folder)
    sizes = [(n, (folder / n).stat().st_size) for n in files]
    if others:
        shown = ', '.join(others[:8]) + (f' and {len(others) - 8} more' if len(others) > 8 else '')
        print(
            f'timm-tm push: not uploading {shown}: push uploads only what `timm-tm export` writes ({", ".join(files)})'
        )
    readme = (folder / 'README.md').read_text(encoding='utf-8', errors='replace')
    if 'hf-hub:' in readme and f'hf-hub:{repo_id}' not in readme:
        print(f'timm-tm push: warning: README.md snippets load another repo than {repo_id} (export --repo)')
    branch = revision or 'main'
    where = f'{constants.ENDPOINT}/{repo_id} (revision {branch}, {"private" if private else "public"})'
    if dry_run:
        total = sum(s for _, s in sizes)
        print(f'dry run: would upload {len(sizes)} files ({total:,} bytes) to {where}; nothing was sent')
        width = max(len(n) for n, _ in sizes)
        for n, s in sizes:
            print(f'  {n:<{width}}  {s:>14,} bytes')
        return sizes

    if constants.HF_HUB_OFFLINE:
        raise PushError('HF_HUB_OFFLINE is set: uploading needs the network (unset it, or use --dry-run)')
    from huggingface_hub import HfApi, get_token

    import timm_tm

    token = get_token()
    if not token:
        raise PushError('no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)')
    api = HfApi(token=token, library_name='timm-tm', library_version=timm_tm.__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            allow_patterns=list(EXPORT_FILES),  # exact names, no wildcards: nothing else can be sent
            commit_message=commit_message,
        )
    except Exception as e:
        from huggingface_hub.errors import HfHubHTTPError

        response = getattr(e, 'response', None)
        if isinstance(e, HfHubHTTPError) and response is not None:
            raise PushError(
                f'the Hub refused the upload to {where}: HTTP {response.status_code}: {_one_line(e, token)}'
            ) from None
        raise PushError(f'cannot upload to {where}: {type(e).__name__}: {_one_line(e, token)}') from None
    print(f'uploaded {len(sizes)} files to {where}: {getattr(info, "commit_url", info)}')
    return sizes


def push_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='timm-tm push',
        description='Upload a folder made by `timm-tm export` to the Hugging Face Hub (token: HF_TOKEN or '
        '`hf auth login`).',
    )
    parser.add_argument('folder', help='the exported folder (model.safetensors, config.json, README.md)')
    parser.add_argument('--repo', required=True, help='Hub repo ORG/NAME (created if missing)')
    parser.add_argument('--private', action='store_true', help='create the repo private')
    parser.add_argument('--revision', help='branch to upload to (created if missing; default: main)')
    parser.add_argument('--commit-message', default='Add tm_* model (timm-tm push)')
    parser.add_argument('--dry-run', action='store_true', help='list the files, sizes and destination; no network')
    ns = parser.parse_args(argv)
    try:
        push(ns.folder, ns.repo, ns.private, ns.dry_run, ns.revision, ns.commit_message)
    except PushError as e:
        print(f'timm-tm push: error: {e}', file=sys.stderr)
        return 1
    return 0

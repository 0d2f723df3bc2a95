"""Export a timm train.py checkpoint to a Hub-ready folder, and publish it: ``timm-tm export`` / ``timm-tm push``.

::

    timm-tm export output/train/RUN/model_best.pth.tar --model tm_resnet50 --summary output/train/RUN/summary.csv \\
        --out tm_resnet50.my_data
    timm-tm push tm_resnet50.my_data --repo ORG/tm_resnet50.my_data [--dry-run]

The exported folder is what timm itself writes with ``save_for_hf`` (``model.safetensors``, ``config.json``) plus
the model card (``README.md``, see :mod:`timm_tm.model_card`); ``config.json`` also records the SHA-256 of the
weights (``weights_sha256``), which the tm_* loaders check (:mod:`timm_tm.weights`). It loads back with
``timm.create_model('local-dir:FOLDER', pretrained=True)`` and, once pushed, ``'hf-hub:ORG/NAME'``.
"""

import argparse
import ast
import csv
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from timm_tm.weights import (
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
    'ExportError',
    'PushError',
    'load_checkpoint_file',
    'export',
    'push',
    'export_main',
    'push_main',
]

# pickled formats: never published, read only with weights_only=True
_PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.tar', '.ckpt', '.pkl', '.pickle')
# train.py arguments that describe the preprocessing the weights were evaluated with
_DATA_ARGS = ('input_size', 'img_size', 'in_chans', 'crop_pct', 'mean', 'std', 'interpolation', 'crop_mode')


class ExportError(RuntimeError):
    """An export that cannot be done; the message names the file, argument or keys at fault."""


class PushError(RuntimeError):
    """An upload that cannot be done or was refused; a one-line message (never contains the token)."""


# --------------------------------------------------------------------------------------------------------- export


def load_checkpoint_file(path, use_ema: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A train.py checkpoint (``.pth.tar``), a bare state_dict (``.pth``) or ``.safetensors`` -> (state_dict, meta).

    Pickled files are read with ``weights_only=True`` (train.py's ``args`` Namespace allowed). ``use_ema`` takes
    ``state_dict_ema`` and fails when there is none. ``meta`` holds ``args`` (a dict, empty if not recorded),
    ``epoch``, ``metric``, ``arch`` and ``key`` (the entry the weights came from).
    """
    import torch
    from timm.models import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise ExportError(f'{path}: checkpoint not found')
    if path.suffix == '.safetensors':
        import safetensors.torch

        verify_weights_file(path)
        checkpoint = safetensors.torch.load_file(str(path), device='cpu')
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(
                f'{path}: cannot read it as a checkpoint with weights_only=True (truncated, altered or not a torch '
                f'checkpoint): {msg}'
            ) from e
    if not isinstance(checkpoint, dict):
        raise ExportError(f'{path}: expected a dict (a state_dict or a train.py checkpoint), got {type(checkpoint)}')

    meta: Dict[str, Any] = {'args': {}, 'epoch': None, 'metric': None, 'arch': None, 'key': None}
    is_training_checkpoint = any(k in checkpoint for k in ('state_dict', 'state_dict_ema', 'model', 'model_ema'))
    if is_training_checkpoint:
        args = checkpoint.get('args')
        meta.update(
            args=dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args or {}),
            epoch=checkpoint.get('epoch'),
            metric=checkpoint.get('metric'),
            arch=checkpoint.get('arch'),
        )
        keys = ('state_dict_ema', 'model_ema') if use_ema else ('state_dict', 'model')
        key = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
        if key is None:
            if use_ema:
                raise ExportError(
                    f'{path}: --use-ema: the checkpoint has no EMA weights (state_dict_ema); train with '
                    '--model-ema, or export without --use-ema'
                )
            raise ExportError(f'{path}: the checkpoint has no "state_dict" entry (found {sorted(checkpoint)})')
        meta['key'] = key
        state_dict = checkpoint[key]
    else:
        if use_ema:
            raise ExportError(f'{path}: --use-ema: a bare state_dict has no EMA weights')
        state_dict = checkpoint
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ExportError(f'{path}: state_dict entries that are not tensors: {not_tensors[:8]}')
    return clean_state_dict(state_dict), meta


def _read_label_names(path: Path, num_classes: int) -> List[str]:
    try:
        text = path.read_text(encoding='utf-8')
    except OSError as e:
        raise ExportError(f'--label-names: cannot read {path}: {e}') from e
    if path.suffix == '.json':
        data = json.loads(text)
        if isinstance(data, dict):  # {"0": "cat", ...} or {"cat": 0, ...}
            if all(str(k).isdigit() for k in data):
                data = [data[k] for k in sorted(data, key=int)]
            else:
                data = [k for k, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
        names = [str(n) for n in data]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ExportError(f'--label-names: {path} names {len(names)} classes, the model has {num_classes}')
    return names


def _label_names_from_args(args: Dict[str, Any], num_classes: int) -> Optional[Tuple[List[str], str]]:
    """Class names in train.py's order: its --class-map file, else the class folders of its train split."""
    from timm.utils import natural_key

    class_map = args.get('class_map')
    if class_map and Path(class_map).is_file() and Path(class_map).suffix == '.txt':
        names = [line.strip() for line in Path(class_map).read_text().splitlines() if line.strip()]
        if len(names) == num_classes:
            return names, str(class_map)
    data_dir = args.get('data_dir') or args.get('data')
    if data_dir and not args.get('dataset'):
        for split in (args.get('train_split') or 'train', ''):
            root = Path(data_dir) / split
            if root.is_dir():
                names = sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key)
                if len(names) == num_classes:
                    return names, str(root)
    return None


def _summary_metrics(path: Path, epoch: Optional[int]) -> Dict[str, Any]:
    """The row of train.py's summary.csv for ``epoch`` (else the best eval_top1): top-1, top-5, loss, epoch."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ExportError(f'--summary: cannot read {path}: {e}') from e
    rows = [r for r in rows if r.get('eval_top1') not in (None, '')]
    if not rows:
        raise ExportError(f'--summary: {path} has no eval_top1 column or rows (was the run evaluated?)')
    row = next((r for r in rows if epoch is not None and r.get('epoch') == str(epoch)), None)
    if row is None:
        row = max(rows, key=lambda r: float(r['eval_top1']))

    def num(key):
        v = row.get(key)
        return float(v) if v not in (None, '') else None

    return {'top1': num('eval_top1'), 'top5': num('eval_top5'), 'loss': num('eval_loss'), 'epoch': row.get('epoch')}


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
        if not sep or not key:
            raise ExportError(f'--model-kwargs: expected key=value, got {item!r}')
        try:
            kw[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kw[key] = value
    return kw


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``; an existing ``out`` is swapped out, then removed."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.old', dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


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
    logits as the checkpoint), then renamed: an interrupted export leaves no half folder. ``force`` replaces an
    existing ``out``.
    """
    import timm
    import torch
    from timm.models._hub import save_for_hf

    import timm_tm
    from timm_tm.model_card import find_card_template, render_card
    from timm_tm.profiling import profile_model

    out = Path(out)
    if out.exists() and not (force and out.is_dir()):
        raise ExportError(f'--out {out} exists' + (': pass --force to replace it' if out.is_dir() else ''))

    state_dict, meta = load_checkpoint_file(checkpoint, use_ema=use_ema)
    args = meta['args']
    model_name = model or args.get('model') or meta.get('arch')
    if not model_name or not timm.is_model(model_name):
        raise ExportError(f'--model: unknown model {model_name!r} (checkpoint arch {meta.get("arch")!r})')
    if args.get('model') and args['model'] != model_name:
        print(f'timm-tm export: note: {checkpoint} was trained as {args["model"]}, exporting as {model_name}')
    name = name or model_name
    if name.split('.')[0] != model_name:
        raise ExportError(f'--name {name}: must be {model_name} or {model_name}.<tag>')
    repo_id = repo_id or tm_hub_id(name)

    kwargs: Dict[str, Any] = dict(args.get('model_kwargs') or {})
    if args.get('in_chans') is not None:
        kwargs['in_chans'] = args['in_chans']
    if args.get('gp') is not None:
        kwargs['global_pool'] = args['gp']
    if args.get('bn_eps') is not None:
        kwargs['bn_eps'] = args['bn_eps']
    kwargs.update(model_kwargs or {})
    if num_classes is None:
        num_classes = kwargs.pop('num_classes', None) or args.get('num_classes')
    kwargs.pop('num_classes', None)
    if num_classes is None and 'fc.weight' in state_dict:
        num_classes = int(state_dict['fc.weight'].shape[0])
    if num_classes is None:
        raise ExportError(f'{checkpoint}: cannot tell the number of classes: pass --num-classes')
    if name in TM_WEIGHTS:
        tag_classes = TM_WEIGHTS[name]['num_classes']
        extra = {k: v for k, v in kwargs.items() if not (k == 'in_chans' and v == 3)}
        if num_classes != tag_classes or extra:
            raise ExportError(
                f'--name {name}: that tag loads into the default {model_name}(num_classes={tag_classes}); these '
                f'weights need num_classes={num_classes}, {extra}: export them under another --name'
            )

    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f'{checkpoint}: non-finite values (NaN / inf) in {bad[:8]}: the run diverged')
    # the source tag's provenance (hf_hub_id, tag, notes) does not describe the exported weights
    tag = name.split('.', 1)[1] if '.' in name else None
    overlay = dict(tag=tag, notes=None, origin_url=None, hf_hub_id=None, url=None)
    net = timm.create_model(
        model_name, pretrained=False, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs
    )
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ExportError(f'{checkpoint} ({meta["key"] or "state_dict"}) does not fit {model_name}:\n{e}') from e
    net.eval()

    labels, labels_from = None, None
    if label_names:
        labels, labels_from = _read_label_names(Path(label_names), num_classes), str(label_names)
    else:
        found = _label_names_from_args(args, num_classes)
        if found:
            labels, labels_from = found
    metrics = _summary_metrics(Path(summary), meta.get('epoch')) if summary else None
    if metrics and args.get('model_ema') and not use_ema:
        print(
            "timm-tm export: warning: the run used --model-ema, so summary.csv holds the EMA model's eval metrics; "
            'pass --use-ema to export the weights they describe'
        )
    data_config = {k: args[k] for k in _DATA_ARGS if args.get(k) is not None}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
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
                f'Measured by timm train.py on the {split} split of {dataset or _dataset_name(name, args)} '
                f'at {input_size[1]} x {input_size[2]} px ({"EMA" if use_ema else "model"} weights):\n\n'
                '| model | top-1 | top-5 | eval loss | epoch | params (M) | GMACs |\n'
                '|---|---|---|---|---|---|---|\n'
                f'| {name} | {_fmt(metrics["top1"])} | {_fmt(metrics["top5"])} | {_fmt(metrics["loss"], 4)} | '
                f'{metrics["epoch"]} | {stats["params_m"]:.2f} | {stats["gmacs"]:.3f} |'
            )
        else:
            metric_text = 'No evaluation was given to the export (`--summary`): no accuracy is claimed.'
        ds = dataset or _dataset_name(name, args)
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
            'datasets_yaml': f'- {ds}',
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
    if dataset:
        return dataset.split('/')[-1]
    data_dir = args.get('data_dir') or args.get('data')
    return Path(data_dir).name if data_dir else 'unknown'


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
    except (ExportError, WeightsFileError, OSError, ValueError, RuntimeError) as e:
        print(f'timm-tm export: error: {e}', file=sys.stderr)
        return 1
    files = ', '.join(f'{p.name} ({p.stat().st_size:,} B)' for p in sorted(out.iterdir()))
    print(f'exported {out}: {files}')
    return 0


# ----------------------------------------------------------------------------------------------------------- push


def _folder_files(folder: Path) -> List[Path]:
    """Files ``push`` uploads (relative paths), after the checks that keep a bad folder off the Hub."""
    if not folder.is_dir():
        raise PushError(f'{folder}: not a folder (make one with `timm-tm export`)')
    files = sorted(p.relative_to(folder) for p in folder.rglob('*') if p.is_file() and '.git' not in p.parts)
    pickled = [str(p) for p in files if p.name.endswith(_PICKLE_SUFFIXES)]
    if pickled:
        raise PushError(f'{folder}: {", ".join(pickled)}: published weights are safetensors only; remove them')
    missing = [n for n in (WEIGHTS_NAME, 'config.json', 'README.md') if not (folder / n).is_file()]
    if missing:
        raise PushError(f'{folder}: missing {", ".join(missing)} (make the folder with `timm-tm export`)')
    try:
        verify_weights_file(folder / WEIGHTS_NAME)
    except WeightsFileError as e:
        raise PushError(str(e)) from e
    return files


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
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise PushError(f'--repo: expected ORG/NAME, got {repo_id!r}')
    files = _folder_files(folder)
    sizes = [(p.as_posix(), (folder / p).stat().st_size) for p in files]
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
            allow_patterns=[n for n, _ in sizes],
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

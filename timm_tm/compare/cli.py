"""``timm-tm compare``'s command line: the parser, the checks of the arguments (every one before any work starts:
a wrong argument exits 2 with argparse's usage and error line) and ``main``."""

import argparse
import json
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import timm
import torch
import torch.nn as nn
from timm.data import create_transform
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2

from timm_tm.bench.machine import numerics_record
from timm_tm.cli import command_parser, first_line, int_list
from timm_tm.data import FASHION_MNIST_DIR
from timm_tm.files import LockedError, exclusive_lock

from .data import DATASETS, check_image_folder, load_data
from .report import recipe_keys
from .runner import report_stop, run_comparison, stop_on_sigterm
from .training import check_model
from .variants import ABLATION_VARIANTS, DEFAULT_VARIANTS, Variant, expand_variant_names, parse_variant

__all__ = ['build_parser', 'main']

MAX_IMG_SIZE = 1024  # --img-size and --canvas: the array datasets are held in memory, resized, by every run
LOCK_FILE = '.compare.lock'  # in --out while a comparison runs there


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        'compare',
        description='Train a TM-free baseline and TM variants of one tm_* model under an identical recipe, for '
        'several seeds, and compare val top-1 (mean ± std, paired per-seed differences). The defaults are a '
        'quick CPU run on scikit-learn digits (a few minutes on 2 cores).',
        epilog='Variants: baseline[-ep<int>] | tm[-m<int>][-s<stages>][-w<float>][-t<float>][-fixw][-noguide]'
        '[-max|-lse][-noembed|-embtied|-embargmax|-embtemplates|-embclasses][-evgrad|-evlogits][-ep<int>], e.g. '
        'tm-m4-s34, tm-embtied-noguide, baseline-ep24; two options that set the same thing (tm-m1-m4, tm-w1-noguide) '
        'are refused. --variants ablations runs ' + ' '.join(ABLATION_VARIANTS) + '.',
    )
    _add_data_args(parser)
    _add_model_args(parser)
    _add_recipe_args(parser)
    _add_run_args(parser)
    return parser


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('data')
    group.add_argument(
        '--dataset',
        choices=DATASETS,
        default=None,
        help='built-in real dataset (default: digits; cluttered-mnist when --mnist-npz is given; folder with '
        '--data-dir). fashion-mnist reads the four idx files from --data-dir (default: ' + FASHION_MNIST_DIR + ', '
        'where `apt-get install dataset-fashion-mnist` puts them): 60,000 train, the 10,000 test images as val',
    )
    group.add_argument(
        '--data-dir',
        default='',
        help='the folder of the idx files for --dataset fashion-mnist; otherwise an ImageFolder root with train/ and '
        'val/ (--dataset folder)',
    )
    group.add_argument('--mnist-npz', default='', help='MNIST .npz (x: N x 28 x 28 uint8, y) for cluttered-mnist')
    group.add_argument(
        '--train-size',
        type=int,
        default=None,
        help='use this many training images, a fixed subset (default: all; built-in datasets only)',
    )
    group.add_argument('--val-size', type=int, default=None, help='use this many val images (default: all)')
    group.add_argument('--canvas', type=int, default=48, help='cluttered-mnist canvas size before resizing (<= 1024)')
    group.add_argument(
        '--img-size',
        type=int,
        default=None,
        help='input size, at most 1024 (default: 16 for digits, the canvas for cluttered-mnist, 28 for fashion-mnist, '
        '32 for folders)',
    )
    group.add_argument(
        '--workers',
        type=int,
        default=2,
        help='data loader workers (ImageFolder only; part of the recipe: they draw the augmentations)',
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('model')
    group.add_argument(
        '--model', default='tm_resnet18_small', help='a tm_* model; the baseline is it with tm_stages=()'
    )
    group.add_argument(
        '--channels',
        type=int_list,
        default=None,
        help="stage widths of a tm_resnet model, comma-separated (default 16,32,64,128; '' = the model's own, "
        "64,128,256,512), the first also its stem_width, which timm's deep stems ('d' variants) take: a plain stem "
        '(tm_resnet18_small) keeps its 64 channels; other models keep their own widths',
    )
    group.add_argument(
        '--layers',
        type=int_list,
        default=None,
        help="blocks per stage of a tm_resnet model, e.g. 2,2,2,2 (default: model's)",
    )
    group.add_argument(
        '--variants',
        nargs='+',
        default=list(DEFAULT_VARIANTS),
        help="variants to train ('ablations' = the standard ablation set)",
    )


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('recipe (shared by every variant)')
    group.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    group.add_argument('--epochs', type=int, default=10)
    group.add_argument('--batch-size', type=int, default=32)
    group.add_argument('--opt', default='adamw', help='timm optimizer name (create_optimizer_v2), e.g. adamw, sgd')
    group.add_argument('--lr', type=float, default=3e-3)
    group.add_argument('--weight-decay', type=float, default=0.05)
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument(
        '--sched',
        default='cosine',
        help='timm scheduler name (create_scheduler_v2), stepped per update: cosine, tanh, step, multistep, poly, '
        'constant, ...',
    )
    group.add_argument('--warmup-epochs', type=int, default=1)
    group.add_argument('--min-lr', type=float, default=1e-5)
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--mixup', type=float, default=0.0, help='timm Mixup alpha (0: off)')
    group.add_argument('--cutmix', type=float, default=0.0, help='timm CutMix alpha (0: off)')
    group.add_argument(
        '--shift',
        type=int,
        default=2,
        help='random shift in pixels: a crop of the image padded by it (built-in datasets)',
    )
    group.add_argument(
        '--hflip',
        type=float,
        default=None,
        help='horizontal flip probability (default: 0.5 for fashion-mnist and folders, 0 for digits: a flip changes '
        'what a digit means)',
    )
    group.add_argument('--scale', type=float, nargs=2, default=None, help='RandomResizedCrop scale (ImageFolder only)')
    group.add_argument('--color-jitter', type=float, default=0.0, help='ImageFolder only')
    group.add_argument('--auto-augment', default=None, help='e.g. rand-m9-mstd0.5 (ImageFolder only)')
    group.add_argument('--reprob', type=float, default=0.0, help='random erasing probability (ImageFolder only)')


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('run')
    group.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    group.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    group.add_argument(
        '--channels-last', action='store_true', help='channels-last memory format (as train.py; faster on most CPUs)'
    )
    group.add_argument(
        '--threads', type=int, default=1, help='torch CPU threads of each run (default 1: runs go side by side)'
    )
    group.add_argument(
        '--jobs', type=int, default=None, help='runs at a time, one process each (default: the CPU count; 1 on GPU)'
    )
    group.add_argument('--eval-every', type=int, default=1, help='evaluate every N epochs (0: only after the last)')
    group.add_argument(
        '--out',
        default=None,
        help='results folder (default: results/tmp/<dataset>-<timestamp>), locked while a comparison runs in it',
    )
    group.add_argument(
        '--resume',
        action='store_true',
        help='continue --out: skip the (variant, seed) runs already in its results.json (same recipe, device, '
        'threads and, for folders, workers)',
    )
    group.add_argument(
        '--reuse',
        nargs='+',
        default=[],
        metavar='RESULTS_JSON',
        help='take finished (variant, seed) runs from these results.json files of the same recipe instead of training '
        'them again (e.g. a screen that shares its baseline with an earlier comparison)',
    )
    group.add_argument('--title', default=None, help='plot title')


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-tm compare ARGS``: 0 when every run finished and the results are written, 1 when a run failed, 2 (from
    argparse) for wrong arguments, 130 / 143 when stopped by Ctrl-C (SIGINT) / SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    with stop_on_sigterm():
        try:
            return _compare(args, argv, parser)
        except KeyboardInterrupt as e:  # while the arguments are checked (the runs report their own stop)
            return report_stop(e, 'before any run started')


def _compare(args: argparse.Namespace, argv: List[str], parser: argparse.ArgumentParser) -> int:
    variants = _validate(args, parser)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    out = Path(args.out or Path('results') / 'tmp' / f'{args.dataset}-{time.strftime("%Y%m%d-%H%M%S")}')
    config = {k: v for k, v in vars(args).items() if k not in ('resume', 'out', 'title', 'reuse')}
    config['scale'] = list(args.scale) if args.scale else None
    config['command'] = 'timm-tm compare ' + shlex.join(argv)  # quoted: a --title with spaces reruns as it ran
    # what bit-for-bit equal reruns need besides the recipe (benchmarks/reproduce.py compares exactly only then)
    config['machine'] = numerics_record(args.threads, args.device)
    with _claimed(out, args, parser):
        runs = _previous_runs(out, config, args.resume, parser)
        runs += _reused_runs(args.reuse, runs, args.seeds, args.variants, config, parser)
        return run_comparison(args, variants, device, out, config, runs)


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[Variant]:
    """Check ``args`` and fill in the defaults that depend on others (``parser.error`` on the first problem);
    returns the variants to train. The data is read once here and every variant's model built on the meta device:
    a dataset, or a model, that cannot be used is refused too."""
    _check_data_args(args, parser)
    _check_sizes(args, parser)
    _check_recipe(args, parser)
    _check_augmentation(args, parser)
    _check_device(args, parser)
    names = expand_variant_names(args.variants)
    try:
        variants = [parse_variant(n) for n in names]
    except ValueError as e:
        parser.error(f'--variants: {e}')
    args.variants = names
    try:  # read the data once before anything is written: a bad dataset is refused here
        data = load_data(args, args.seeds[0], torch.device('cpu'))
    except Exception as e:  # unreadable files, timm's transforms, memory: one line, whatever it is
        parser.error(f'data: {first_line(e)}')
    if data.batches_per_epoch < 1:
        parser.error(f'--batch-size {args.batch_size} is larger than the {data.num_train} training images')
    for variant in variants:
        try:
            check_model(variant, args, data.num_classes, data.in_chans)
        except Exception as e:  # a model keyword out of range (tm-t100), widths the model cannot take
            parser.error(f'--variants: {variant.name}: {first_line(e)}')
    return variants


def _check_data_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The dataset (``'folder'`` for ``--data-dir`` without ``--dataset``), absolute data paths and the defaults
    that depend on the dataset (image size, flips); options that do not apply to the dataset are refused."""
    if args.data_dir and args.dataset not in (None, 'fashion-mnist'):
        parser.error(f'--data-dir is for --dataset fashion-mnist or an ImageFolder, not --dataset {args.dataset}')
    if args.data_dir and args.dataset is None:
        try:
            check_image_folder(args.data_dir)
        except ValueError as e:
            parser.error(str(e))
        args.dataset = 'folder'
    elif args.dataset is None:
        args.dataset = 'cluttered-mnist' if args.mnist_npz else 'digits'
    if args.mnist_npz and args.dataset != 'cluttered-mnist':
        parser.error(f'--mnist-npz is for --dataset cluttered-mnist, not {args.dataset}')
    if args.mnist_npz and not os.path.isfile(args.mnist_npz):
        parser.error(f'--mnist-npz {args.mnist_npz!r}: file not found')
    if args.dataset == 'folder' and (args.train_size is not None or args.val_size is not None):
        parser.error('--train-size / --val-size apply to the built-in datasets; for --data-dir, make a folder that '
                     'holds the images to use')  # fmt: skip
    folder_only = {'--scale': args.scale, '--color-jitter': args.color_jitter, '--reprob': args.reprob,
                   '--auto-augment': args.auto_augment}  # fmt: skip
    given = [name for name, value in folder_only.items() if value]
    if args.dataset != 'folder' and given:
        parser.error(f'{given[0]} applies to ImageFolder data (--data-dir) only')
    # absolute paths, so that --resume from another working directory sees the same recipe
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else ''
    args.mnist_npz = os.path.abspath(args.mnist_npz) if args.mnist_npz else ''
    if args.img_size is None:
        args.img_size = {'digits': 16, 'cluttered-mnist': args.canvas, 'fashion-mnist': 28}.get(args.dataset, 32)
    if args.hflip is None:
        args.hflip = 0.5 if args.dataset in ('fashion-mnist', 'folder') else 0.0


def _check_widths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--channels and --layers: a tm_resnet model's (narrow widths by default: 16,32,64,128), not another family's."""
    resnet = args.model in timm.list_models(module='tm_resnet')
    if not resnet and (args.channels is not None or args.layers is not None):
        parser.error(f'--channels and --layers shape the tm_resnet models; {args.model} keeps its own: leave them out')
    if args.channels is None and resnet:
        args.channels = [16, 32, 64, 128]
    if args.channels == []:  # '': the model's own widths
        args.channels = None
    if args.channels is not None and len(args.channels) != 4:
        parser.error(f'--channels needs 4 stage widths, got {args.channels}')
    if args.layers is not None and len(args.layers) != 4:
        parser.error(f'--layers needs 4 block counts, got {args.layers}')


def _check_sizes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The model, its widths and depths, and the counts: epochs, batch, image size, subset sizes, seeds, threads,
    jobs, workers."""
    if args.model not in timm.list_models('tm_*'):
        parser.error(f'--model {args.model!r} is not a tm_* model; choose from {", ".join(timm.list_models("tm_*"))}')
    at_least = (
        ('--epochs', args.epochs, 1), ('--batch-size', args.batch_size, 1), ('--img-size', args.img_size, 1),
        ('--canvas', args.canvas, 1), ('--train-size', args.train_size, 1), ('--val-size', args.val_size, 1),
        ('--threads', args.threads, 1), ('--jobs', args.jobs, 1), ('--workers', args.workers, 0),
        ('--warmup-epochs', args.warmup_epochs, 0), ('--eval-every', args.eval_every, 0), ('--shift', args.shift, 0),
    )  # fmt: skip
    for name, v, minimum in at_least:
        if v is not None and v < minimum:
            parser.error(f'{name} must be >= {minimum}, got {v}')
    for name, v in (('--img-size', args.img_size), ('--canvas', args.canvas)):
        if v > MAX_IMG_SIZE:
            parser.error(f'{name} must be <= {MAX_IMG_SIZE}, got {v} (compare trains on small images)')
    _check_widths(args, parser)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')


def _check_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The recipe's numbers, and --opt / --sched as timm's names (tried on a throwaway parameter, as a run uses
    them: the schedule stepped per update, with no metric)."""
    for name in ('lr', 'weight_decay', 'momentum', 'min_lr', 'smoothing', 'mixup', 'cutmix', 'color_jitter'):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0:
            parser.error(f'--{name.replace("_", "-")} must be a finite number >= 0, got {v}')
    if args.lr <= 0:
        parser.error(f'--lr must be > 0, got {args.lr}')
    if args.smoothing >= 1:
        parser.error(f'--smoothing must be < 1, got {args.smoothing}')
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error(f'--mixup / --cutmix need an even --batch-size, got {args.batch_size} (timm mixes pairs)')
    if args.opt.lower() not in list_optimizers():
        parser.error(f'--opt {args.opt!r} is not a timm optimizer; choose from {", ".join(list_optimizers())}')
    try:
        opt = create_optimizer_v2(nn.Linear(1, 1), opt=args.opt, lr=args.lr)
    except Exception as e:  # a name timm lists whose implementation is missing here (apex's fused optimizers)
        parser.error(f'--opt {args.opt!r} cannot be used here: {first_line(e)}')
    try:
        sched, _ = create_scheduler_v2(
            opt, sched=args.sched, num_epochs=max(args.epochs, 2), warmup_epochs=0, step_on_epochs=False,
            updates_per_epoch=1,
        )  # fmt: skip
    except Exception:  # unknown, or one that needs a metric ('plateau')
        sched = None
    if sched is None:  # also 'none', which timm answers with no scheduler
        parser.error(
            f'--sched {args.sched!r} is not a timm scheduler that steps per update (cosine, tanh, step, multistep, '
            'poly, wsd, rsqrt; constant for a fixed learning rate)'
        )


def _check_augmentation(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flip and erasing probabilities, the crop scale, and --auto-augment as timm's policy name."""
    for name in ('hflip', 'reprob'):
        v = getattr(args, name)
        if not 0 <= v <= 1:  # (also NaN)
            parser.error(f'--{name} must be a probability in [0, 1], got {v}')
    if args.scale is not None and not 0 < args.scale[0] <= args.scale[1] <= 1:
        parser.error(f'--scale must be 0 < MIN <= MAX <= 1, got {list(args.scale)}')
    if args.auto_augment:
        try:
            create_transform(args.img_size, is_training=True, auto_augment=args.auto_augment)
        except Exception:
            parser.error(
                f'--auto-augment {args.auto_augment!r} is not a timm augmentation policy (e.g. rand-m9-mstd0.5, '
                'augmix-m5, original)'
            )


def _check_device(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--device`` (default: cuda if available, else cpu) as a device this machine has; ``--jobs`` by default
    one run per core on the CPU, one at a time on a GPU."""
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA GPU is available here')
    try:
        torch.zeros(1, device=device).cpu()
    except Exception:  # another backend (mps, xpu) that this machine lacks, a GPU index past the last, meta
        parser.error(f'--device {args.device!r} is not usable here')
    if args.jobs is None:
        args.jobs = 1 if device.type == 'cuda' else (os.cpu_count() or 1)


@contextmanager
def _claimed(out: Path, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Iterator[None]:
    """``out`` as this comparison's folder while it runs: created if needed and locked, so that no other
    comparison writes it meanwhile (``parser.error`` if one does, or when ``out`` is a file, under one, or inside
    the data). A folder created here is removed again when the comparison is refused."""
    if out.exists() and not out.is_dir():
        parser.error(f'--out {out} is a file, not a folder')
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        parser.error(f'--out {out}: {blocking} is a file')
    if args.data_dir and Path(os.path.abspath(out)).is_relative_to(args.data_dir):
        parser.error(f'--out {out} is inside --data-dir {args.data_dir}: results never go into the data')
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f'--out {out}: cannot create it ({e.strerror or e})')
    try:
        with exclusive_lock(out / LOCK_FILE):
            yield
    except LockedError as e:
        _remove_empty(created)
        parser.error(f'--out {out} is in use by another timm-tm compare (pid {e.pid or "unknown"}): wait for it, or '
                     'choose another --out')  # fmt: skip
    except SystemExit:  # refused (argparse): leave no folder behind
        _remove_empty(created)
        raise


def _remove_empty(folders: List[Path]) -> None:
    """Remove the ``folders`` (deepest first) that are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _previous_runs(out: Path, config: Dict[str, Any], resume: bool, parser: argparse.ArgumentParser) -> List[Dict]:
    """The finished runs in ``out`` to keep (``--resume`` of the same recipe; ``config`` then keeps the command
    that started the folder), or none for a new folder. Refuses (``parser.error``) to overwrite anything."""
    results_path = out / 'results.json'
    # what this command writes; without its results.json a folder's files are someone else's: never overwritten
    foreign = [n for n in ('results.md', 'results.png', 'curves.png', 'log.txt') if (out / n).exists()]
    if foreign and not results_path.exists():
        parser.error(
            f'--out {out} holds {", ".join(foreign)} but no results.json of timm-tm compare: choose another --out'
        )
    if not results_path.exists():
        return []
    if not resume:
        parser.error(f'{results_path} exists: pass --resume to continue it, or choose another --out')
    prev = _read_results(results_path, config, '--resume', 'choose another --out', parser)
    # the command that started the folder stays its command; resumptions are listed after it
    config['resumed_with'] = prev['config'].get('resumed_with', []) + [config['command']]
    if prev['config'].get('machine') != config['machine']:
        config['machine'] = None  # the runs come from more than one machine kind (or an unrecorded one)
    config['command'] = prev['config']['command']
    if prev['config'].get('reused_from'):
        config['reused_from'] = prev['config']['reused_from']
    return prev['runs']


def _read_results(
    path: Path, config: Dict[str, Any], flag: str, advice: str, parser: argparse.ArgumentParser
) -> Dict[str, Any]:
    """A results.json of timm-tm compare made with the recipe of ``config``; ``parser.error`` naming ``flag`` and
    the file otherwise."""
    try:
        prev = json.loads(path.read_text())
        if not (isinstance(prev.get('config'), dict) and isinstance(prev.get('runs'), list)):
            raise ValueError('no "config" object and "runs" list')
    except (OSError, ValueError, AttributeError) as e:
        parser.error(f'{flag}: {path} is not a results file of timm-tm compare ({e}); {advice}')
    # the recipe, and what changes the numbers besides: the threads' arithmetic, the device, the loader's workers
    changed = [k for k in recipe_keys(config['dataset']) if prev['config'].get(k) != config.get(k)]
    if changed:
        parser.error(f'{flag}: {path} was made with another recipe (differs in: {", ".join(changed)}); {advice}')
    return prev


def _reused_runs(
    paths: List[str],
    runs: List[Dict],
    seeds: List[int],
    variants: List[str],
    config: Dict[str, Any],
    parser: argparse.ArgumentParser,
) -> List[Dict]:
    """The runs of this comparison (``seeds`` x ``variants``) that ``runs`` lacks and the results files ``paths``
    (same recipe) hold; each marked with the file it came from, which ``config['reused_from']`` lists."""
    have = {(r['variant'], r['seed']) for r in runs}
    reused = []
    for path in paths:
        other = _read_results(Path(path), config, '--reuse', 'reuse only runs of the same recipe', parser)
        taken = 0
        for r in other['runs']:
            key = (r.get('variant'), r.get('seed'))
            if key[0] in variants and key[1] in seeds and key not in have:
                reused.append({**r, 'reused_from': os.path.abspath(path)})
                have.add(key)
                taken += 1
        if taken and other['config'].get('machine') != config.get('machine'):
            config['machine'] = None  # runs made on another machine kind (or an unrecorded one)
    if paths:
        config['reused_from'] = sorted(set(config.get('reused_from', []) + [os.path.abspath(p) for p in paths]))
    return reused

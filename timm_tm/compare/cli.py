"""``timm-tm compare``'s command line: the parser, the checks of the arguments (every one before any work starts:
a wrong argument exits 2 with argparse's usage and error line) and ``main``."""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2

from timm_tm.cli import command_parser, int_list
from timm_tm.data import FASHION_MNIST_DIR

from .data import DATASETS, check_image_folder, load_data
from .report import RECIPE_KEYS
from .runner import run_comparison
from .variants import ABLATION_VARIANTS, DEFAULT_VARIANTS, Variant, expand_variant_names, parse_variant

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        'compare',
        description='Train a TM-free baseline and TM variants of one tm_* model under an identical recipe, for '
        'several seeds, and compare val top-1 (mean ± std, paired per-seed differences). The defaults are a '
        'quick CPU run on scikit-learn digits (a few minutes on 2 cores).',
        epilog='Variants: baseline[-ep<int>] | tm[-m<int>][-s<stages>][-w<float>][-t<float>][-fixw][-noguide]'
        '[-max|-lse][-noembed|-embtied|-embtemplates|-embclasses][-evgrad|-evlogits][-ep<int>], e.g. tm-m4-s34, '
        'tm-embtied-noguide, baseline-ep24. --variants ablations runs ' + ' '.join(ABLATION_VARIANTS) + '.',
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
        '--train-size', type=int, default=None, help='use this many training images, a fixed subset (default: all)'
    )
    group.add_argument('--val-size', type=int, default=None, help='use this many val images (default: all)')
    group.add_argument('--canvas', type=int, default=48, help='cluttered-mnist canvas size before resizing')
    group.add_argument(
        '--img-size',
        type=int,
        default=None,
        help='input size (default: 16 for digits, the canvas for cluttered-mnist, 32 for folders)',
    )
    group.add_argument('--workers', type=int, default=2, help='data loader workers (ImageFolder only)')


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
        '64,128,256,512); other models keep their own',
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
    group.add_argument('--sched', default='cosine', help='timm scheduler name (create_scheduler_v2)')
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
    group.add_argument('--out', default=None, help='results folder (default: results/tmp/<dataset>-<timestamp>)')
    group.add_argument('--resume', action='store_true', help='skip (variant, seed) runs already in --out/results.json')
    group.add_argument('--title', default=None, help='plot title')


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-tm compare ARGS``: 0 when every run finished and the results are written, 1 when a run failed, 2 (from
    argparse) for wrong arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = _validate(args, parser)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.jobs is None:
        args.jobs = 1 if device.type == 'cuda' else (os.cpu_count() or 1)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    out = Path(args.out or Path('results') / 'tmp' / f'{args.dataset}-{time.strftime("%Y%m%d-%H%M%S")}')
    config = {k: v for k, v in vars(args).items() if k not in ('resume', 'out', 'title')}
    config['scale'] = list(args.scale) if args.scale else None
    config['command'] = 'timm-tm compare ' + ' '.join(argv)
    runs = _previous_runs(out, config, args.resume, parser)
    return run_comparison(args, variants, device, out, config, runs)


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[Variant]:
    """Check ``args`` and fill in the defaults that depend on others (``parser.error`` on the first problem);
    returns the variants to train. The data is read once here: a dataset that cannot be used is refused too."""
    _check_data_args(args, parser)
    _check_sizes(args, parser)
    _check_recipe(args, parser)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA GPU is available here')
    names = expand_variant_names(args.variants)
    try:
        variants = [parse_variant(n) for n in names]
    except ValueError as e:
        parser.error(f'--variants: {e}')
    args.variants = names
    try:  # read the data once before anything is written: a bad dataset is refused here
        load_data(args, args.seeds[0], torch.device('cpu'))
    except (OSError, ValueError) as e:
        parser.error(f'data: {e}')
    return variants


def _check_data_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The dataset (``'folder'`` for ``--data-dir`` without ``--dataset``), absolute data paths and the defaults
    that depend on the dataset (image size, flips)."""
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
    """The model, its widths and depths, and the counts: epochs, batch, image size, seeds, threads, jobs."""
    if args.model not in timm.list_models('tm_*'):
        parser.error(f'--model {args.model!r} is not a tm_* model; choose from {", ".join(timm.list_models("tm_*"))}')
    for name, v in (('--epochs', args.epochs), ('--batch-size', args.batch_size), ('--img-size', args.img_size)):
        if v < 1:
            parser.error(f'{name} must be >= 1, got {v}')
    _check_widths(args, parser)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must be distinct, got {args.seeds}')
    for name, v in (('--threads', args.threads), ('--jobs', args.jobs)):
        if v is not None and v < 1:
            parser.error(f'{name} must be >= 1, got {v}')


def _check_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The recipe's numbers, and --opt / --sched as timm's names (tried on a throwaway parameter)."""
    for name in ('lr', 'weight_decay', 'momentum', 'min_lr', 'smoothing', 'mixup', 'cutmix'):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0:
            parser.error(f'--{name.replace("_", "-")} must be a finite number >= 0, got {v}')
    if args.lr <= 0:
        parser.error(f'--lr must be > 0, got {args.lr}')
    if args.smoothing >= 1:
        parser.error(f'--smoothing must be < 1, got {args.smoothing}')
    if args.opt.lower() not in list_optimizers():
        parser.error(f'--opt {args.opt!r} is not a timm optimizer; choose from {", ".join(list_optimizers())}')
    opt = create_optimizer_v2(nn.Linear(1, 1), opt=args.opt, lr=args.lr)
    try:
        create_scheduler_v2(opt, sched=args.sched, num_epochs=max(args.epochs, 2), warmup_epochs=0)
    except ValueError:
        parser.error(f'--sched {args.sched!r} is not a timm scheduler (e.g. cosine, tanh, step, multistep, poly)')


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
    try:
        prev = json.loads(results_path.read_text())
        if not (isinstance(prev.get('config'), dict) and isinstance(prev.get('runs'), list)):
            raise ValueError('no "config" object and "runs" list')
    except (OSError, ValueError, AttributeError) as e:
        parser.error(f'--resume: {results_path} is not a results file of timm-tm compare ({e}); choose another --out')
    changed = [k for k in RECIPE_KEYS if prev['config'].get(k) != config.get(k)]
    if changed:
        parser.error(
            f'--resume: {results_path} was made with another recipe (differs in: {", ".join(changed)}); '
            'choose another --out'
        )
    # the command that started the folder stays its command; resumptions are listed after it
    config['resumed_with'] = prev['config'].get('resumed_with', []) + [config['command']]
    config['command'] = prev['config']['command']
    return prev['runs']

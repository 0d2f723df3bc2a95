"""resnet18 against tm_resnet18 from scratch through timm's own, unmodified train.py, paired over seeds.

    python benchmarks/train_script_check.py --train-py PATH/TO/train.py [--recipe sgd|adamw] [--seeds 0 1 2 3 4]
        [--dataset mnist|fashion-mnist] [--variants resnet18 tm_resnet18 tm_resnet18-noembed] [--data DIR]
        [--jobs 2] --out results/train-script

timm's scripts are not in its wheel: take train.py from the release of the timm you have installed. Without
``--data``, a small real dataset is written first as 32 px RGB PNGs in ImageFolder layout: ``mnist``, 600 train /
300 val digits (60 / 30 per class) from the package's own copy; ``fashion-mnist``, 2,000 train images (200 per
class) of Fashion-MNIST's training set and 1,000 val images (100 per class) of its test set (Debian's
dataset-fashion-mnist, or ``--fashion-dir``). Every variant sees the same command (recipe, seed) but for its model:
``resnet18``, ``tm_resnet18`` (the default block) and ``tm_resnet18-noembed`` (``--model-kwargs embedding=none``,
the evidence-only block). Each run is one process with one thread (``--jobs`` side by side). Written under
``--out``: each run's train.py output folder (without its checkpoints unless ``--keep-checkpoints``), and
``results.json`` / ``results.md`` with the final and best val top-1 per seed, the paired differences and one-line
verdicts against resnet18 (and of the default block against the evidence-only one).

Recipes: ``sgd`` is train.py's default optimizer at a small-data learning rate (SGD, momentum 0.9, lr 0.05, cosine,
15 epochs, batch 32, no crop scaling, no flips); ``adamw`` is the README's small-data recipe (AdamW 2e-3, weight decay
0.05, 2 warm-up epochs, label smoothing 0.1, EMA 0.999), 15 epochs, with the EMA's decay warm-up
(``--model-ema-warmup``: 270 updates are too few for a 0.999 EMA without it); train.py then reports the EMA's
top-1. Digits are neither flipped nor crop-scaled (either changes what a digit is); clothes get the README's
augmentation for natural images, ``--scale 0.7 1 --hflip 0.5``.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from timm_tm.compare import paired, verdict
from timm_tm.data import FASHION_MNIST_CLASSES, load_fashion_mnist, load_mnist_npz, split_arrays, write_image_folder

# variant -> (train.py --model, extra train.py arguments)
VARIANTS: Dict[str, Tuple[str, List[str]]] = {
    'resnet18': ('resnet18', []),
    'tm_resnet18': ('tm_resnet18', []),
    'tm_resnet18-noembed': ('tm_resnet18', ['--model-kwargs', 'embedding=none']),
}
COMMON = ['--num-classes', '10', '--input-size', '3', '32', '32', '--epochs', '15', '-b', '32', '--workers', '0',
          '--ratio', '1', '1', '--crop-pct', '1.0']  # fmt: skip
AUGMENTATION = {
    'mnist': ['--scale', '1', '1', '--hflip', '0'],
    'fashion-mnist': ['--scale', '0.7', '1', '--hflip', '0.5'],
}
RECIPES: Dict[str, List[str]] = {
    'sgd': ['--opt', 'sgd', '--lr', '0.05', '--momentum', '0.9', '--weight-decay', '5e-4', '--sched', 'cosine',
            '--warmup-epochs', '1'],
    'adamw': ['--opt', 'adamw', '--lr', '2e-3', '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs',
              '2', '--smoothing', '0.1', '--model-ema', '--model-ema-decay', '0.999', '--model-ema-warmup'],
}  # fmt: skip


def write_dataset(root: Path, dataset: str = 'mnist', fashion_dir: Optional[str] = None, seed: int = 0) -> Path:
    """A small real ImageFolder dataset (train/, val/) as 32 px RGB PNGs: the packaged MNIST digits (60 / 30 per
    class), or Fashion-MNIST (200 per class of its training set / 100 per class of its test set)."""
    if dataset == 'mnist':
        x, y = load_mnist_npz()
        splits, per_class = split_arrays(x, y, val_fraction=0.2, seed=seed), {'train': 60, 'val': 30}
        names = None
    else:
        fashion = load_fashion_mnist(fashion_dir)
        splits, per_class = {'train': fashion['train'], 'val': fashion['test']}, {'train': 200, 'val': 100}
        names = [n.replace('/', '-') for n in FASHION_MNIST_CLASSES]  # folder names
    rng = np.random.default_rng(seed)
    chosen = {}
    for split in ('train', 'val'):
        xs, ys = splits[split]
        idx = np.concatenate([rng.permutation(np.flatnonzero(ys == c))[: per_class[split]] for c in range(10)])
        chosen[split] = (xs[idx], ys[idx])
    return write_image_folder(str(root), chosen, class_names=names, size=32)


def final_and_best(summary: Path) -> Dict[str, float]:
    """Last and best ``eval_top1`` of a train.py ``summary.csv`` (and the top-1 of every epoch)."""
    with open(summary) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f'{summary}: no epochs recorded')
    curve = [float(r['eval_top1']) for r in rows]
    return {'top1': curve[-1], 'best_top1': max(curve), 'top1_per_epoch': curve}


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--train-py', required=True, help="timm's train.py")
    p.add_argument('--recipe', choices=sorted(RECIPES), default='sgd')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    p.add_argument('--dataset', choices=sorted(AUGMENTATION), default='mnist', help='the data written (and its flips)')
    p.add_argument('--fashion-dir', default=None, help="folder of the Fashion-MNIST idx files (default: Debian's)")
    p.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=['resnet18', 'tm_resnet18'])
    p.add_argument('--data', default=None, help='ImageFolder root with train/ and val/ (default: write --dataset)')
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--keep-checkpoints', action='store_true', help="keep train.py's checkpoints (GBs per recipe)")
    p.add_argument('--device', default=None, help="train.py's --device (default: cuda if available, else cpu)")
    p.add_argument('--out', required=True, help='a new folder for the runs and the results')
    args = p.parse_args(argv)
    train_py = Path(args.train_py).resolve()
    if not train_py.is_file():
        p.error(f'--train-py {args.train_py!r}: file not found')
    out = Path(args.out).resolve()
    if out.exists():
        p.error(f'--out {args.out!r} exists: choose a new folder (nothing is overwritten)')
    if 'resnet18' not in args.variants:
        p.error('--variants must include resnet18: every variant is compared with it')
    out.mkdir(parents=True)
    data = Path(args.data).resolve() if args.data else write_dataset(out / 'data', args.dataset, args.fashion_dir)
    if args.device is None:
        import torch

        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'

    recipe = RECIPES[args.recipe] + COMMON + AUGMENTATION[args.dataset]

    def run(variant: str, seed: int) -> Dict:
        model, extra = VARIANTS[variant]
        cmd = [sys.executable, str(train_py), str(data), '--device-modules', 'timm_tm', '--model', model, *extra,
               '--seed', str(seed), '--output', str(out / 'runs'), '--experiment', f'{variant}-seed{seed}',
               '--train-split', 'train', '--val-split', 'val', '--device', args.device, *recipe]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        folder = out / 'runs' / f'{variant}-seed{seed}'
        if folder.is_dir():
            (folder / 'train.log').write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f'{variant} seed {seed}: train.py failed:\n{proc.stderr[-2000:]}')
        record = {'variant': variant, 'seed': seed, **final_and_best(folder / 'summary.csv')}
        if not args.keep_checkpoints:  # train.py's own checkpoints in the run folder this script made: 1-2 GB a run
            for checkpoint in folder.glob('*.pth.tar'):
                checkpoint.unlink()
        print(f'{variant} seed {seed}: top-1 {record["top1"]:.2f} (best {record["best_top1"]:.2f})', flush=True)
        return record

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda vs: run(*vs), [(v, s) for s in args.seeds for v in args.variants]))
    lines = verdict_lines(runs, args.variants)
    table = seed_table(runs, args.variants, args.seeds)
    command = 'python benchmarks/train_script_check.py ' + ' '.join(argv)
    (out / 'results.json').write_text(json.dumps({'command': command, 'recipe': recipe, 'runs': runs,
                                                  'verdicts': lines}, indent=1) + '\n')  # fmt: skip
    (out / 'results.md').write_text(
        f'# timm train.py on {args.dataset}: {", ".join(args.variants)} ({args.recipe} recipe)\n\n'
        + '\n'.join(table)
        + '\n\n'
        + '\n'.join(f'- {line}' for line in lines)
        + f'\n\nCommand: `{command}`\n'
    )
    print('\n'.join(table))
    print('\n'.join(lines))
    return 0


def comparisons(variants: List[str]) -> List[Tuple[str, str]]:
    """(variant, reference) pairs: every TM variant against resnet18, the default block against evidence only."""
    pairs = [(v, 'resnet18') for v in variants if v != 'resnet18']
    if 'tm_resnet18' in variants and 'tm_resnet18-noembed' in variants:
        pairs.append(('tm_resnet18', 'tm_resnet18-noembed'))
    return pairs


def verdict_lines(runs: List[Dict], variants: List[str]) -> List[str]:
    """One verdict line per comparison, for the final and the best epoch."""
    lines = []
    for key in ('top1', 'best_top1'):
        for variant, reference in comparisons(variants):
            d = paired([{**r, 'top1': r[key]} for r in runs], variant, reference)
            lines.append(f'{"final" if key == "top1" else "best"} epoch: {verdict(d)}')
    return lines


def seed_table(runs: List[Dict], variants: List[str], seeds: List[int]) -> List[str]:
    """Markdown rows: per seed, each variant's final (best) top-1 and its final difference to resnet18."""
    by = {(r['variant'], r['seed']): r for r in runs}
    others = [v for v in variants if v != 'resnet18']
    head = ['seed', 'resnet18 final (best)'] + [f'{v} final (best)' for v in others] + [f'Δ {v}' for v in others]
    table = ['| ' + ' | '.join(head) + ' |', '|' + '---:|' * len(head)]
    for s in seeds:
        base = by[('resnet18', s)]
        cells = [str(s)] + [f'{by[(v, s)]["top1"]:.2f} ({by[(v, s)]["best_top1"]:.2f})' for v in variants]
        cells += [f'{by[(v, s)]["top1"] - base["top1"]:+.2f}' for v in others]
        table.append('| ' + ' | '.join(cells) + ' |')
    return table


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

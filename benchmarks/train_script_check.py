"""resnet18 against tm_resnet18 from scratch through timm's own, unmodified train.py, paired over seeds.

    python benchmarks/train_script_check.py --train-py PATH/TO/train.py [--recipe sgd|adamw] [--seeds 0 1 2 3 4]
        [--data DIR] [--jobs 2] --out results/train-script

timm's scripts are not in its wheel: take train.py from the release of the timm you have installed. Without
``--data``, a small real dataset is written first: 600 train / 300 val MNIST digits (60 / 30 per class) from the
package's own copy, as 32 px RGB PNGs in ImageFolder layout. Both models see the same command (recipe, seed) but for
``--model``; each run is one process with one thread (``--jobs`` side by side). Written under ``--out``: each run's
train.py output folder (without its checkpoints unless ``--keep-checkpoints``), and ``results.json`` /
``results.md`` with the final and best val top-1 per seed, the paired differences and a one-line verdict.

Recipes: ``sgd`` is train.py's default optimizer at a small-data learning rate (SGD, momentum 0.9, lr 0.05, cosine,
15 epochs, batch 32, no crop scaling, no flips); ``adamw`` is the README's small-data recipe (AdamW 2e-3, weight decay
0.05, 2 warm-up epochs, label smoothing 0.1, EMA 0.999), 15 epochs, with the EMA's decay warm-up
(``--model-ema-warmup``: 270 updates are too few for a 0.999 EMA without it); train.py then reports the EMA's
top-1.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np

from timm_tm.compare import paired, verdict
from timm_tm.data import load_mnist_npz, split_arrays, write_image_folder

MODELS = ('resnet18', 'tm_resnet18')
COMMON = ['--num-classes', '10', '--input-size', '3', '32', '32', '--epochs', '15', '-b', '32', '--workers', '0',
          '--scale', '1', '1', '--ratio', '1', '1', '--hflip', '0', '--crop-pct', '1.0']  # fmt: skip
RECIPES: Dict[str, List[str]] = {
    'sgd': ['--opt', 'sgd', '--lr', '0.05', '--momentum', '0.9', '--weight-decay', '5e-4', '--sched', 'cosine',
            '--warmup-epochs', '1'],
    'adamw': ['--opt', 'adamw', '--lr', '2e-3', '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs',
              '2', '--smoothing', '0.1', '--model-ema', '--model-ema-decay', '0.999', '--model-ema-warmup'],
}  # fmt: skip


def write_dataset(root: Path, per_class_train: int = 60, per_class_val: int = 30, seed: int = 0) -> Path:
    """A small real ImageFolder dataset (train/, val/) from the packaged MNIST digits, 32 px RGB PNGs."""
    x, y = load_mnist_npz()
    splits = split_arrays(x, y, val_fraction=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    chosen = {}
    for split, per_class in (('train', per_class_train), ('val', per_class_val)):
        xs, ys = splits[split]
        idx = np.concatenate([rng.permutation(np.flatnonzero(ys == c))[:per_class] for c in range(10)])
        chosen[split] = (xs[idx], ys[idx])
    return write_image_folder(str(root), chosen, size=32)


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
    p.add_argument('--data', default=None, help='ImageFolder root with train/ and val/ (default: write MNIST digits)')
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
    out.mkdir(parents=True)
    data = Path(args.data).resolve() if args.data else write_dataset(out / 'data')
    if args.device is None:
        import torch

        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'

    def run(model: str, seed: int) -> Dict:
        cmd = [sys.executable, str(train_py), str(data), '--device-modules', 'timm_tm', '--model', model,
               '--seed', str(seed), '--output', str(out / 'runs'), '--experiment', f'{model}-seed{seed}',
               '--train-split', 'train', '--val-split', 'val', '--device', args.device, *COMMON,
               *RECIPES[args.recipe]]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        folder = out / 'runs' / f'{model}-seed{seed}'
        if folder.is_dir():
            (folder / 'train.log').write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f'{model} seed {seed}: train.py failed:\n{proc.stderr[-2000:]}')
        record = {'variant': model, 'seed': seed, **final_and_best(folder / 'summary.csv')}
        if not args.keep_checkpoints:  # train.py's own checkpoints in the run folder this script made: 1-2 GB a run
            for checkpoint in folder.glob('*.pth.tar'):
                checkpoint.unlink()
        print(f'{model} seed {seed}: top-1 {record["top1"]:.2f} (best {record["best_top1"]:.2f})', flush=True)
        return record

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda ms: run(*ms), [(m, s) for s in args.seeds for m in MODELS]))
    lines = []
    for key in ('top1', 'best_top1'):
        d = paired([{**r, 'top1': r[key]} for r in runs], 'tm_resnet18', 'resnet18')
        lines.append(f'{"final" if key == "top1" else "best"} epoch: {verdict(d)}')
    by = {(r['variant'], r['seed']): r for r in runs}
    table = ['| seed | resnet18 final (best) | tm_resnet18 final (best) | Δ final |', '|---:|---:|---:|---:|']
    for s in args.seeds:
        a, b = by[('resnet18', s)], by[('tm_resnet18', s)]
        table.append(f'| {s} | {a["top1"]:.2f} ({a["best_top1"]:.2f}) | {b["top1"]:.2f} ({b["best_top1"]:.2f}) '
                     f'| {b["top1"] - a["top1"]:+.2f} |')  # fmt: skip
    command = 'python benchmarks/train_script_check.py ' + ' '.join(argv)
    (out / 'results.json').write_text(json.dumps({'command': command, 'recipe': RECIPES[args.recipe] + COMMON,
                                                  'runs': runs, 'verdicts': lines}, indent=1) + '\n')  # fmt: skip
    (out / 'results.md').write_text(
        f'# timm train.py: resnet18 vs tm_resnet18 ({args.recipe} recipe)\n\n'
        + '\n'.join(table)
        + '\n\n'
        + '\n'.join(f'- {line}' for line in lines)
        + f'\n\nCommand: `{command}`\n'
    )
    print('\n'.join(table))
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

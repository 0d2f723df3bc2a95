"""Rerun the README's published comparisons and check them against the committed numbers.

    python benchmarks/reproduce.py PRESET [--seeds S ...] [--update] [extra timm-tm compare args]

Each preset is the exact argument list (thread count included) behind one folder of results/. By default the
rerun writes to a new folder under results/tmp/ and then compares every (variant, seed) top-1 it produced with
the committed ``results/<preset>/results.json``: exit 0 when all agree, 1 (listing the differences) otherwise.
``--seeds`` / ``--variants`` rerun only some of them (e.g. ``--seeds 0`` for a quick check). ``--update`` writes the
committed folder itself instead; it refuses when that folder exists (remove it first: nothing is overwritten unasked).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from timm_tm.compare import main as compare_main

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'results'


def _option(args: List[str], flag: str) -> Optional[List[str]]:
    """The values after ``flag`` in an argument list (up to the next flag), or None."""
    if flag not in args:
        return None
    i = args.index(flag) + 1
    j = i
    while j < len(args) and not args[j].startswith('--'):
        j += 1
    return args[i:j]


def _with_option(args: List[str], flag: str, values: List[str]) -> List[str]:
    """``args`` with ``flag``'s values replaced (or appended)."""
    if flag not in args:
        return args + [flag] + values
    i = args.index(flag)
    j = i + 1
    while j < len(args) and not args[j].startswith('--'):
        j += 1
    return args[:i] + [flag] + values + args[j:]


# the converged cluttered-MNIST protocol (README "Results"): 12 epochs, 4,000 / 2,000 images, one thread a run
_CLUTTERED = [
    '--dataset', 'cluttered-mnist', '--canvas', '40', '--img-size', '20', '--layers', '1,1,1,1',
    '--train-size', '4000', '--val-size', '2000', '--epochs', '12', '--threads', '1',
]  # fmt: skip

# the Fashion-MNIST protocol (README "Results"): a fixed 2,000-image subset of the 60,000 training images (the
# budget at which the baseline plateaus on 2 cores: trained twice as long it gains nothing), the 10,000 test images
# as the val split, a quarter-width ResNet-18-depth model at 28 px, random crops with 2 px padding and flips
_FASHION = [
    '--dataset', 'fashion-mnist', '--train-size', '2000', '--batch-size', '64', '--lr', '2e-3', '--epochs', '50',
    '--channels', '16,32,64,128', '--layers', '2,2,2,2', '--shift', '2', '--hflip', '0.5', '--channels-last',
    '--eval-every', '5', '--threads', '1',
]  # fmt: skip

PRESETS: Dict[str, List[str]] = {
    # the README's main job, `timm-tm compare` with no arguments (seeds 0-2), on 5 seeds and with a longer baseline
    'digits': ['--threads', '1', '--seeds', '0', '1', '2', '3', '4', '--variants', 'baseline', 'baseline-ep20', 'tm',
               'tm-embtied'],
    # the converged study: candidates, controls and the longer baseline, seeds 0-4
    'cluttered-mnist-converged': _CLUTTERED + [
        '--seeds', '0', '1', '2', '3', '4', '--variants', 'baseline', 'baseline-ep24', 'tm-noembed',
        'tm-embtemplates', 'tm-embclasses', 'tm-embtied', 'tm-embtied-noguide', 'tm-embtemplates-evlogits-w1',
    ],
    # the converged protocol: 24 epochs (12 are short of the plateau: a 24-epoch baseline gains 2 points on them),
    # with a 48-epoch baseline on 4 seeds as the plateau check
    'cluttered-mnist-24ep': _with_option(_CLUTTERED, '--epochs', ['24']) + [
        '--seeds', '0', '1', '2', '3', '4', '--variants', 'baseline', 'tm-noembed', 'tm-embtied',
    ],
    # (paired with the 24-epoch runs of the same seeds in cluttered-mnist-24ep)
    'cluttered-mnist-48ep': _with_option(_CLUTTERED, '--epochs', ['24']) + [
        '--seeds', '0', '1', '2', '3', '--variants', 'baseline-ep48', 'tm-noembed-ep48',
    ],
    # the confirmation on fresh seeds 5-9 of the design chosen on seeds 0-4
    'cluttered-mnist-confirm': _CLUTTERED + [
        '--seeds', '5', '6', '7', '8', '9', '--variants', 'baseline', 'tm-noembed', 'tm-embtied',
    ],
}  # fmt: skip


def compare_runs(new: Path, committed: Path) -> List[str]:
    """Differences between the top-1 of every (variant, seed) run in ``new`` and the same run in ``committed``."""

    def top1(path: Path) -> Dict[Tuple[str, int], float]:
        return {(r['variant'], r['seed']): r['top1'] for r in json.loads(path.read_text())['runs']}

    ref, got = top1(committed), top1(new)
    problems = []
    for key, value in sorted(got.items()):
        if key not in ref:
            problems.append(f'{key[0]} seed {key[1]}: not in {committed}')
        elif abs(value - ref[key]) > 1e-9:
            problems.append(f'{key[0]} seed {key[1]}: rerun {value:.2f}, committed {ref[key]:.2f}')
    return problems


def run(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog='benchmarks/reproduce.py', description=__doc__.split('\n\n')[0])
    p.add_argument('preset', choices=sorted(PRESETS))
    p.add_argument('--seeds', nargs='+', default=None, help="rerun only these of the preset's seeds")
    p.add_argument('--variants', nargs='+', default=None, help="rerun only these of the preset's variants")
    p.add_argument('--update', action='store_true', help='write results/<preset> itself (refused if it exists)')
    args, extra = p.parse_known_args(argv)
    compare_args = list(PRESETS[args.preset])
    for flag, chosen in (('--seeds', args.seeds), ('--variants', args.variants)):
        if chosen:
            unknown = sorted(set(chosen) - set(_option(compare_args, flag) or []))
            if unknown:
                p.error(
                    f'{flag} {" ".join(unknown)}: not in preset {args.preset} ({" ".join(_option(compare_args, flag))})'
                )
            compare_args = _with_option(compare_args, flag, chosen)
    committed = RESULTS / args.preset
    if args.update:
        if committed.exists():
            print(
                f'{committed} exists: remove it first to rewrite it (nothing is overwritten unasked)', file=sys.stderr
            )
            return 2
        out = committed
    else:
        out = RESULTS / 'tmp' / f'{args.preset}-{time.strftime("%Y%m%d-%H%M%S")}'
    if _option(extra, '--out') is not None:
        print('--out is set by this script (use --update to write the committed folder)', file=sys.stderr)
        return 2
    rc = compare_main(compare_args + extra + ['--out', str(out)])
    if rc != 0 or args.update:
        return rc
    if not (committed / 'results.json').is_file():
        print(f'nothing to check against: {committed / "results.json"} does not exist')
        return 0
    problems = compare_runs(out / 'results.json', committed / 'results.json')
    if problems:
        print(f'{len(problems)} run(s) differ from {committed}:')
        for line in problems:
            print(f'  {line}')
        return 1
    print(f'every rerun run matches {committed / "results.json"} exactly')
    return 0


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))

"""Reproduce the README's published comparisons: ``python benchmarks/reproduce.py PRESET [extra compare args]``.

A thin wrapper over ``timm-tm compare`` (timm_tm/compare.py): each preset is the exact argument list used for
the numbers under results/; extra arguments are appended (e.g. ``--threads 2`` or ``--out somewhere``).
Without a preset it is ``timm-tm compare`` itself.
"""

import sys
from typing import Dict, List

from timm_tm.compare import main

MNIST_NPZ = '../shared/data/mnist10k.npz'

PRESETS: Dict[str, List[str]] = {
    # the README's main job: digits, baseline vs TM, 3 seeds (results/digits)
    'digits': ['--out', 'results/digits'],
    # the ablations on cluttered MNIST (results/cluttered-mnist)
    'cluttered-mnist': [
        '--mnist-npz', MNIST_NPZ, '--canvas', '40', '--img-size', '20', '--layers', '1,1,1,1',
        '--train-size', '2000', '--val-size', '500', '--epochs', '4', '--seeds', '0', '1', '2',
        '--variants', 'baseline', 'tm', 'tm-noguide', 'tm-w0', 'tm-fixw', 'tm-m2', 'tm-m4', 'tm-s4', 'tm-t8', 'tm-t30',
        '--out', 'results/cluttered-mnist',
    ],
}  # fmt: skip


def run(argv: List[str]) -> int:
    if argv and argv[0] in PRESETS:
        argv = PRESETS[argv[0]] + argv[1:]
    elif argv and not argv[0].startswith('-'):
        print(f'unknown preset {argv[0]!r}; presets: {", ".join(PRESETS)}', file=sys.stderr)
        return 2
    return main(argv)


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))

"""How the TM overhead grows with the class count, the templates per class and the TM stages.

Same as ``timm-tm bench --scale``: tm_X (default tm_resnet50) against timm X with the same class count,
for 10 / 100 / 1000 / 10000 classes at one template per class, 1 / 2 / 4 templates per class at 100 classes,
and the other TM stage set at 1000 classes; GMACs and measured throughput ratios. E.g.::

    python benchmarks/scale.py --threads 2 --batch-size 16 -o bench_scale.json
"""

import sys

from timm_tm.bench import main

if __name__ == '__main__':
    sys.exit(main(['--scale', *sys.argv[1:]]))

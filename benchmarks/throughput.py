"""Each tm_X against timm's X (resnet50d, convnext_tiny, ...), side by side: throughput, peak memory, params and
GMACs.

Same as ``timm-tm bench``; ``python benchmarks/throughput.py --help`` lists the options, e.g.::

    python benchmarks/throughput.py --models 18,50,101 --threads 2 --batch-size 16 -o bench_cpu.json
"""

import sys

from timm_tm.bench import main

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

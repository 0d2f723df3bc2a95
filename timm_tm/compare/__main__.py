"""``python -m timm_tm.compare ARGS``, the same as ``timm-tm compare ARGS``."""

import sys

from timm_tm.compare import main

sys.exit(main())

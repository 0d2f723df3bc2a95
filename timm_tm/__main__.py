import sys

from timm_tm.cli import main

sys.exit(main())

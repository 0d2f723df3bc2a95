"""``timm-tm`` (same as ``python -m timm_tm``): one entry point, a subcommand per task.

Subcommands are imported only when run, so ``timm-tm --help`` stays fast.
"""

import importlib
import sys
from typing import List, Optional

# name -> (module:function taking argv, one-line help)
COMMANDS = {
    'compare': ('timm_tm.compare:main', 'train a baseline and a TM model under one recipe and compare top-1'),
    'run': ('timm_tm.scripts:main', 'run a timm script (train.py, validate.py, ...) with the tm_* models registered'),
    'export': ('timm_tm.hub:export_main', 'turn a train.py checkpoint into a Hub-ready folder with a model card'),
    'push': ('timm_tm.hub:push_main', 'upload an exported folder to the Hugging Face Hub'),
    'bench': ('timm_tm.bench:main', 'throughput / memory of tm_resnetX against resnetX, side by side'),
    'visualize': ('timm_tm.visualize:main', 'draw the per-region class maps of a TM model on images'),
}


def _usage() -> str:
    lines = ['usage: timm-tm COMMAND [ARGS...]', '', 'commands:']
    lines += [f'  {name:<10} {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', "'timm-tm COMMAND --help' shows a command's arguments."]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    if argv[0] in ('-V', '--version'):
        from timm_tm import __version__

        print(f'timm-tm {__version__}')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'timm-tm: unknown command {name!r}\n\n{_usage()}', file=sys.stderr)
        return 2
    module_name, fn_name = COMMANDS[name][0].split(':')
    fn = getattr(importlib.import_module(module_name), fn_name)
    return int(fn(rest) or 0)


if __name__ == '__main__':
    sys.exit(main())

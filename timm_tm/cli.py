"""``timm-tm`` (same as ``python -m timm_tm``): one entry point, a subcommand per task.

Subcommands are imported only when run (each brings its own optional dependencies). Every subcommand is a
``main(argv) -> int`` built on :func:`command_parser` and keeps one convention for its exit status:

* 0: done;
* 1: the work failed (a file that cannot be read, a run that diverged): one line ``timm-tm CMD: error: ...``
  on stderr (:func:`report_error`);
* 2: the arguments are wrong, found before any work starts: argparse's usage and error line
  (``parser.error``);
* 128 + the signal's number (130, 143): stopped by SIGINT / SIGTERM, one line (``compare``, whose runs take long).
"""

import argparse
import importlib
import sys
from typing import List, Optional

from timm_tm import __version__

# name -> (module:function taking argv, one-line help)
COMMANDS = {
    'compare': ('timm_tm.compare:main', 'train a baseline and a TM model under one recipe and compare top-1'),
    'run': ('timm_tm.scripts:main', 'run a timm script (train.py, validate.py, ...) with the tm_* models registered'),
    'export': ('timm_tm.export:main', 'turn a train.py checkpoint into a Hub-ready folder with a model card'),
    'push': ('timm_tm.push:main', 'upload an exported folder to the Hugging Face Hub'),
    'bench': (
        'timm_tm.bench:main',
        'throughput / memory of tm_X against timm X (resnet50d, convnext_tiny, ...), side by side',
    ),
    'visualize': ('timm_tm.visualize:main', 'draw the per-region class maps of a TM model on images'),
}


def command_parser(command: str, description: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of ``timm-tm COMMAND``: its prog name is the one its messages start with."""
    return argparse.ArgumentParser(prog=f'timm-tm {command}', description=description, epilog=epilog)


def report_error(command: str, message: object) -> int:
    """Print ``timm-tm COMMAND: error: MESSAGE`` (one line) to stderr; returns 1, the status of failed work."""
    print(f'timm-tm {command}: error: {message}', file=sys.stderr)
    return 1


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line error reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """An exception's whole message on one line (its lines stripped and joined): torch's load_state_dict errors are
    a page of tab-indented lines, a one-line report must keep what they name."""
    text = ' '.join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def int_list(text: str, minimum: int = 1) -> List[int]:
    """argparse type: ``'2,2,2,2'`` -> ``[2, 2, 2, 2]`` (``''`` -> ``[]``), each at least ``minimum``."""
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f'expected comma-separated integers >= {minimum}, got {text!r}')
    return values


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
        print(f'timm-tm {__version__}')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'timm-tm: unknown command {name!r}\n\n{_usage()}', file=sys.stderr)
        return 2
    module_name, fn_name = COMMANDS[name][0].split(':')
    fn = getattr(importlib.import_module(module_name), fn_name)
    try:
        return int(fn(rest) or 0)
    except SystemExit as e:  # argparse: --help (0) and wrong arguments (2)
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2


if __name__ == '__main__':
    sys.exit(main())

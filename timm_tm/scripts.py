"""``timm-tm run SCRIPT.py [ARGS...]``: run one of timm's scripts with the ``tm_*`` models registered.

timm's ``train.py`` imports extra modules itself (``--device-modules timm_tm``); its other scripts
(``validate.py``, ``benchmark.py``, ``inference.py``, ``onnx_export.py``) have no such flag. This command
imports :mod:`timm_tm`, then runs the script as ``__main__`` in the same interpreter, exactly as
``python SCRIPT.py ARGS...`` would: ``sys.argv`` is the script and its arguments, and the script's folder
comes first on ``sys.path``.

    timm-tm run validate.py /data/imagenet --model tm_resnet50.a1_in1k --pretrained
    timm-tm run benchmark.py --model tm_resnet50 --bench inference
"""

import ast
import runpy
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ['main', 'run_script']

USAGE = """usage: timm-tm run SCRIPT.py [ARGS...]

Run a timm script (train.py, validate.py, benchmark.py, inference.py, onnx_export.py, ...) as __main__
with the tm_* models registered; ARGS go to the script unchanged ('timm-tm run validate.py --help')."""


def _imports_timm(tree: ast.AST) -> bool:
    """Whether the parsed script has an ``import timm...`` or ``from timm... import`` anywhere."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == 'timm' or a.name.startswith('timm.') for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == 'timm' or node.module.startswith('timm.'):
                return True
    return False


def _check_script(script: str) -> Optional[str]:
    """Why ``script`` cannot be run (one line), or None."""
    path = Path(script)
    if not path.exists():
        return f'timm-tm run: error: script not found: {script}'
    if not path.is_file():
        return f'timm-tm run: error: not a file: {script}'
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except OSError as e:
        return f'timm-tm run: error: cannot read {script}: {e.strerror or e}'
    except (SyntaxError, ValueError) as e:
        return f'timm-tm run: error: {script} is not a Python script ({type(e).__name__}: {getattr(e, "msg", e)})'
    if not _imports_timm(tree):
        return (
            f'timm-tm run: error: {script} is not a timm script (it does not import timm); '
            "expected one of timm's scripts such as train.py, validate.py or benchmark.py"
        )
    return None


def run_script(script: str, args: List[str]) -> int:
    """Run ``script`` as ``__main__`` with ``args`` and the tm_* models registered; returns its exit status.

    ``sys.argv`` and ``sys.path`` are restored afterwards.
    """
    path = Path(script)  # the tm_* models are registered: importing this module imported timm_tm
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path)] + list(args)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name='__main__')
    except SystemExit as e:
        # sys.exit(None) is success, sys.exit('message') prints the message and fails, as the interpreter does
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0
    script, args = argv[0], argv[1:]
    error = _check_script(script)
    if error is not None:
        print(error, file=sys.stderr)
        return 2
    return run_script(script, args)

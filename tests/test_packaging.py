"""Packaging: ``python -m build`` makes a wheel and an sdist, and each installs cleanly into a fresh venv where
``import timm, timm_tm`` lists the family and the ``timm-tm`` console script runs.

Offline and fast: the build runs without isolation (setuptools from this environment, no download), and the fresh
venv sees this environment's packages (torch, timm, ...) the way ``--system-site-packages`` would, through a
``.pth`` line after its own site-packages; only timm-tm itself is installed into it (``--no-deps``), so
``import timm_tm`` must resolve to the installed copy, never to this source tree.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ['tm_resnet18', 'tm_resnet26', 'tm_resnet34', 'tm_resnet50', 'tm_resnet101', 'tm_resnet152']

pytest.importorskip('build', reason='packaging tests need the build package (pip install build)')


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    tail = f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    assert result.returncode == 0, f'{cmd} failed ({result.returncode}):\n{tail}'
    return result


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    """(wheel, sdist) built from a copy of the source tree (the build leaves build/ and egg-info behind)."""
    src = tmp_path_factory.mktemp('src') / 'timm-tm'
    ignore = shutil.ignore_patterns(
        '.venv', '.git', '.cache', 'build', 'dist', '*.egg-info', '__pycache__', '.pytest_cache', '.ruff_cache',
        'output', 'results',
    )  # fmt: skip
    shutil.copytree(ROOT, src, ignore=ignore)
    out = tmp_path_factory.mktemp('dist')
    _run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', out, src])
    wheels, sdists = list(out.glob('*.whl')), list(out.glob('*.tar.gz'))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0]


def test_wheel_contents(dists):
    wheel, _ = dists
    assert wheel.name.startswith('timm_tm-') and wheel.name.endswith('-py3-none-any.whl')
    names = zipfile.ZipFile(wheel).namelist()
    for module in ('timm_tm/__init__.py', 'timm_tm/layers.py', 'timm_tm/models/tm_resnet.py', 'timm_tm/cli.py'):
        assert module in names
    # the MNIST digits the cluttered-MNIST comparison needs, with their source and licence
    assert 'timm_tm/assets/mnist10k.npz' in names and 'timm_tm/assets/README.md' in names
    assert not [n for n in names if n.startswith('tests/')]
    dist_info = {n.split('/', 1)[1] for n in names if '.dist-info/' in n}
    assert 'entry_points.txt' in dist_info and any(n.startswith('licenses/LICENSE') for n in dist_info)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'timm-tm = timm_tm.cli:main' in entry_points


def test_sdist_contents(dists):
    _, sdist = dists
    names = {n.split('/', 1)[1] for n in tarfile.open(sdist).getnames() if '/' in n}
    for f in ('pyproject.toml', 'README.md', 'LICENSE', 'timm_tm/__init__.py', 'timm_tm/models/tm_resnet.py'):
        assert f in names


def _fresh_venv(path: Path) -> Path:
    """A venv (no pip of its own) that sees this environment's site-packages after its own; returns its python."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True, timeout=120)
    python = path / ('Scripts/python.exe' if os.name == 'nt' else 'bin/python')
    purelib = subprocess.run(
        [str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'], *site.getsitepackages()}
    Path(purelib, '_outer_env.pth').write_text('\n'.join(sorted(ours)) + '\n')
    return python


@pytest.mark.parametrize('kind', ['wheel', 'sdist'])
def test_installs_into_fresh_venv(kind, dists, tmp_path):
    wheel, sdist = dists
    python = _fresh_venv(tmp_path / 'venv')
    # pip of this environment installs into the fresh venv (pip --python); the sdist builds with our setuptools
    _run(
        [sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-build-isolation', '-q']
        + [wheel if kind == 'wheel' else sdist]
    )
    cwd = tmp_path  # not the source tree: `import timm_tm` must find the installed copy
    code = (
        'import timm, timm_tm; from timm_tm.data import load_mnist_npz; assert load_mnist_npz()[0].shape[0] == 10000; '
        'print(timm_tm.__file__); print(timm.list_models("tm_*"))'
    )
    out = _run([python, '-c', code], cwd=cwd).stdout
    where, listed = out.splitlines()[-2:]
    assert Path(where).resolve().is_relative_to((tmp_path / 'venv').resolve()), where
    for name in FAMILY + ['tm_resnet18_small']:
        assert repr(name) in listed
    script = python.parent / ('timm-tm.exe' if os.name == 'nt' else 'timm-tm')
    help_text = _run([script, '--help'], cwd=cwd).stdout
    assert 'usage: timm-tm COMMAND' in help_text and 'compare' in help_text

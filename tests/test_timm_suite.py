"""timm's own model tests (``tests/test_models.py`` of the timm sdist of the installed version) on the tm_* models.

The sdist comes from PyPI (``pip download --no-binary :all: timm==<installed>``) into ``<repo>/.cache/timm-sdist``
(git-ignored) once; without it (no registry access) the test skips with the reason. timm's tests then run in a
subprocess that imports ``timm_tm`` before pytest collects them, so that their module-level ``list_models(...)``
parametrizations include the tm_* models, and :class:`TmModelsOnly` keeps the tm_* parametrizations only.

Left out, always: ``test_model_load_pretrained`` / ``test_model_features_pretrained`` (they download from the
Hugging Face Hub; tests/test_exactness.py loads each base's weights through timm's loader offline instead).
Left out to keep the suite fast (``pytest -m full_timm_suite`` runs them too): the tests that cost most on a big
model, where a smaller model of the family runs them on the same kinds of block (``FULL_ONLY``), and the cfg test of
those models' other tags than the default. Every tm_* model still runs the forward, the default tag's cfg and the
features tests; the FX, TorchScript and backward tests run on every kind of block the family has: basic and
bottleneck blocks, the plain and the deep (ResNet-D) stem, strided-conv and average-pool downsampling, groups
(ResNeXt), SE and ECA attention (tm_resnet18d, tm_seresnext50_32x4d, tm_ecaresnet50d for the last four). What is
left out is a deeper or wider stack of those: tm_resnet34d, 50d and 101d of tm_resnet18d's, tm_resnext50_32x4d of
tm_seresnext50_32x4d's, tm_wide_resnet50_2 of tm_resnet50's (wider bottlenecks), tm_resnet101 and 152 of
tm_resnet50's. For the other timm CNNs (tm_convnext_tiny, tm_regnety_016, tm_efficientnet_b0: one mechanism,
timm_tm/models/tm_attach.py, whose FX path tests/test_tm_attach.py checks on each) the FX tests.
"""

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / '.cache' / 'timm-sdist'
NEEDS_HUB = {'test_model_load_pretrained', 'test_model_features_pretrained'}
FX_TESTS = {'test_model_forward_fx', 'test_model_backward_fx', 'test_model_forward_fx_torchscript'}
TORCHSCRIPT, BACKWARD, CFG = 'test_model_forward_torchscript', 'test_model_backward', 'test_model_default_cfgs'
# per model, the tests only the full suite runs (module docstring: which smaller model runs them on the same blocks)
FULL_ONLY = {
    'tm_resnet101': FX_TESTS,
    'tm_resnet152': FX_TESTS | {BACKWARD},
    'tm_resnet34d': FX_TESTS | {TORCHSCRIPT},
    'tm_resnet50d': FX_TESTS | {TORCHSCRIPT},
    'tm_resnet101d': FX_TESTS | {TORCHSCRIPT, BACKWARD},
    'tm_resnext50_32x4d': FX_TESTS | {TORCHSCRIPT},
    'tm_seresnext50_32x4d': FX_TESTS,
    'tm_ecaresnet50d': FX_TESTS,
    'tm_wide_resnet50_2': FX_TESTS | {TORCHSCRIPT, BACKWARD},
    'tm_convnext_tiny': FX_TESTS,
    'tm_regnety_016': FX_TESTS,
    'tm_efficientnet_b0': FX_TESTS,
}
# the timm test functions every tm_* architecture must pass
CORE_TESTS = {
    'forward': 'test_model_forward',
    'backward': BACKWARD,
    'cfg': CFG,
    'torchscript': TORCHSCRIPT,
    'features': 'test_model_forward_features',
}


def _left_out(test: str, model_name: str) -> bool:
    """Fast subset: True for the parametrizations that only the full_timm_suite test runs (module docstring)."""
    arch, _, tag = model_name.partition('.')
    if arch not in FULL_ONLY:
        return False
    if test == CFG:
        from timm.models import get_pretrained_cfg

        return bool(tag) and tag != get_pretrained_cfg(arch).tag  # the default tag's cfg runs
    return test in FULL_ONLY[arch]


class TmModelsOnly:
    """pytest plugin for the subprocess: keeps timm's tests parametrized by a tm_* model, records the outcomes."""

    def __init__(self, report_path: str, full: bool = False):
        self.report_path = report_path
        self.full = full
        self.outcomes = {}

    def pytest_collection_modifyitems(self, config, items):
        keep, drop = [], []
        for item in items:
            model_name = getattr(getattr(item, 'callspec', None), 'params', {}).get('model_name')
            test = getattr(item, 'originalname', item.name)
            selected = (
                isinstance(model_name, str)
                and model_name.startswith('tm_')
                and test not in NEEDS_HUB
                and (self.full or not _left_out(test, model_name))
            )
            (keep if selected else drop).append(item)
        items[:] = keep
        config.hook.pytest_deselected(items=drop)

    def pytest_runtest_logreport(self, report):
        if report.when == 'call' or report.outcome != 'passed':
            self.outcomes[report.nodeid] = report.outcome

    def pytest_sessionfinish(self, session):
        Path(self.report_path).write_text(json.dumps(self.outcomes))


def _timm_tests_dir() -> Path:
    """timm's sdist for the installed version, downloaded once and unpacked (tests/ and pyproject.toml)."""
    import timm

    version = timm.__version__
    unpacked = CACHE / f'timm-{version}'
    if (unpacked / 'tests' / 'test_models.py').is_file():
        return unpacked
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f'timm-{version}.tar.gz'
    if not sdist.is_file():
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', f'timm=={version}']
        result = subprocess.run(cmd + ['-d', str(CACHE), '-q'], capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not sdist.is_file():
            pytest.skip(f'could not download the timm {version} sdist from PyPI: {result.stderr.strip()[-500:]}')
    # unpack next to the target and rename into place: a concurrent or interrupted run never sees half a tree
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix='.unpack-'))
    with tarfile.open(sdist) as tar:
        prefix = f'timm-{version}/'
        members = [m for m in tar.getmembers() if m.name.startswith((prefix + 'tests/', prefix + 'pyproject.toml'))]
        try:
            tar.extractall(tmp, members=members, filter='data')
        except TypeError:  # Python without tarfile extraction filters
            tar.extractall(tmp, members=members)
    try:
        os.replace(tmp / f'timm-{version}', unpacked)
    except OSError:  # another run got there first
        pass
    return unpacked


@pytest.mark.timm_suite
@pytest.mark.timeout(1800)
def test_timm_model_tests_pass_on_tm_models(tmp_path):
    _run_timm_model_tests(tmp_path, full=False)


@pytest.mark.full_timm_suite
@pytest.mark.timeout(7200)
def test_all_timm_model_tests_pass_on_tm_models(tmp_path):
    _run_timm_model_tests(tmp_path, full=True)


def _run_timm_model_tests(tmp_path: Path, full: bool) -> None:
    import timm

    unknown = set(FULL_ONLY) - set(timm.list_models('tm_*'))
    assert not unknown, f'FULL_ONLY names models that are not registered: {sorted(unknown)}'
    timm_dir = _timm_tests_dir()
    report = tmp_path / 'outcomes.json'
    code = (
        'import sys; import timm_tm; import pytest; '  # timm_tm first: registers tm_* before timm's module-level lists
        f'sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_timm_suite import TmModelsOnly; '
        f'sys.exit(pytest.main(sys.argv[1:], plugins=[TmModelsOnly({str(report)!r}, full={full})]))'
    )
    args = ['tests/test_models.py', '-q', '-p', 'no:cacheprovider', '-o', 'addopts=', '-rfEs']
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    result = subprocess.run(
        [sys.executable, '-c', code, *args],
        cwd=timm_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=7000 if full else 1700,
    )
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert report.is_file(), f'timm test run did not finish (exit {result.returncode}):\n{tail}'
    outcomes = json.loads(report.read_text())
    assert outcomes, f'no tm_* test was collected from {timm_dir}/tests/test_models.py:\n{tail}'
    failed = sorted(k for k, v in outcomes.items() if v != 'passed')
    assert not failed and result.returncode == 0, f'timm tests failed on tm_* models: {failed}\n{tail}'

    # every tm_* architecture ran (and passed) each core test, not only some of them
    passed = [k.split('::')[-1] for k, v in outcomes.items() if v == 'passed']
    for arch in timm.list_models('tm_*'):
        for kind, test in CORE_TESTS.items():
            if not full and _left_out(test, arch):
                continue
            ran = [p for p in passed if p.startswith(f'{test}[') and (p.endswith(f'-{arch}]') or f'-{arch}.' in p)]
            assert ran, f'{arch}: no passing {test} ({kind}) in {sorted(passed)}'

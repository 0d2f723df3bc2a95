"""Shared fixtures, and the test selection by marker (declared in pyproject.toml).

Real MNIST digits ship with the package (timm_tm/assets); TIMM_TM_MNIST points elsewhere.

Markers: ``slow`` (trains for epochs; deselect with ``-m "not slow"``), ``timm_suite`` (timm's own test_models.py on
the tm_* models, fast subset), and three kinds that run only when selected, each skipped with its reason otherwise:
``inductor`` (``-m inductor``: inductor compiles C++ for minutes on a CPU machine), ``full_timm_suite``
(``-m full_timm_suite``: the rest of timm's test_models.py parametrizations) and ``train_script`` (timm's train.py,
validate.py, benchmark.py, which are not in timm's wheel: they run when ``--train-py=PATH`` or TIMM_TRAIN_PY gives
train.py; write the "=", or pytest reads the path as one to collect tests from).
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import timm_tm  # noqa: F401  (registers tm_* before any test module builds a model)

ROOT = Path(__file__).resolve().parents[1]
MNIST_NPZ = Path(os.environ.get('TIMM_TM_MNIST', ROOT / 'timm_tm' / 'assets' / 'mnist10k.npz'))


def randomize_tm_embeddings(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random embeddings in every TM block of ``model`` (a block itself included): a fresh block is the identity,
    which would hide a block that is skipped, mis-loaded or mis-ordered."""
    from timm_tm import TemplateMatching

    blocks = [m for m in model.modules() if isinstance(m, TemplateMatching)]
    assert blocks, 'no TM blocks to randomize: the test would prove nothing'
    with torch.no_grad():
        for tm in blocks:
            assert tm.embedding != 'none', 'a block without embedding cannot change the features'
            for key in tm.identity_state_keys():
                if key != 'evidence_weight':
                    torch.nn.init.normal_(tm.get_parameter(key), std=std)
    return model


def tm_at_identity(model: torch.nn.Module) -> bool:
    """Whether every TM block of ``model`` changes neither the features nor the logits (its identity keys are 0)."""
    from timm_tm import TemplateMatching

    blocks = [m for m in model.modules() if isinstance(m, TemplateMatching)]
    assert blocks, 'no TM blocks: the check would prove nothing'
    keys = [(tm, k) for tm in blocks for k in tm.identity_state_keys()]
    assert keys, "no identity keys (embedding='none', evidence_mode='gradient'): the check would prove nothing"
    return all(not tm.state_dict()[k].any() for tm, k in keys)


# marker -> why its tests are skipped unless ``-m`` names it
OPT_IN_MARKERS = {
    'inductor': 'inductor compiles C++ for minutes on a small CPU machine: select it with -m inductor',
    'full_timm_suite': "the rest of timm's test_models.py on tm_* (slow): select it with -m full_timm_suite",
}


def pytest_addoption(parser):
    parser.addoption(
        '--train-py',
        default=os.environ.get('TIMM_TRAIN_PY'),
        help="timm's train.py (validate.py and benchmark.py beside it) for the train_script tests; "
        'default: $TIMM_TRAIN_PY',
    )


def pytest_collection_modifyitems(config, items):
    selected = config.getoption('markexpr') or ''
    for item in items:
        for marker, reason in OPT_IN_MARKERS.items():
            if marker in item.keywords and marker not in selected:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope='session')
def train_py(pytestconfig) -> Path:
    """timm's train.py (``--train-py`` / TIMM_TRAIN_PY); the test skips without it."""
    path = pytestconfig.getoption('train_py')
    if not path:
        pytest.skip("timm's train.py is not given: pass --train-py=PATH (or set TIMM_TRAIN_PY)")
    if not Path(path).is_file():
        pytest.fail(f'--train-py / TIMM_TRAIN_PY: {path} is not a file')
    return Path(path)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small models train faster so on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def mnist_arrays():
    """(10000 x 28 x 28 uint8, labels) real MNIST digits (the packaged copy)."""
    if not MNIST_NPZ.is_file():
        pytest.skip(f'real MNIST data not found at {MNIST_NPZ}')
    from timm_tm.data import load_mnist_npz

    return load_mnist_npz(str(MNIST_NPZ))

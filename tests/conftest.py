"""Shared fixtures. Real MNIST digits ship with the package (timm_tm/assets); TIMM_TM_MNIST points elsewhere."""

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
    return all(not tm.state_dict()[k].any() for tm in blocks for k in tm.identity_state_keys())


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

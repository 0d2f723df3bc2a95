"""Params, GMACs and activations, counted the way timm's benchmark.py profiles models (fvcore).

fvcore counts one multiply-add as one "flop", so its total is MACs, the number timm's model cards report.
"""

import warnings
from typing import Dict, Tuple

import torch
import torch.nn as nn

__all__ = ['profile_model']


def profile_model(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)) -> Dict[str, float]:
    """``{'params_m', 'gmacs', 'activations_m'}`` of ``model`` for one C x H x W input (batch 1, eval mode).

    Requires fvcore (``pip install fvcore``), as timm's ``benchmark.py --bench profile`` does.
    """
    # fvcore scripts and traces with torch.jit (on import, and on every call), which recent torch marks deprecated:
    # those warnings say nothing about the model, so they are kept out of every caller's output here
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=FutureWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        macs, activations = _count(model, input_size)
    return {
        'params_m': sum(p.numel() for p in model.parameters()) / 1e6,
        'gmacs': macs / 1e9,
        'activations_m': activations / 1e6,
    }


def _count(model: nn.Module, input_size: Tuple[int, int, int]) -> Tuple[float, float]:
    """(multiply-adds, activations) of ``model`` for one C x H x W input, counted by fvcore in eval mode."""
    try:
        from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
    except ImportError as e:
        raise ImportError('profile_model needs fvcore, as timm benchmark.py profiling does: pip install fvcore') from e
    param = next(model.parameters())
    x = torch.ones((1, *input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flops = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            acts = ActivationCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return flops.total(), acts.total()
    finally:
        model.train(was_training)

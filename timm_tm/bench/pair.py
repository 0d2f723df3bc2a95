"""One pair, a tm_* model against the timm model it is built on (tm_X against timm's X: resnet50d, convnext_tiny,
...): params and GMACs once, then per variant (eager, compiled) the alternating timing of each mode, the peak memory
and the targets met."""

import gc
from typing import Any, Dict, Optional, Tuple

import timm
import torch

from timm_tm.models import base_model_name
from timm_tm.models.tm_resnet import TM_ARCHS, tm_baseline
from timm_tm.profiling import profile_model

from .memory import cpu_memory, cuda_memory
from .report import targets_met
from .runner import Runner, create_model, ratio_block, time_alternating

__all__ = ['BENCH_MODELS', 'bench_base', 'bench_models', 'bench_pair', 'profile_pair']


# the ResNet family's members with a twin in timm (tm_X against timm's X); tm_resnet18_small's baseline is itself
# without TM blocks, which `timm-tm compare` trains against it
BENCH_MODELS = tuple(name for name in TM_ARCHS if not tm_baseline(name)[1])


def bench_base(name: str) -> Optional[str]:
    """The timm model the tm_* model ``name`` (an architecture) is benched against: timm's X for tm_X of
    :data:`BENCH_MODELS` (``tm_baseline``); for a tm_* model outside the ResNet family (``tm_attach``:
    tm_convnext_tiny, ...) the timm model it is built on (``base_model_name``); None when there is no such model."""
    if name in TM_ARCHS:
        return tm_baseline(name)[0] if name in BENCH_MODELS else None
    if name not in timm.list_models('tm_*'):
        return None
    try:
        return base_model_name(name)
    except ValueError:
        return None


def bench_models() -> Tuple[str, ...]:
    """Every tm_* model :func:`bench_base` knows a base of: :data:`BENCH_MODELS`, then the other timm CNNs."""
    others = [name for name in timm.list_models('tm_*') if name not in TM_ARCHS and bench_base(name)]
    return BENCH_MODELS + tuple(others)


def _profile(name: str, num_classes: int, kwargs: Dict[str, Any], img_size: int) -> Optional[Dict[str, float]]:
    """Params / GMACs / activations of one model (None, said in one line, without fvcore)."""
    model = create_model(name, num_classes, kwargs, torch.device('cpu'), False)
    try:
        return profile_model(model, (3, img_size, img_size))
    except ImportError as e:
        print(f'  (no params / GMACs: {e})', flush=True)
        return None


def profile_pair(tm: str, base: str, tm_kwargs: Dict[str, Any], num_classes: int, img_size: int) -> Dict[str, Any]:
    """``{'tm', 'base'}`` profiles, and with both the GMACs overhead and params ratio of ``tm`` over ``base``."""
    prof = {'tm': _profile(tm, num_classes, tm_kwargs, img_size), 'base': _profile(base, num_classes, {}, img_size)}
    if prof['tm'] and prof['base']:
        prof['gmacs_overhead'] = prof['tm']['gmacs'] / prof['base']['gmacs'] - 1
        prof['params_ratio'] = prof['tm']['params_m'] / prof['base']['params_m']
    return prof


def _build_runners(
    models: Dict[str, Dict[str, Any]], cfg: Dict[str, Any], compile_model: bool, memory: bool
) -> Tuple[Dict[str, Runner], Dict[str, Dict[str, float]]]:
    """The runner of each model, and each model's peak memory: on CUDA always (measured while its runner warms
    up), on the CPU with ``memory`` (a subprocess per model, before any model is built here)."""
    device = torch.device(cfg['device'])
    runners: Dict[str, Runner] = {}
    peaks: Dict[str, Dict[str, float]] = {}
    if device.type == 'cuda':
        for name, kwargs in models.items():
            peaks[name], runners[name] = cuda_memory(name, kwargs, cfg, device, cfg['modes'], compile_model)
        return runners, peaks
    if memory:
        for name, kwargs in models.items():
            peaks[name] = cpu_memory(name, kwargs, dict(cfg, compile=compile_model), cfg['modes'])
    for name, kwargs in models.items():
        model = create_model(name, cfg['num_classes'], kwargs, device, cfg['channels_last'])
        runners[name] = Runner(model, cfg, device, compile_model)
    return runners, peaks


def _bench_variant(
    tm: str, base: str, models: Dict[str, Dict[str, Any]], cfg: Dict[str, Any], compile_model: bool, memory: bool
) -> Dict[str, Any]:
    """One variant of the pair (eager or compiled): images/s per mode, peak memory per mode (MB), ratios TM / base."""
    run: Dict[str, Any] = {'variant': 'compiled' if compile_model else 'eager'}
    runners, peaks = _build_runners(models, cfg, compile_model, memory)
    for mode in cfg['modes']:
        timing = time_alternating(runners, mode, cfg['batch_size'], cfg['rounds'], cfg['warmup'], cfg['min_seconds'])
        run[mode] = ratio_block(timing, tm, base)
    if peaks:
        run['memory_mb'] = {
            mode: {
                tm: peaks[tm][f'{mode}_peak_mb'],
                base: peaks[base][f'{mode}_peak_mb'],
                'ratio': peaks[tm][f'{mode}_peak_mb'] / peaks[base][f'{mode}_peak_mb'],
            }
            for mode in cfg['modes']
        }
    # free this variant's models (and on CUDA their cached blocks) before the next variant builds its own
    del runners
    gc.collect()
    if cfg['device'].startswith('cuda'):
        torch.cuda.empty_cache()
    return run


def bench_pair(
    name: str,
    cfg: Dict[str, Any],
    tm_kwargs: Optional[Dict[str, Any]] = None,
    memory: bool = True,
    profile: bool = True,
) -> Dict[str, Any]:
    """Benchmark the tm_* model ``name`` against :func:`bench_base` of it (tm_resnet50d against resnet50d,
    tm_convnext_tiny against convnext_tiny); ``cfg`` as :func:`timm_tm.bench.cli.resolve_config` builds it.
    ``memory``: peak memory on the CPU too (on CUDA it is always measured); ``profile``: params / GMACs."""
    tm_kwargs = dict(tm_kwargs or {})
    tm, base = name, bench_base(name)
    if base is None:
        raise ValueError(f'{name} has no twin in timm: nothing to bench (the models: {", ".join(bench_models())})')
    result: Dict[str, Any] = {
        'tm_model': tm,
        'base_model': base,
        'tm_kwargs': {k: list(v) if isinstance(v, tuple) else v for k, v in tm_kwargs.items()},
        'num_classes': cfg['num_classes'],
    }
    if profile:
        result['profile'] = profile_pair(tm, base, tm_kwargs, cfg['num_classes'], cfg['img_size'])
    models = {tm: tm_kwargs, base: {}}
    result['runs'] = []
    for compile_model in cfg['compile']:
        run = _bench_variant(tm, base, models, cfg, compile_model, memory)
        run['targets_met'] = targets_met(run, result.get('profile'))
        result['runs'].append(run)
    return result

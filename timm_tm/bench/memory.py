"""Peak memory of one model's steps, counted from before the model is built.

CPU: the peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) in a fresh subprocess
per model, so that neither model reuses memory the other one freed. CUDA: ``torch.cuda.max_memory_allocated``.
"""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import torch

from .machine import proc_status_kb, reset_peak_rss
from .runner import Runner, create_model, sync

__all__ = ['CPU_MEMORY_METHOD', 'CUDA_MEMORY_METHOD', 'cpu_memory', 'cuda_memory', 'memory_worker']

CPU_MEMORY_METHOD = (
    'peak resident set size (Linux VmHWM, reset via /proc/self/clear_refs) minus the resident size before the model '
    'is built, in a fresh subprocess per model: weights, gradients, optimizer state, activations and allocator '
    'overhead, as the OS sees them'
)
CUDA_MEMORY_METHOD = (
    'torch.cuda.max_memory_allocated() minus memory_allocated() before the model is built: weights, gradients, '
    'optimizer state and activations'
)
STEPS = 3  # steps per mode inside the measured window

# the folder that holds timm_tm, for the subprocess to import this very copy of it
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
WORKER_CODE = (
    'import json, sys; from timm_tm.bench.memory import memory_worker; '
    'print(json.dumps(memory_worker(json.loads(sys.argv[1]))))'
)


def memory_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: peak RSS of one model's inference and training steps, in MB.

    ``spec``: the run's config plus ``model``, ``kwargs``, ``modes``, ``steps`` and ``compile`` (a bool).
    """
    torch.set_num_threads(spec['threads'])
    device = torch.device('cpu')
    gc.collect()
    reset_peak_rss()
    baseline_kb = proc_status_kb('VmRSS')
    model = create_model(spec['model'], spec['num_classes'], spec['kwargs'], device, spec['channels_last'])
    runner = Runner(model, spec, device, spec['compile'])
    out = {'baseline_mb': baseline_kb / 1024}
    for mode in spec['modes']:
        reset_peak_rss()
        runner.prepare(mode)
        for _ in range(spec['steps']):
            runner.step()
        out[f'{mode}_peak_mb'] = (proc_status_kb('VmHWM') - baseline_kb) / 1024
    return out


def cpu_memory(name: str, kwargs: Dict[str, Any], cfg: Dict[str, Any], modes: Sequence[str]) -> Dict[str, float]:
    """``{'baseline_mb', '<mode>_peak_mb', ...}`` of model ``name`` (``cfg['compile']`` a bool), from a subprocess."""
    if proc_status_kb('VmHWM') is None or not reset_peak_rss():
        raise RuntimeError('CPU peak memory needs Linux /proc/self/status and /proc/self/clear_refs (use --no-memory)')
    spec = dict(cfg, model=name, kwargs=kwargs, modes=list(modes), steps=STEPS)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get('PYTHONPATH')) if p)
    proc = subprocess.run(
        [sys.executable, '-c', WORKER_CODE, json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ['no error output'])[-1]  # the exception line of its traceback
        raise RuntimeError(f'the memory subprocess for {name} failed (exit {proc.returncode}): {last}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_memory(
    name: str,
    kwargs: Dict[str, Any],
    cfg: Dict[str, Any],
    device: torch.device,
    modes: Sequence[str],
    compile_model: bool,
) -> Tuple[Dict[str, float], Runner]:
    """Peak allocation (MB) of one model's steps, counted from before it is built; returns the (warm) runner too."""
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    model = create_model(name, cfg['num_classes'], kwargs, device, cfg['channels_last'])
    runner = Runner(model, cfg, device, compile_model)
    out = {}
    for mode in modes:
        runner.prepare(mode)
        runner.step()  # first step (and compilation) before the window: the peak of steady-state steps
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(STEPS):
            runner.step()
        sync(device)
        out[f'{mode}_peak_mb'] = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    # the runner stays on the device: later models' baselines include it, so it cancels out of their numbers
    return out, runner

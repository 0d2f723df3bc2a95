"""``timm-tm bench``: the cost of the TM blocks, tm_resnetX against timm's resnetX side by side.

Both models of a pair run in one process, alternating A B, B A, A B, ... (the order flips every round so that a
slow drift of the machine hits both alike), for inference (``model(x)`` in eval mode under ``torch.no_grad``) and
for a full training step (zero_grad, forward, cross-entropy, backward, SGD step). Every round gives each model's
images/s; the report gives the median per model, the ratio of the medians (TM / baseline) and the spread of the
per-round ratios (a burst on the machine shows up as one outlying round, not as a biased median).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` from before the model is built (weights, gradients,
optimizer state, activations); on the CPU the peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the model is built, in a fresh subprocess per model,
so that neither model reuses memory the other one freed.

Params and GMACs come from :func:`timm_tm.profiling.profile_model` (fvcore, as timm's benchmark.py counts them).
``--scale`` sweeps the class count, the templates per class and the TM stages of one model instead.
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['main', 'TARGETS', 'bench_pair', 'parse_models']

# targets of the default configuration (tm_resnet50 against resnet50, 1000 classes)
TARGETS = {
    'infer_ratio_min': 0.90,
    'train_ratio_min': 0.85,
    'train_memory_ratio_max': 1.15,
    'gmacs_overhead_max': 0.10,
}
DEPTHS = (18, 26, 34, 50, 101, 152)
STAGES = (1, 2, 3, 4)
MODES = ('infer', 'train')

CPU_MEMORY_METHOD = (
    'peak resident set size (Linux VmHWM, reset via /proc/self/clear_refs) minus the resident size before the model '
    'is built, in a fresh subprocess per model: weights, gradients, optimizer state, activations and allocator '
    'overhead, as the OS sees them'
)
CUDA_MEMORY_METHOD = (
    'torch.cuda.max_memory_allocated() minus memory_allocated() before the model is built: weights, gradients, '
    'optimizer state and activations'
)


def parse_models(spec: str) -> List[int]:
    """'18,50,101' (or 'resnet50', 'tm_resnet50') -> [18, 50, 101]."""
    depths = []
    for item in spec.split(','):
        item = item.strip()
        digits = item.removeprefix('tm_').removeprefix('resnet')
        if not digits.isdigit() or int(digits) not in DEPTHS:
            raise ValueError(f'--models: {item!r} is not one of the ResNet depths {DEPTHS} (e.g. --models 18,50,101)')
        depths.append(int(digits))
    return depths


def _parse_ints(spec: str, name: str, minimum: int = 1) -> List[int]:
    try:
        values = [int(v) for v in spec.split(',') if v.strip()]
    except ValueError:
        raise ValueError(f'{name}: expected comma-separated integers, got {spec!r}') from None
    if not values or any(v < minimum for v in values):
        raise ValueError(f'{name}: expected comma-separated integers >= {minimum}, got {spec!r}')
    return values


def _parse_stages(spec: str, name: str) -> Tuple[int, ...]:
    """'3,4' -> (3, 4); '' -> () (no TM blocks). Distinct ResNet stages 1-4, else a ValueError naming ``name``."""
    if not spec.strip():
        return ()
    stages = _parse_ints(spec, name)
    if any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f'{name}: expected distinct ResNet stages from {STAGES}, e.g. 3,4, got {spec!r}')
    return tuple(stages)


def _check_output(path: str, force: bool) -> None:
    """Refuse, before the run, an --output that cannot be written, or that exists without ``force``."""
    if not path:
        raise ValueError('--output: empty; name a JSON file, e.g. -o bench.json')
    if path.endswith(('/', os.sep)) or os.path.isdir(path):
        example = os.path.join(path, 'bench.json')
        raise ValueError(f'--output: {path} is a directory; name a JSON file, e.g. -o {example}')
    if os.path.lexists(path):
        if not os.path.isfile(path):
            raise ValueError(f'--output: {path} exists and is not a regular file; name another file')
        if not force:
            raise ValueError(f'--output: {path} exists; pass --force to overwrite it, or name another file')
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # the folders still to create: the first existing one must be a writable dir
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f'--output: cannot create {path}: {parent} is not a writable folder')


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM to the current VmRSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _create(name: str, num_classes: int, kwargs: Dict[str, Any], device: torch.device, channels_last: bool):
    import timm

    import timm_tm  # noqa: F401  (registers the tm_* models)

    model = timm.create_model(name, num_classes=num_classes, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class _Runner:
    """One model, its batch and its optimizer; ``prepare(mode)`` then ``step()`` runs one inference / train step."""

    def __init__(self, model: nn.Module, cfg: Dict[str, Any], device: torch.device, compile_model: bool):
        self.model = model
        self.device = device
        generator = torch.Generator().manual_seed(0)
        size = (cfg['batch_size'], 3, cfg['img_size'], cfg['img_size'])
        self.x = torch.randn(size, generator=generator).to(device)
        if cfg['channels_last']:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        num_classes = max(1, cfg['num_classes'])
        self.target = torch.randint(0, num_classes, (cfg['batch_size'],), generator=generator).to(device)
        amp_dtype = cfg['amp_dtype']
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        # a small learning rate keeps the weights (and so the arithmetic) in range over the timed steps
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        self.forward = torch.compile(model) if compile_model else model
        self.mode = 'infer'

    def prepare(self, mode: str) -> None:
        self.mode = mode
        self.model.train(mode == 'train')

    def step(self) -> None:
        if self.mode == 'infer':
            with torch.no_grad(), self.autocast():
                self.forward(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.x).float(), self.target)
        loss.backward()
        self.optimizer.step()

    def timed(self, iters: int) -> float:
        """Seconds for ``iters`` steps (device synchronized before and after)."""
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            self.step()
        _sync(self.device)
        return time.perf_counter() - start


def _summary(values: Sequence[float]) -> Dict[str, Any]:
    values = list(values)
    return {
        'median': statistics.median(values),
        'min': min(values),
        'max': max(values),
        'per_round': values,
    }


def time_alternating(
    runners: Dict[str, _Runner],
    mode: str,
    batch_size: int,
    rounds: int,
    warmup: int,
    min_seconds: float,
) -> Dict[str, Any]:
    """Images/s per round of each runner (A B, B A, A B, ...), with ``iters`` steps per runner and round."""
    names = list(runners)
    slowest = 0.0
    for name in names:
        runner = runners[name]
        runner.prepare(mode)
        for _ in range(max(1, warmup)):
            slowest = max(slowest, runner.timed(1))
    iters = max(1, math.ceil(min_seconds / max(slowest, 1e-9)))
    ips: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runner = runners[name]
            runner.prepare(mode)
            ips[name].append(iters * batch_size / runner.timed(iters))
    return {'iters_per_round': iters, 'images_per_s': {name: _summary(v) for name, v in ips.items()}, 'ips': ips}


def _ratio_block(timing: Dict[str, Any], tm: str, base: str) -> Dict[str, Any]:
    ips = timing.pop('ips')
    round_ratios = [a / b for a, b in zip(ips[tm], ips[base])]
    per_model = timing['images_per_s']
    return {
        **timing,
        'ratio': per_model[tm]['median'] / per_model[base]['median'],
        'round_ratios': _summary(round_ratios),
    }


def _memory_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: peak RSS of one model's inference and training steps, in MB."""
    torch.set_num_threads(spec['threads'])
    device = torch.device('cpu')
    gc.collect()
    _reset_peak_rss()
    baseline_kb = _proc_status_kb('VmRSS')
    model = _create(spec['model'], spec['num_classes'], spec['kwargs'], device, spec['channels_last'])
    runner = _Runner(model, spec, device, spec['compile'])
    out = {'baseline_mb': baseline_kb / 1024}
    for mode in spec['modes']:
        _reset_peak_rss()
        runner.prepare(mode)
        for _ in range(spec['steps']):
            runner.step()
        out[f'{mode}_peak_mb'] = (_proc_status_kb('VmHWM') - baseline_kb) / 1024
    return out


def _cpu_memory(name: str, kwargs: Dict[str, Any], cfg: Dict[str, Any], modes: Sequence[str]) -> Dict[str, float]:
    if _proc_status_kb('VmHWM') is None or not _reset_peak_rss():
        raise RuntimeError('CPU peak memory needs Linux /proc/self/status and /proc/self/clear_refs (use --no-memory)')
    spec = dict(cfg, model=name, kwargs=kwargs, modes=list(modes), steps=3)
    code = (
        'import json, sys; from timm_tm.bench import _memory_worker; '
        'print(json.dumps(_memory_worker(json.loads(sys.argv[1]))))'
    )
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    proc = subprocess.run(
        [sys.executable, '-c', code, json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f'memory subprocess for {name} failed:\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cuda_memory(
    name: str, kwargs: Dict[str, Any], cfg: Dict[str, Any], device: torch.device, modes: Sequence[str], compile_: bool
) -> Tuple[Dict[str, float], _Runner]:
    """Peak allocation of one model's steps, counted from before it is built; returns the (warm) runner too."""
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    model = _create(name, cfg['num_classes'], kwargs, device, cfg['channels_last'])
    runner = _Runner(model, cfg, device, compile_)
    out = {}
    for mode in modes:
        runner.prepare(mode)
        runner.step()  # first step (and compilation) before the window: the peak of steady-state steps
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            runner.step()
        _sync(device)
        out[f'{mode}_peak_mb'] = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    # the runner stays on the device: later models' baselines include it, so it cancels out of their numbers
    return out, runner


def _profile(name: str, num_classes: int, kwargs: Dict[str, Any], img_size: int) -> Optional[Dict[str, float]]:
    try:
        from timm_tm.profiling import profile_model

        model = _create(name, num_classes, kwargs, torch.device('cpu'), False)
        with warnings.catch_warnings():
            # fvcore traces with torch.jit, which recent torch marks deprecated on every call
            warnings.filterwarnings('ignore', category=FutureWarning)
            warnings.filterwarnings('ignore', category=DeprecationWarning)
            return profile_model(model, (3, img_size, img_size))
    except ImportError as e:
        print(f'  (no params / GMACs: {e})', flush=True)
        return None


def bench_pair(
    depth: int,
    cfg: Dict[str, Any],
    tm_kwargs: Optional[Dict[str, Any]] = None,
    memory: bool = True,
    profile: bool = True,
) -> Dict[str, Any]:
    """Benchmark ``tm_resnet{depth}`` against ``resnet{depth}``; ``cfg`` as built by :func:`main`."""
    tm_kwargs = dict(tm_kwargs or {})
    tm, base = f'tm_resnet{depth}', f'resnet{depth}'
    names = {tm: tm_kwargs, base: {}}
    device = torch.device(cfg['device'])
    result: Dict[str, Any] = {
        'tm_model': tm,
        'base_model': base,
        'tm_kwargs': {k: list(v) if isinstance(v, tuple) else v for k, v in tm_kwargs.items()},
        'num_classes': cfg['num_classes'],
    }
    if profile:
        prof = {'tm': _profile(tm, cfg['num_classes'], tm_kwargs, cfg['img_size'])}
        prof['base'] = _profile(base, cfg['num_classes'], {}, cfg['img_size'])
        if prof['tm'] and prof['base']:
            prof['gmacs_overhead'] = prof['tm']['gmacs'] / prof['base']['gmacs'] - 1
            prof['params_ratio'] = prof['tm']['params_m'] / prof['base']['params_m']
        result['profile'] = prof
    result['runs'] = []
    for compile_ in cfg['compile']:
        run: Dict[str, Any] = {'variant': 'compiled' if compile_ else 'eager'}
        runners: Dict[str, _Runner] = {}
        mem: Dict[str, Dict[str, float]] = {}
        if device.type == 'cuda':
            for name, kwargs in names.items():
                mem[name], runners[name] = _cuda_memory(name, kwargs, cfg, device, cfg['modes'], compile_)
        else:
            if memory:
                for name, kwargs in names.items():
                    mem[name] = _cpu_memory(name, kwargs, dict(cfg, compile=compile_), cfg['modes'])
            for name, kwargs in names.items():
                model = _create(name, cfg['num_classes'], kwargs, device, cfg['channels_last'])
                runners[name] = _Runner(model, cfg, device, compile_)
        for mode in cfg['modes']:
            timing = time_alternating(
                runners, mode, cfg['batch_size'], cfg['rounds'], cfg['warmup'], cfg['min_seconds']
            )
            run[mode] = _ratio_block(timing, tm, base)
        if mem and (device.type == 'cuda' or memory):
            run['memory_mb'] = {
                mode: {
                    tm: mem[tm][f'{mode}_peak_mb'],
                    base: mem[base][f'{mode}_peak_mb'],
                    'ratio': mem[tm][f'{mode}_peak_mb'] / mem[base][f'{mode}_peak_mb'],
                }
                for mode in cfg['modes']
            }
        run['targets_met'] = _targets_met(run, result.get('profile'))
        result['runs'].append(run)
        del runners
        gc.collect()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return result


def _targets_met(run: Dict[str, Any], prof: Optional[Dict[str, Any]]) -> Dict[str, Optional[bool]]:
    met: Dict[str, Optional[bool]] = {}
    if 'infer' in run:
        met['infer_ratio'] = run['infer']['ratio'] >= TARGETS['infer_ratio_min']
    if 'train' in run:
        met['train_ratio'] = run['train']['ratio'] >= TARGETS['train_ratio_min']
        if 'memory_mb' in run:
            met['train_memory_ratio'] = run['memory_mb']['train']['ratio'] <= TARGETS['train_memory_ratio_max']
    if prof and 'gmacs_overhead' in prof:
        met['gmacs_overhead'] = prof['gmacs_overhead'] <= TARGETS['gmacs_overhead_max']
    return met


def _fmt_ratio(block: Dict[str, Any]) -> str:
    rr = block['round_ratios']
    return f'{block["ratio"]:.3f} [{rr["min"]:.3f}, {rr["max"]:.3f}]'


def _ok(flag: Optional[bool]) -> str:
    return '' if flag is None else ('ok' if flag else 'MISSED')


def format_pair(result: Dict[str, Any]) -> str:
    """Human-readable table of one pair (every variant)."""
    tm, base = result['tm_model'], result['base_model']
    lines = []
    prof = result.get('profile') or {}
    for run in result['runs']:
        met = run['targets_met']
        lines.append(f'{tm} vs {base} ({run["variant"]}), ratio = {tm} / {base}, per-round ratios in brackets')
        lines.append(f'  {"":<22} {tm:>14} {base:>14}   {"ratio [min, max]":<24} target')
        if prof.get('tm') and prof.get('base'):
            p_tm, p_base = prof['tm'], prof['base']
            lines.append(
                f'  {"params (M)":<22} {p_tm["params_m"]:>14.2f} {p_base["params_m"]:>14.2f}   '
                f'{prof["params_ratio"]:<24.3f}'
            )
            lines.append(
                f'  {"GMACs":<22} {p_tm["gmacs"]:>14.3f} {p_base["gmacs"]:>14.3f}   '
                f'{1 + prof["gmacs_overhead"]:<24.3f} '
                f'<= {1 + TARGETS["gmacs_overhead_max"]:.2f} {_ok(met.get("gmacs_overhead"))}'
            )
        for mode, label, key, target in (
            ('infer', 'inference img/s', 'infer_ratio', f'>= {TARGETS["infer_ratio_min"]:.2f}'),
            ('train', 'train step img/s', 'train_ratio', f'>= {TARGETS["train_ratio_min"]:.2f}'),
        ):
            if mode in run:
                ips = run[mode]['images_per_s']
                lines.append(
                    f'  {label:<22} {ips[tm]["median"]:>14.2f} {ips[base]["median"]:>14.2f}   '
                    f'{_fmt_ratio(run[mode]):<24} {target} {_ok(met.get(key))}'
                )
        for mode, memory in run.get('memory_mb', {}).items():
            target = f'<= {TARGETS["train_memory_ratio_max"]:.2f}' if mode == 'train' else ''
            flag = _ok(met.get('train_memory_ratio')) if mode == 'train' else ''
            lines.append(
                f'  {mode + " peak MB":<22} {memory[tm]:>14.0f} {memory[base]:>14.0f}   '
                f'{memory["ratio"]:<24.3f} {target} {flag}'.rstrip()
            )
    return '\n'.join(lines)


def markdown_summary(results: Sequence[Dict[str, Any]]) -> str:
    """One markdown row per pair and variant: the ratios (TM / baseline) that the targets are about."""
    header = (
        '| pair | variant | GMACs (TM / base) | inference img/s (TM / base) | ratio [min, max] '
        '| train img/s (TM / base) | ratio [min, max] | train peak MB (TM / base) | ratio |'
    )
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for result in results:
        tm, base = result['tm_model'], result['base_model']
        prof = result.get('profile') or {}
        for run in result['runs']:
            cells = [f'{tm} / {base}', run['variant']]
            if prof.get('tm') and prof.get('base'):
                overhead = 100 * prof['gmacs_overhead']
                cells.append(f'{prof["tm"]["gmacs"]:.2f} / {prof["base"]["gmacs"]:.2f} (+{overhead:.1f}%)')
            else:
                cells.append('-')
            for mode in MODES:
                if mode in run:
                    ips = run[mode]['images_per_s']
                    cells += [f'{ips[tm]["median"]:.1f} / {ips[base]["median"]:.1f}', _fmt_ratio(run[mode])]
                else:
                    cells += ['-', '-']
            memory = run.get('memory_mb', {}).get('train')
            cells += [f'{memory[tm]:.0f} / {memory[base]:.0f}', f'{memory["ratio"]:.3f}'] if memory else ['-', '-']
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _scale_configs(args: argparse.Namespace, default_stages: Tuple[int, ...]) -> List[Dict[str, Any]]:
    configs = [dict(num_classes=n, templates_per_class=1) for n in _parse_ints(args.scale_classes, '--scale-classes')]
    for m in _parse_ints(args.scale_templates, '--scale-templates'):
        config = dict(num_classes=args.scale_templates_classes, templates_per_class=m)
        if config not in configs:
            configs.append(config)
    for stages_spec in args.scale_stages.split(';') if args.scale_stages else []:
        stages = _parse_stages(stages_spec, '--scale-stages')
        if stages != default_stages:
            configs.append(dict(num_classes=1000, templates_per_class=1, tm_stages=stages))
    return configs


def _default_stages(depth: int) -> Tuple[int, ...]:
    from timm_tm.models.tm_resnet import TM_ARCHS

    return tuple(TM_ARCHS[f'tm_resnet{depth}']['tm_stages'])


def _write_json(path: str, payload: Dict[str, Any], overwrite: bool = False) -> Optional[str]:
    """Write ``payload`` to ``path`` atomically: a half-written results file never replaces a good one.

    Without ``overwrite`` an existing ``path`` (one that appeared during the run) is kept, and the results stay in a
    temporary file next to it: its name is returned. None when ``path`` was written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.bench-', suffix='.json.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(payload, f, indent=2)
            f.write('\n')
    except BaseException:
        os.unlink(tmp)
        raise
    if overwrite:
        os.replace(tmp, path)
        return None
    try:
        os.link(tmp, path)  # unlike os.replace, refuses an existing path (atomically)
    except FileExistsError:
        return tmp
    except OSError:  # a file system without hard links: check, then replace
        if os.path.lexists(path):
            return tmp
        os.replace(tmp, path)
        return None
    os.unlink(tmp)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-tm bench',
        description='Throughput and peak memory of tm_resnetX against timm resnetX, run side by side (A B B A ...).',
    )
    parser.add_argument('--models', default='50', help="ResNet depths to compare, e.g. '18,50,101' (default: 50)")
    parser.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present)")
    parser.add_argument('--batch-size', '-b', type=int, default=None, help='batch size (default: 8 CPU, 256 CUDA)')
    parser.add_argument('--img-size', type=int, default=224, help='input resolution (default: 224)')
    parser.add_argument('--num-classes', type=int, default=1000, help='classes of both models (default: 1000)')
    parser.add_argument('--tm-stages', default=None, help="TM stages of the TM model, e.g. '3,4' (default: its own)")
    parser.add_argument('--templates-per-class', type=int, default=None, help='templates per class of the TM model')
    parser.add_argument('--modes', default='infer,train', help="'infer', 'train' or both (default: infer,train)")
    parser.add_argument('--rounds', type=int, default=9, help='alternating rounds per mode (default: 9)')
    parser.add_argument('--warmup', type=int, default=2, help='warm-up steps per model and mode (default: 2)')
    parser.add_argument(
        '--min-seconds',
        type=float,
        default=1.0,
        help='each model runs enough steps per round to last about this long (default: 1.0)',
    )
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch.get_num_threads())')
    parser.add_argument(
        '--channels-last',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='channels_last models and inputs (default: on for CUDA, off for CPU)',
    )
    parser.add_argument(
        '--amp-dtype',
        default=None,
        choices=('bfloat16', 'float16', 'float32'),
        help='autocast dtype (default: bfloat16 on CUDA, float32 = no autocast on CPU)',
    )
    parser.add_argument(
        '--compile',
        default=None,
        choices=('off', 'on', 'both'),
        help='torch.compile the models: off, on, or both in turn (default: both on CUDA, off on CPU)',
    )
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--no-profile', action='store_true', help='skip params / GMACs (fvcore)')
    parser.add_argument('--output', '-o', default='bench_results.json', help='JSON results file (a new one)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing --output file')
    parser.add_argument(
        '--scale',
        action='store_true',
        help='sweep classes / templates per class / TM stages for the first --models depth (no memory by default)',
    )
    parser.add_argument('--scale-classes', default='10,100,1000,10000', help='class counts at m=1 (--scale)')
    parser.add_argument('--scale-templates', default='1,2,4', help='templates per class (--scale)')
    parser.add_argument('--scale-templates-classes', type=int, default=100, help='classes of the templates sweep')
    parser.add_argument(
        '--scale-stages',
        default='4;3,4',
        help="TM stage sets at 1000 classes, ';'-separated (--scale; the model's default is skipped)",
    )
    parser.add_argument('--scale-memory', action='store_true', help='measure peak memory in the --scale sweep too')
    return parser


def _resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    if args.device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    else:
        device = args.device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: {device!r} is not a torch device ('cpu', 'cuda', 'cuda:N', 'auto')") from None
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f"--device: only 'cpu' and 'cuda' are supported, got {device!r}")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: CUDA is not available on this machine')
    cuda = dev.type == 'cuda'
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f'--modes: expected a comma-separated subset of {MODES}, got {args.modes!r}')
    for name in ('batch_size', 'img_size', 'num_classes', 'rounds'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.warmup < 0 or args.min_seconds < 0:
        raise ValueError('--warmup and --min-seconds must be >= 0')
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f'--threads must be >= 1, got {args.threads}')
        torch.set_num_threads(args.threads)
    compile_ = args.compile or ('both' if cuda else 'off')
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp = args.amp_dtype or ('bfloat16' if cuda else 'float32')
    return {
        'device': str(dev),
        'batch_size': args.batch_size or (256 if cuda else 8),
        'img_size': args.img_size,
        'num_classes': args.num_classes,
        'modes': modes,
        'rounds': args.rounds,
        'warmup': args.warmup,
        'min_seconds': args.min_seconds,
        'threads': torch.get_num_threads(),
        'channels_last': cuda if args.channels_last is None else args.channels_last,
        'amp_dtype': None if amp == 'float32' else amp,
        'compile': {'off': [False], 'on': [True], 'both': [False, True]}[compile_],
    }


def _machine(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import timm

    import timm_tm

    info = {
        'cpu': _cpu_name(),
        'logical_cpus': os.cpu_count(),
        'torch_threads': cfg['threads'],
        'gpu': torch.cuda.get_device_name(torch.device(cfg['device'])) if cfg['device'].startswith('cuda') else None,
        'python': platform.python_version(),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_tm': timm_tm.__version__,
    }
    return info


def _scale_table(rows: Sequence[Dict[str, Any]]) -> str:
    header = (
        '| classes N | templates/class m | TM stages | templates K per block | GMACs (TM / base) | overhead '
        '| inference ratio [min, max] | train ratio [min, max] |'
    )
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for row in rows:
        kw = row['tm_kwargs']
        prof = row.get('profile') or {}
        run = row['runs'][0]
        gmacs = f'{prof["tm"]["gmacs"]:.2f} / {prof["base"]["gmacs"]:.2f}' if prof.get('tm') else '-'
        overhead = f'+{100 * prof["gmacs_overhead"]:.1f}%' if 'gmacs_overhead' in prof else '-'
        cells = [
            str(row['num_classes']),
            str(kw.get('templates_per_class', 1)),
            ','.join(str(s) for s in row['tm_stages']),
            str(row['num_classes'] * kw.get('templates_per_class', 1)),
            gmacs,
            overhead,
            _fmt_ratio(run['infer']) if 'infer' in run else '-',
            _fmt_ratio(run['train']) if 'train' in run else '-',
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        depths = parse_models(args.models)
        cfg = _resolve_config(args)
        tm_kwargs: Dict[str, Any] = {}
        if args.tm_stages is not None:
            tm_kwargs['tm_stages'] = _parse_stages(args.tm_stages, '--tm-stages')
        if args.templates_per_class is not None:
            if args.templates_per_class < 1:
                raise ValueError(f'--templates-per-class must be >= 1, got {args.templates_per_class}')
            tm_kwargs['templates_per_class'] = args.templates_per_class
        if args.scale_templates_classes < 1:
            raise ValueError(f'--scale-templates-classes must be >= 1, got {args.scale_templates_classes}')
        scale_configs = _scale_configs(args, _default_stages(depths[0])) if args.scale else []
        _check_output(args.output, args.force)
    except ValueError as e:
        parser.error(str(e))
        return 2  # unreachable: parser.error exits

    machine = _machine(cfg)
    load_start = _loadavg()
    command = 'timm-tm bench ' + ' '.join(sys.argv[1:] if argv is None else argv)
    print(
        f'device {cfg["device"]} ({machine["gpu"] or machine["cpu"]}), torch {machine["torch"]}, '
        f'timm {machine["timm"]}, torch threads {cfg["threads"]} of {machine["logical_cpus"]} logical CPUs, '
        f'load average {load_start}',
        flush=True,
    )
    print(
        f'batch {cfg["batch_size"]}, {cfg["img_size"]} px, {cfg["num_classes"]} classes, '
        f'channels_last {cfg["channels_last"]}, autocast {cfg["amp_dtype"] or "off (fp32)"}, '
        f'{cfg["rounds"]} rounds (A B, B A, ...), >= {cfg["min_seconds"]} s per model and round',
        flush=True,
    )
    memory_method = CUDA_MEMORY_METHOD if cfg['device'].startswith('cuda') else CPU_MEMORY_METHOD
    payload: Dict[str, Any] = {
        'command': command,
        'machine': machine,
        'config': cfg,
        'memory_method': memory_method,
        'targets': TARGETS,
        'load_average_start': load_start,
    }
    if args.scale:
        depth = depths[0]
        default_stages = _default_stages(depth)
        rows = []
        for config in scale_configs:
            row_cfg = dict(cfg, num_classes=config['num_classes'])
            kwargs = dict(tm_kwargs, **{k: v for k, v in config.items() if k != 'num_classes'})
            print(f'\n== tm_resnet{depth} {kwargs}, {config["num_classes"]} classes', flush=True)
            row = bench_pair(
                depth, row_cfg, kwargs, memory=args.scale_memory and not args.no_memory, profile=not args.no_profile
            )
            row['tm_stages'] = list(kwargs.get('tm_stages', default_stages))
            print(format_pair(row), flush=True)
            rows.append(row)
        payload['scale'] = rows
        table = _scale_table(rows)
        print(f'\ntm_resnet{depth} against resnet{depth} with the same class count (ratio = TM / baseline):')
        print(table)
        payload['markdown'] = table
    else:
        if not args.no_memory:
            print(f'peak memory: {memory_method}', flush=True)
        results = []
        for depth in depths:
            print(f'\n== tm_resnet{depth} vs resnet{depth}', flush=True)
            result = bench_pair(depth, cfg, tm_kwargs, memory=not args.no_memory, profile=not args.no_profile)
            print(format_pair(result), flush=True)
            results.append(result)
        payload['pairs'] = results
        table = markdown_summary(results)
        print('\n' + table)
        payload['markdown'] = table
    payload['load_average_end'] = _loadavg()
    print(f'load average at start {load_start}, at end {payload["load_average_end"]}')
    kept = _write_json(args.output, payload, overwrite=args.force)
    if kept:
        message = f'{args.output} appeared during the run and is kept; the results are in {kept}'
        print(f'timm-tm bench: error: --output {message}', file=sys.stderr)
        return 1
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

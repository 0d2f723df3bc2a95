"""``timm-tm bench``'s command line: the parser, the checks of the arguments (every one before any model is built:
a wrong argument exits 2 with argparse's usage and error line), the run's configuration and ``main``."""

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch

from timm_tm.cli import command_parser, int_list, report_error
from timm_tm.files import atomic_write_text

from .machine import load_average, machine_record
from .memory import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD
from .pair import BENCH_MODELS, bench_base, bench_models, bench_pair
from .report import TARGETS, format_pair, markdown_summary, scale_table
from .runner import MODES

__all__ = ['BENCH_MODELS', 'parse_models', 'stage_set', 'default_tm_stages', 'build_parser', 'resolve_config', 'main']


def parse_models(spec: str) -> List[str]:
    """'18,resnet50d,tm_resnext50_32x4d,convnext_tiny' -> ['tm_resnet18', 'tm_resnet50d', 'tm_resnext50_32x4d',
    'tm_convnext_tiny']: a ResNet depth, timm's base name or the tm_ name of each model :func:`bench_models` lists
    (:data:`BENCH_MODELS`, the ResNet family, then the other timm CNNs)."""
    names = []
    for item in spec.split(','):
        item = item.strip()
        name = f'tm_resnet{item}' if item.isdigit() else item if item.startswith('tm_') else f'tm_{item}'
        if bench_base(name) is None:
            known = ', '.join(bench_base(n) for n in bench_models())
            raise ValueError(f'--models: {item!r} is none of {known} (or a depth: --models 18,50,resnet50d)')
        names.append(name)
    return names


def stage_set(text: str) -> Tuple[int, ...]:
    """argparse type: '3,4' -> (3, 4); '' -> () (no TM blocks). Distinct feature_info indices (the model checks
    their range: :func:`default_tm_stages`)."""
    stages = tuple(int_list(text, minimum=0))
    if len(set(stages)) != len(stages):
        raise argparse.ArgumentTypeError(f'expected distinct stages, e.g. 3,4, got {text!r}')
    return stages


def default_tm_stages(name: str, tm_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[int, ...]:
    """The TM stages of ``name`` built with ``tm_kwargs`` (on the meta device: nothing is allocated); a ValueError
    or TypeError (naming the parameter) when the model refuses them."""
    with torch.device('meta'):
        return tuple(timm.create_model(name, **(tm_kwargs or {})).tm_stages)


def _stage_sets(text: str) -> List[Tuple[int, ...]]:
    """argparse type: '4;3,4' -> [(4,), (3, 4)]; '' -> []."""
    return [stage_set(part) for part in text.split(';')] if text else []


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``timm-tm bench`` (the arguments in the order ``--help`` lists them)."""
    parser = command_parser(
        'bench',
        description='Throughput and peak memory of each tm_X against timm X (resnet50d, convnext_tiny, ...), run side '
        'by side (A B B A ...).',
    )
    _add_model_arguments(parser)
    _add_run_arguments(parser)
    _add_output_arguments(parser)
    _add_scale_arguments(parser)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--models',
        default='50',
        help="models to compare with their base, e.g. '18,50,101' (ResNet depths) or 'resnet50d,convnext_tiny' "
        '(timm names, with or without tm_; default: 50)',
    )
    parser.add_argument('--device', default='auto', help="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present)")
    parser.add_argument('--batch-size', '-b', type=int, default=None, help='batch size (default: 8 CPU, 256 CUDA)')
    parser.add_argument('--img-size', type=int, default=224, help='input resolution (default: 224)')
    parser.add_argument('--num-classes', type=int, default=1000, help='classes of both models (default: 1000)')
    parser.add_argument(
        '--tm-stages', type=stage_set, default=None, help="TM stages of the TM model, e.g. '3,4' (default: its own)"
    )
    parser.add_argument('--templates-per-class', type=int, default=None, help='templates per class of the TM model')


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
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


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--no-profile', action='store_true', help='skip params / GMACs (fvcore)')
    parser.add_argument('--output', '-o', default='bench_results.json', help='JSON results file (a new one)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing --output file')


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--scale',
        action='store_true',
        help='sweep classes / templates per class / TM stages for the first --models model (no memory by default)',
    )
    parser.add_argument(
        '--scale-classes', type=int_list, default='10,100,1000,10000', help='class counts at m=1 (--scale)'
    )
    parser.add_argument('--scale-templates', type=int_list, default='1,2,4', help='templates per class (--scale)')
    parser.add_argument('--scale-templates-classes', type=int, default=100, help='classes of the templates sweep')
    parser.add_argument(
        '--scale-stages',
        type=_stage_sets,
        default='4;3,4',
        help="TM stage sets at 1000 classes, ';'-separated (--scale; the model's default is skipped)",
    )
    parser.add_argument('--scale-memory', action='store_true', help='measure peak memory in the --scale sweep too')


def check_output(path: str, force: bool) -> None:
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


def _resolve_device(name: str) -> torch.device:
    """--device as a torch device ('auto': CUDA when present); a ValueError unless CPU or an available CUDA."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a torch device ('cpu', 'cuda', 'cuda:N', 'auto')") from None
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f"--device: only 'cpu' and 'cuda' are supported, got {name!r}")
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name}: CUDA is not available on this machine')
    return device


def _check_counts(args: argparse.Namespace) -> None:
    """The counts that must be >= 1 (when given) and the ones that must be >= 0; a ValueError names the flag."""
    positive = ('batch_size', 'img_size', 'num_classes', 'rounds', 'threads', 'templates_per_class')
    for name in (*positive, 'scale_templates_classes'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.warmup < 0:
        raise ValueError(f'--warmup must be >= 0, got {args.warmup}')
    if not (math.isfinite(args.min_seconds) and args.min_seconds >= 0):  # NaN passes every comparison
        raise ValueError(f'--min-seconds must be a finite number >= 0, got {args.min_seconds}')


def resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's settings (the results' ``config``), with the defaults that depend on the device filled in.

    A ValueError names the first wrong flag.
    """
    device = _resolve_device(args.device)
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f'--modes: expected a comma-separated subset of {MODES}, got {args.modes!r}')
    _check_counts(args)
    cuda = device.type == 'cuda'
    compile_models = args.compile or ('both' if cuda else 'off')
    amp = args.amp_dtype or ('bfloat16' if cuda else 'float32')
    return {
        'device': str(device),
        'batch_size': args.batch_size or (256 if cuda else 8),
        'img_size': args.img_size,
        'num_classes': args.num_classes,
        'modes': modes,
        'rounds': args.rounds,
        'warmup': args.warmup,
        'min_seconds': args.min_seconds,
        'threads': args.threads or torch.get_num_threads(),
        'channels_last': cuda if args.channels_last is None else args.channels_last,
        'amp_dtype': None if amp == 'float32' else amp,
        'compile': {'off': [False], 'on': [True], 'both': [False, True]}[compile_models],
    }


def _tm_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The TM model's kwargs given on the command line (the rest are its own defaults)."""
    tm_kwargs: Dict[str, Any] = {}
    if args.tm_stages is not None:
        tm_kwargs['tm_stages'] = args.tm_stages
    if args.templates_per_class is not None:
        tm_kwargs['templates_per_class'] = args.templates_per_class
    return tm_kwargs


def _check_stages(models: List[str], tm_kwargs: Dict[str, Any], args: argparse.Namespace) -> None:
    """--tm-stages (for every model) and --scale-stages (for the first) must be stages the model has: a ValueError
    naming the flag."""
    checks = [('--tm-stages', name, tm_kwargs) for name in models if 'tm_stages' in tm_kwargs]
    if args.scale:
        checks += [('--scale-stages', models[0], dict(tm_kwargs, tm_stages=s)) for s in args.scale_stages]
    for flag, name, kwargs in checks:
        try:
            default_tm_stages(name, kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f'{flag}: {name}: {e}') from None


def _scale_configs(args: argparse.Namespace, default_stages: Tuple[int, ...]) -> List[Dict[str, Any]]:
    """The --scale sweep: class counts at m=1, templates per class, then TM stage sets other than the default."""
    configs = [dict(num_classes=n, templates_per_class=1) for n in args.scale_classes]
    for m in args.scale_templates:
        config = dict(num_classes=args.scale_templates_classes, templates_per_class=m)
        if config not in configs:
            configs.append(config)
    for stages in args.scale_stages:
        if stages != default_stages:
            configs.append(dict(num_classes=1000, templates_per_class=1, tm_stages=stages))
    if not configs:
        raise ValueError('--scale: nothing to sweep; give --scale-classes, --scale-templates or --scale-stages')
    return configs


def _start_results(command: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Print what the run measures, on what; the results begin with the same."""
    machine = machine_record(cfg['device'], cfg['threads'])
    load_start = load_average()
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
    return {
        'command': command,
        'machine': machine,
        'config': cfg,
        'memory_method': CUDA_MEMORY_METHOD if cfg['device'].startswith('cuda') else CPU_MEMORY_METHOD,
        'targets': TARGETS,
        'load_average_start': load_start,
    }


def _run_pairs(
    names: List[str], cfg: Dict[str, Any], tm_kwargs: Dict[str, Any], memory: bool, profile: bool
) -> List[Dict[str, Any]]:
    """Each tm_X against timm's X (:func:`bench_base`), printed as it finishes."""
    results = []
    for name in names:
        print(f'\n== {name} vs {bench_base(name)}', flush=True)
        result = bench_pair(name, cfg, tm_kwargs, memory=memory, profile=profile)
        print(format_pair(result), flush=True)
        results.append(result)
    return results


def _run_scale(
    name: str,
    cfg: Dict[str, Any],
    tm_kwargs: Dict[str, Any],
    configs: List[Dict[str, Any]],
    memory: bool,
    profile: bool,
) -> List[Dict[str, Any]]:
    """``name`` against its base with the same class count, once per configuration of the sweep."""
    default_stages = default_tm_stages(name)
    rows = []
    for config in configs:
        row_cfg = dict(cfg, num_classes=config['num_classes'])
        kwargs = dict(tm_kwargs, **{k: v for k, v in config.items() if k != 'num_classes'})
        print(f'\n== {name} {kwargs}, {config["num_classes"]} classes', flush=True)
        row = bench_pair(name, row_cfg, kwargs, memory=memory, profile=profile)
        row['tm_stages'] = list(kwargs.get('tm_stages', default_stages))
        print(format_pair(row), flush=True)
        rows.append(row)
    return rows


def _write_results(path: str, payload: Dict[str, Any], force: bool) -> int:
    """Write the results JSON atomically (never half a file); without ``force`` never over a file that appeared
    during the run: the results then stay in the temporary file, named in the error. Returns the exit status."""
    try:
        kept = atomic_write_text(path, json.dumps(payload, indent=2) + '\n', replace=force)
    except OSError as e:  # e.g. the folder was removed, or the disk filled, during the run
        return report_error('bench', f'--output: cannot write {path}: {e}')
    if kept:
        return report_error('bench', f'--output {path} appeared during the run and is kept; the results are in {kept}')
    print(f'wrote {path}')
    return 0


def _run(
    args: argparse.Namespace,
    payload: Dict[str, Any],
    names: List[str],
    cfg: Dict[str, Any],
    tm_kwargs: Dict[str, Any],
    scale_configs: List[Dict[str, Any]],
) -> None:
    """Run the pairs (or the --scale sweep) into ``payload``, printing as they go."""
    profile = not args.no_profile
    if args.scale:
        name = names[0]
        rows = _run_scale(name, cfg, tm_kwargs, scale_configs, args.scale_memory and not args.no_memory, profile)
        payload['scale'] = rows
        payload['markdown'] = scale_table(rows)
        print(f'\n{name} against {bench_base(name)} with the same class count (ratio = TM / baseline):')
        print(payload['markdown'])
    else:
        if not args.no_memory:
            print(f'peak memory: {payload["memory_method"]}', flush=True)
        payload['pairs'] = _run_pairs(names, cfg, tm_kwargs, not args.no_memory, profile)
        payload['markdown'] = markdown_summary(payload['pairs'])
        print('\n' + payload['markdown'])
    payload['load_average_end'] = load_average()
    print(f'load average at start {payload["load_average_start"]}, at end {payload["load_average_end"]}')


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-tm bench ARGS``: 0 written; 1 a run or the results file failed; 2 wrong arguments (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = parse_models(args.models)
        cfg = resolve_config(args)
        tm_kwargs = _tm_kwargs(args)
        _check_stages(names, tm_kwargs, args)
        scale_configs = _scale_configs(args, default_tm_stages(names[0])) if args.scale else []
        check_output(args.output, args.force)
    except ValueError as e:
        parser.error(str(e))
    torch.set_num_threads(cfg['threads'])
    if cfg['device'].startswith('cuda'):
        torch.backends.cudnn.benchmark = True

    payload = _start_results('timm-tm bench ' + ' '.join(sys.argv[1:] if argv is None else argv), cfg)
    try:
        _run(args, payload, names, cfg, tm_kwargs, scale_configs)
    except RuntimeError as e:  # no /proc peak memory on this system, a memory subprocess that failed, out of memory
        return report_error('bench', ' '.join(str(e).split()))
    return _write_results(args.output, payload, args.force)

"""What a user reads: one pair as a text table, the markdown summary of all pairs, the ``--scale`` table, and which
of the targets a run met."""

from typing import Any, Dict, Iterable, Optional, Sequence

from .runner import MODES

__all__ = ['TARGETS', 'targets_met', 'format_pair', 'markdown_table', 'markdown_summary', 'scale_table']

# targets of the default configuration (tm_resnet50 against resnet50, 1000 classes)
TARGETS = {
    'infer_ratio_min': 0.90,
    'train_ratio_min': 0.85,
    'train_memory_ratio_max': 1.15,
    'gmacs_overhead_max': 0.10,
}
SUMMARY_HEADER = (
    'pair',
    'variant',
    'GMACs (TM / base)',
    'inference img/s (TM / base)',
    'ratio [min, max]',
    'train img/s (TM / base)',
    'ratio [min, max]',
    'train peak MB (TM / base)',
    'ratio',
)
SCALE_HEADER = (
    'classes N',
    'templates/class m',
    'TM stages',
    'templates K per block',
    'GMACs (TM / base)',
    'overhead',
    'inference ratio [min, max]',
    'train ratio [min, max]',
)


def targets_met(run: Dict[str, Any], prof: Optional[Dict[str, Any]]) -> Dict[str, Optional[bool]]:
    """Which :data:`TARGETS` one run (and the pair's profile) meets; a target not measured is left out."""
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


def _format_ratio(block: Dict[str, Any]) -> str:
    """'0.950 [0.930, 0.970]': the ratio of the medians, then the smallest and largest per-round ratio."""
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
                    f'{_format_ratio(run[mode]):<24} {target} {_ok(met.get(key))}'
                )
        for mode, memory in run.get('memory_mb', {}).items():
            target = f'<= {TARGETS["train_memory_ratio_max"]:.2f}' if mode == 'train' else ''
            flag = _ok(met.get('train_memory_ratio')) if mode == 'train' else ''
            lines.append(
                f'  {mode + " peak MB":<22} {memory[tm]:>14.0f} {memory[base]:>14.0f}   '
                f'{memory["ratio"]:<24.3f} {target} {flag}'.rstrip()
            )
    return '\n'.join(lines)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header, its separator, then one line per row of cells."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
    return '\n'.join(lines)


def _summary_row(result: Dict[str, Any], run: Dict[str, Any]) -> Sequence[str]:
    """The cells of one pair's run in :func:`markdown_summary`."""
    tm, base = result['tm_model'], result['base_model']
    prof = result.get('profile') or {}
    cells = [f'{tm} / {base}', run['variant']]
    if prof.get('tm') and prof.get('base'):
        overhead = 100 * prof['gmacs_overhead']
        cells.append(f'{prof["tm"]["gmacs"]:.2f} / {prof["base"]["gmacs"]:.2f} (+{overhead:.1f}%)')
    else:
        cells.append('-')
    for mode in MODES:
        if mode in run:
            ips = run[mode]['images_per_s']
            cells += [f'{ips[tm]["median"]:.1f} / {ips[base]["median"]:.1f}', _format_ratio(run[mode])]
        else:
            cells += ['-', '-']
    memory = run.get('memory_mb', {}).get('train')
    cells += [f'{memory[tm]:.0f} / {memory[base]:.0f}', f'{memory["ratio"]:.3f}'] if memory else ['-', '-']
    return cells


def markdown_summary(results: Sequence[Dict[str, Any]]) -> str:
    """One markdown row per pair and variant: the ratios (TM / baseline) that the targets are about."""
    return markdown_table(SUMMARY_HEADER, (_summary_row(result, run) for result in results for run in result['runs']))


def _scale_row(row: Dict[str, Any]) -> Sequence[str]:
    """The cells of one configuration of the sweep in :func:`scale_table`."""
    templates_per_class = row['tm_kwargs'].get('templates_per_class', 1)
    prof = row.get('profile') or {}
    run = row['runs'][0]
    return [
        str(row['num_classes']),
        str(templates_per_class),
        ','.join(str(s) for s in row['tm_stages']),
        str(row['num_classes'] * templates_per_class),
        f'{prof["tm"]["gmacs"]:.2f} / {prof["base"]["gmacs"]:.2f}' if prof.get('tm') else '-',
        f'+{100 * prof["gmacs_overhead"]:.1f}%' if 'gmacs_overhead' in prof else '-',
        _format_ratio(run['infer']) if 'infer' in run else '-',
        _format_ratio(run['train']) if 'train' in run else '-',
    ]


def scale_table(rows: Sequence[Dict[str, Any]]) -> str:
    """One markdown row per configuration of ``--scale`` (its first variant): GMACs and throughput ratios."""
    return markdown_table(SCALE_HEADER, (_scale_row(row) for row in rows))

"""What a comparison writes: ``results.json``, the table (``results.md`` and the terminal), ``results.png`` and
``curves.png``. Every file is written atomically (:func:`timm_tm.files.atomic_write`): a reader, or a rerun after
a crash, never finds half a file.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from timm_tm.files import atomic_write, atomic_write_text

from .statistics import mean_curves

__all__ = [
    'RECIPE_KEYS', 'FOLDER_ONLY', 'recipe_keys', 'format_table', 'print_summary', 'write_json', 'write_markdown',
    'write_plot', 'write_curves',
]  # fmt: skip

# keys of the config that make the recipe: --resume reuses finished runs only when they agree; results.md lists them
RECIPE_KEYS = (
    'dataset', 'data_dir', 'mnist_npz', 'train_size', 'val_size', 'canvas', 'img_size', 'model', 'channels',
    'layers', 'epochs', 'batch_size', 'opt', 'lr', 'weight_decay', 'momentum', 'sched', 'warmup_epochs',
    'min_lr', 'smoothing', 'mixup', 'cutmix', 'shift', 'hflip', 'scale', 'color_jitter', 'auto_augment',
    'reprob', 'workers', 'amp', 'channels_last', 'device', 'threads',
)  # fmt: skip
# what only the ImageFolder pipeline uses (the loader's workers draw the augmentations: their count changes them)
FOLDER_ONLY = ('scale', 'color_jitter', 'auto_augment', 'reprob', 'workers')


def recipe_keys(dataset: str) -> Tuple[str, ...]:
    """The ``RECIPE_KEYS`` that apply to ``dataset`` (a config's ``'dataset'``)."""
    skip = {'canvas'} if dataset != 'cluttered-mnist' else set()
    skip |= {'shift'} if dataset == 'folder' else set(FOLDER_ONLY)
    return tuple(k for k in RECIPE_KEYS if k not in skip)


def format_table(rows: List[Dict], reference: str = 'baseline') -> str:
    """The rows of ``summarize`` as a Markdown table."""
    lines = [
        f'| variant | params | top-1 % (mean ± std) | per seed | Δ vs {reference} (mean ± std) | Δ per seed | '
        'paired t-test p | better | time / run |',
        '|---|---:|---:|---|---:|---|---:|---:|---:|',
    ]
    for r in rows:
        per_seed = ', '.join(f'{t:.2f}' for t in r['top1'])
        if 'diffs' in r:
            delta = f'{r["diff_mean"]:+.2f} ± {r["diff_std"]:.2f}'
            per_delta = ', '.join(f'{d:+.2f}' for d in r['diffs'])
            p = '-' if r['p_value'] is None else f'{r["p_value"]:.3f}'
            wins = f'{r["wins"]}/{len(r["diffs"])}'
        else:
            delta = per_delta = p = wins = '-'
        lines.append(
            f'| {r["variant"]} | {r["params"] / 1e6:.3f}M | {r["mean"]:.2f} ± {r["std"]:.2f} | {per_seed} | {delta} '
            f'| {per_delta} | {p} | {wins} | {np.mean(r["seconds"]):.0f}s |'
        )
    return '\n'.join(lines)


def print_summary(rows: List[Dict], verdict_lines: Sequence[str], where: str, reference: str = 'baseline') -> None:
    """The terminal's summary: the table, top-1 and the difference to ``reference`` per variant, ``where`` the
    results are, and the verdicts."""
    print(f'\n{format_table(rows, reference)}\n')
    for r in rows:
        print(f'{r["variant"]:>14} top-1: {r["mean"]:.2f} ± {r["std"]:.2f} %  (seeds {r["seeds"]})')
    for r in rows:
        if 'diffs' in r:
            p_s = '' if r['p_value'] is None else f', paired t-test p = {r["p_value"]:.3f}'
            print(f'{r["variant"]:>14} - {reference}: {r["diff_mean"]:+.2f} ± {r["diff_std"]:.2f} points{p_s}')
    print(f'\n{where}')
    for line in verdict_lines:
        print(line)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (``results.json``)."""
    atomic_write_text(path, json.dumps(obj, indent=1) + '\n')


def write_markdown(
    path: Path, config: Dict[str, Any], rows: List[Dict], reference: str = 'baseline', verdict_lines: Sequence[str] = ()
) -> None:
    """``results.md``: the table, the verdicts, the recipe and the command."""
    recipe = ', '.join(
        f'{k}={config[k]}' for k in recipe_keys(config['dataset']) if config.get(k) not in (None, '', [], False)
    )
    text = (
        f'# timm-tm compare: {config["dataset"]}\n\n'
        f'Top-1 on the val split after the last epoch; seeds {config["seeds"]}. Δ is the paired per-seed difference '
        f'to `{reference}` (same initial backbone weights and batch order).\n\n'
        f'{format_table(rows, reference)}\n\n'
        + ''.join(f'- {line}\n' for line in verdict_lines)
        + ('\n' if verdict_lines else '')
        + f'Recipe: {recipe}\n\nCommand: `{config["command"]}`\n'
    )
    atomic_write_text(path, text)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (matplotlib is an optional dependency: imported here)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, and close it."""
    plt = _pyplot()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    finally:
        plt.close(fig)


def write_plot(path: Path, rows: List[Dict], title: str) -> None:
    """Top-1 per seed (dots) and mean ± std (bar and line) per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 4.0), dpi=120)
    seeds = sorted({s for r in rows for s in r['seeds']})
    colors = plt.get_cmap('tab10')
    ax.set_xlim(-0.6, len(rows) - 0.4)
    for j, s in enumerate(seeds):  # faint lines join a seed's runs: the comparison is paired
        pts = [(i, r['top1'][r['seeds'].index(s)]) for i, r in enumerate(rows) if s in r['seeds']]
        ax.plot([i + 0.12 * (j - (len(seeds) - 1) / 2) for i, _ in pts], [t for _, t in pts], color=colors(j % 10),
                alpha=0.25, lw=1, zorder=2)  # fmt: skip
    for i, r in enumerate(rows):
        ax.annotate(f'{r["mean"]:.2f}', (i, r['mean']), xytext=(14, -3), textcoords='offset points', fontsize=8)
        ax.errorbar(i, r['mean'], yerr=r['std'], fmt='_', color='black', markersize=22, capsize=6, zorder=3)
        for s, t in zip(r['seeds'], r['top1']):
            j = seeds.index(s)
            ax.scatter(i + 0.12 * (j - (len(seeds) - 1) / 2), t, color=colors(j % 10), s=22, zorder=4,
                       label=f'seed {s}' if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(rows)), [r['variant'] for r in rows], rotation=30, ha='right')
    ax.set_ylabel('val top-1 (%)')
    ax.set_title(title, fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=7, loc='best')
    _save_figure(fig, path)


def write_curves(path: Path, runs: List[Dict[str, Any]], variants: Sequence[str], title: str) -> None:
    """Learning curves: val top-1 per epoch, mean ± std over seeds (shaded) per variant, with a zoom on the end."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120)
    colors = plt.get_cmap('tab10')
    finals = []
    for i, v in enumerate(x for x in variants if any(r['variant'] == x for r in runs)):
        epochs, mean, std = mean_curves(runs, v)
        if len(epochs) == 0:
            continue
        n = sum(r['variant'] == v for r in runs)
        for ax in axes:
            ax.plot(epochs, mean, color=colors(i % 10), lw=1.5, marker='.', label=f'{v} (n={n})')
            ax.fill_between(epochs, mean - std, mean + std, color=colors(i % 10), alpha=0.15, lw=0)
        finals.append((epochs, mean, std))
    axes[0].set_title(title, fontsize=9)
    # the zoom: from two thirds of the shortest run to the end of the longest, the y range of the means there
    last = max(int(e[-1]) for e, _, _ in finals) if finals else 1
    start = max(1, int(round(min(int(e[-1]) for e, _, _ in finals) * 2 / 3))) if finals else 1
    tail = [m[e >= start] for e, m, _ in finals if (e >= start).any()]
    if tail:
        lo, hi = min(float(t.min()) for t in tail), max(float(t.max()) for t in tail)
        pad = max(0.3, 0.25 * (hi - lo))
        axes[1].set_xlim(start - 0.5, last + 0.5)
        axes[1].set_ylim(lo - pad, hi + pad)
    axes[1].set_title(f'epochs {start}-{last} (zoom)', fontsize=9)
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.set_ylabel('val top-1 (%)')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc='lower right')
    _save_figure(fig, path)

"""The numbers of a comparison: top-1 mean / std over seeds, paired per-seed differences, a t-test, verdicts.

Runs are the records of ``train_one`` (dicts with at least ``variant``, ``seed``, ``top1``); two variants are
compared on the seeds both ran, the seed being the pairing (same initial weights, same batches).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .variants import control_pairs

__all__ = ['summarize', 'paired', 'verdict', 'verdicts', 'mean_curves']


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _equal(diffs: Sequence[float]) -> bool:
    """Whether every per-seed difference is the same (up to float rounding of top-1 percentages)."""
    d = np.asarray(diffs, dtype=np.float64)
    return len(d) > 1 and bool(np.allclose(d, d[0]))


def _paired_p(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test p-value of the per-seed differences; None for < 2 seeds, for differences that are
    all equal (zero variance: the t statistic is undefined, there is no p) and without scipy."""
    if len(diffs) < 2 or _equal(diffs):
        return None
    try:
        from scipy import stats  # optional: without it there is no p-value
    except ImportError:
        return None
    return float(stats.ttest_1samp(np.asarray(diffs, dtype=np.float64), 0.0).pvalue)


def paired(runs: List[Dict[str, Any]], variant: str, reference: str) -> Optional[Dict[str, Any]]:
    """The paired per-seed difference ``variant - reference`` on their shared seeds (None if none are shared)."""
    by = {(r['variant'], r['seed']): r['top1'] for r in runs}
    seeds = sorted(s for v, s in by if v == variant and (reference, s) in by)
    if not seeds:
        return None
    diffs = [by[(variant, s)] - by[(reference, s)] for s in seeds]
    mean, std = _mean_std(diffs)
    return {
        'variant': variant, 'reference': reference, 'seeds': seeds, 'diffs': diffs, 'mean': mean, 'std': std,
        'p_value': _paired_p(diffs), 'wins': sum(d > 0 for d in diffs),
    }  # fmt: skip


def summarize(runs: List[Dict[str, Any]], variants: Sequence[str], reference: str = 'baseline') -> List[Dict]:
    """Per variant: top-1 mean / std over seeds, and the paired difference to ``reference`` on shared seeds."""
    by = {(r['variant'], r['seed']): r for r in runs}
    rows = []
    for v in variants:
        seeds = sorted(s for vv, s in by if vv == v)
        if not seeds:
            continue
        top1 = [by[(v, s)]['top1'] for s in seeds]
        mean, std = _mean_std(top1)
        row = {
            'variant': v, 'seeds': seeds, 'top1': top1, 'mean': mean, 'std': std,
            'params': by[(v, seeds[0])]['params'], 'seconds': [by[(v, s)]['seconds'] for s in seeds],
        }  # fmt: skip
        d = paired(runs, v, reference) if v != reference else None
        if d is not None:
            row.update(
                paired_seeds=d['seeds'], diffs=d['diffs'], diff_mean=d['mean'], diff_std=d['std'],
                p_value=d['p_value'], wins=d['wins'],
            )  # fmt: skip
        rows.append(row)
    return rows


def verdict(d: Dict[str, Any], alpha: float = 0.05) -> str:
    """One line in plain words, e.g. 'tm vs baseline: no significant difference (+0.12 points, p = 0.31, ...)'.
    Only a p below ``alpha`` makes a difference 'better' or 'worse'; without one (one seed, no scipy, every seed
    apart by the same amount) it is 'no significant difference'."""
    p = d['p_value']
    p_s = 'p n/a' if p is None else f'p = {p:.3f}'
    if _equal(d['diffs']):  # no spread: a t-test cannot say anything, however many seeds agree
        p_s += ': every seed gives the same top-1' if d['diffs'][0] == 0 else ': every seed differs by the same amount'
    n = len(d['diffs'])
    if p is None or p >= alpha or d['mean'] == 0:
        what = 'no significant difference'
    else:
        what = 'better' if d['mean'] > 0 else 'worse'
    return (
        f'{d["variant"]} vs {d["reference"]}: {what} ({d["mean"]:+.2f} ± {d["std"]:.2f} points, paired t-test '
        f'{p_s}, better on {d["wins"]}/{n} seeds)'
    )


def verdicts(runs: List[Dict[str, Any]], variants: Sequence[str]) -> List[str]:
    """The verdict lines for the ``control_pairs`` of ``variants`` among ``runs`` (pairs without runs left out)."""
    lines = []
    for v, ref in control_pairs([v for v in variants if any(r['variant'] == v for r in runs)]):
        d = paired(runs, v, ref)
        if d is not None:
            lines.append(verdict(d))
    return lines


def mean_curves(runs: List[Dict[str, Any]], variant: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of val top-1 per epoch over a variant's seeds, at the epochs every seed evaluated."""
    curves = [r['top1_per_epoch'] for r in runs if r['variant'] == variant]
    length = min(len(c) for c in curves)
    epochs = [e for e in range(length) if all(c[e] is not None for c in curves)]
    a = np.array([[c[e] for e in epochs] for c in curves], dtype=np.float64)
    std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(len(epochs))
    return np.array(epochs) + 1, a.mean(axis=0), std

"""Running a comparison: the (seed, variant) runs one by one or in worker processes, ``results.json`` rewritten
after each, and the results written and printed at the end. The arguments are checked before (``cli.py``).
"""

import argparse
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from timm_tm.cli import report_error

from .report import print_summary, write_curves, write_json, write_markdown, write_plot
from .statistics import summarize, verdicts
from .training import Log, log_to, train_in_worker, train_one
from .variants import Variant

__all__ = ['run_comparison']

Record = Dict[str, Any]


def run_comparison(
    args: argparse.Namespace,
    variants: Sequence[Variant],
    device: torch.device,
    out: Path,
    config: Dict[str, Any],
    runs: List[Record],
) -> int:
    """Train every (seed, variant) of ``args`` not among the finished ``runs``, then write and print the results.

    Returns 0, or 1 when a run fails (a diverged loss, a broken worker, unreadable data): the finished runs stay in
    ``results.json`` for ``--resume``, the error is logged in ``log.txt`` and printed on stderr.
    """
    results_path = out / 'results.json'
    out.mkdir(parents=True, exist_ok=True)
    done = {(r['variant'], r['seed']) for r in runs}
    todo = [(s, v) for s in args.seeds for v in variants if (v.name, s) not in done]
    jobs = max(1, min(args.jobs, len(todo)))
    with open(out / 'log.txt', 'a') as log_file:
        log = log_to(log_file)
        log(
            f'timm-tm compare: {args.dataset}, {args.model} (channels {args.channels or "default"}, layers '
            f'{args.layers or "default"}), {args.img_size}px, {args.epochs} epochs, seeds {args.seeds}, variants '
            f'{args.variants}, {device}, {jobs} run(s) at a time with {args.threads} thread(s) each -> {out}'
        )
        if done:
            log(f'resuming: {len(done)} finished run(s) kept, {len(todo)} to go')
        t_all = time.time()
        finished = _recorder(runs, args.seeds, variants, config, results_path, log)
        try:
            if jobs == 1:
                for seed, variant in todo:
                    finished(train_one(variant, seed, args, device, log))
            else:
                _run_parallel(todo, jobs, args, device, out / 'log.txt', finished)
        except (FloatingPointError, RuntimeError, ValueError, OSError) as e:
            message = f'{e} (finished runs are kept in {results_path}; rerun with --resume)'
            log_file.write(f'error: {message}\n')
            return report_error('compare', message)
    selected = [r for r in runs if r['seed'] in args.seeds]  # a resumed folder may hold runs of other seeds
    rows, lines = summarize(selected, args.variants), verdicts(selected, args.variants)
    _write_results(args, config, runs, selected, rows, lines, out)
    print_summary(
        rows,
        lines,
        f'{len(todo)} run(s) in {time.time() - t_all:.0f}s; results in {out}/ (results.md, results.png, curves.png, '
        'results.json)',
    )
    return 0


def _recorder(
    runs: List[Record],
    seeds: Sequence[int],
    variants: Sequence[Variant],
    config: Dict[str, Any],
    results_path: Path,
    log: Log,
) -> Callable[[Record], None]:
    """What is done with each finished run: added to ``runs`` (in the order of seeds, then variants), saved in
    ``results.json`` at once (an interrupted comparison keeps it) and logged."""
    order = {(v.name, s): i for i, (s, v) in enumerate((s, v) for s in seeds for v in variants)}

    def finished(record: Record) -> None:
        runs.append(record)
        runs.sort(key=lambda r: order.get((r['variant'], r['seed']), len(order)))
        write_json(results_path, {'config': config, 'runs': runs})
        log(f'{record["variant"]} seed {record["seed"]}: top-1 {record["top1"]:.2f}% ({record["seconds"]:.0f}s)')

    return finished


def _write_results(
    args: argparse.Namespace,
    config: Dict[str, Any],
    runs: List[Record],
    selected: List[Record],
    rows: List[Dict],
    verdict_lines: List[str],
    out: Path,
) -> None:
    """``results.json`` (every run, and the summary ``rows`` of the ``selected`` ones), ``results.md``,
    ``results.png`` and ``curves.png``."""
    write_json(out / 'results.json', {'config': config, 'runs': runs, 'summary': rows})
    write_markdown(out / 'results.md', config, rows, verdict_lines=verdict_lines)
    title = args.title or f'{args.dataset}: {args.model}, {args.epochs} epochs, {len(args.seeds)} seeds'
    write_plot(out / 'results.png', rows, title)
    write_curves(out / 'curves.png', selected, args.variants, title)


def _run_parallel(
    todo: List[Tuple[int, Variant]],
    jobs: int,
    args: argparse.Namespace,
    device: torch.device,
    log_path: Path,
    finished: Callable[[Record], None],
) -> None:
    """Run ``todo`` in ``jobs`` worker processes (spawned: no state shared with this one), in order of seeds."""
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        pending = {pool.submit(train_in_worker, v, s, args, str(device), str(log_path)) for s, v in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise

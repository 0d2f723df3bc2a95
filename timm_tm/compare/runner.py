"""Running a comparison: the (seed, variant) runs one by one or in worker processes, ``results.json`` rewritten
after each, and the results written and printed at the end. The arguments are checked before (``cli.py``).

A stop (Ctrl-C, SIGTERM) ends the comparison cleanly: the worker processes are ended with it, every finished run
stays in ``results.json`` (written before the first run starts, so that ``--resume`` always finds it) and one line
says so; the exit status is 128 + the signal's number, as a shell reports it.
"""

import argparse
import multiprocessing
import os
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from timm_tm.cli import first_line, report_error

from .report import print_summary, write_curves, write_json, write_markdown, write_plot
from .statistics import summarize, verdicts
from .training import Log, log_to, train_one
from .variants import Variant, table_reference

__all__ = ['run_comparison', 'stop_on_sigterm', 'report_stop', 'Terminated']

Record = Dict[str, Any]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt: the same clean stop."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, so that it
    stops a comparison as Ctrl-C does; elsewhere (another thread) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_of(stop: KeyboardInterrupt) -> signal.Signals:
    return signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT


def report_stop(stop: KeyboardInterrupt, what: str) -> int:
    """Print ``timm-tm compare: error: stopped by SIGINT (WHAT)`` on stderr; returns 130 (SIGINT) or 143
    (SIGTERM), as a shell reports a process that the signal ended."""
    report_error('compare', f'stopped by {_signal_of(stop).name} ({what})')
    return 128 + int(_signal_of(stop))


def run_comparison(
    args: argparse.Namespace,
    variants: Sequence[Variant],
    device: torch.device,
    out: Path,
    config: Dict[str, Any],
    runs: List[Record],
) -> int:
    """Train every (seed, variant) of ``args`` not among the finished ``runs``, then write and print the results.

    Returns 0; 1 when a run fails (a diverged loss, a broken worker, unreadable data): the error is printed on
    stderr in one line and logged in ``log.txt`` with its traceback; 130 / 143 when stopped by SIGINT / SIGTERM.
    Either way the finished runs stay in ``results.json`` for ``--resume``.
    """
    results_path = out / 'results.json'
    done = {(r['variant'], r['seed']) for r in runs}
    todo = [(s, v) for s in args.seeds for v in variants if (v.name, s) not in done]
    jobs = max(1, min(args.jobs, len(todo)))
    write_json(results_path, {'config': config, 'runs': runs})  # before any run: a stopped folder resumes
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
        kept = f'{{}} finished run(s) kept in {results_path}; rerun the same command with --resume to continue'
        try:
            if jobs == 1:
                for seed, variant in todo:
                    finished(train_one(variant, seed, args, device, log))
            else:
                _run_parallel(todo, jobs, args, device, out / 'log.txt', finished)
        except KeyboardInterrupt as e:
            write_json(results_path, {'config': config, 'runs': runs})  # (a stop during a write: whole again)
            log_file.write(f'stopped by {_signal_of(e).name}\n')
            return report_stop(e, kept.format(len(runs)))
        except Exception as e:
            message = f'{e if isinstance(e, RunFailed) else first_line(e)} ({kept.format(len(runs))})'
            log_file.write(f'error: {message}\n{getattr(e, "details", "") or traceback.format_exc()}')
            return report_error('compare', message)
    selected = [r for r in runs if r['seed'] in args.seeds]  # a resumed folder may hold runs of other seeds
    reference = table_reference(args.variants)
    rows, lines = summarize(selected, args.variants, reference), verdicts(selected, args.variants)
    _write_results(args, config, runs, selected, rows, lines, out, reference)
    print_summary(
        rows,
        lines,
        f'{len(todo)} run(s) in {time.time() - t_all:.0f}s; results in {out}/ (results.md, results.png, curves.png, '
        'results.json)',
        reference,
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
    reference: str,
) -> None:
    """``results.json`` (every run, and the summary ``rows`` of the ``selected`` ones, their differences to
    ``reference``), ``results.md``, ``results.png`` and ``curves.png``."""
    write_json(out / 'results.json', {'config': config, 'runs': runs, 'summary': rows})
    write_markdown(out / 'results.md', config, rows, reference, verdict_lines)
    title = args.title or f'{args.dataset}: {args.model}, {args.epochs} epochs, {len(args.seeds)} seeds'
    write_plot(out / 'results.png', rows, title)
    write_curves(out / 'curves.png', selected, args.variants, title)


class RunFailed(Exception):
    """A run failed in a worker process: its one-line message, and the worker's traceback as ``details``."""

    def __init__(self, message: str, details: str = ''):
        super().__init__(message)
        self.details = details


@dataclass
class _Worker:
    """A worker process, the connection to it, and the (seed, variant) it is training (None: idle)."""

    process: Any
    conn: Connection
    task: Optional[Tuple[int, Variant]] = None


def _run_parallel(
    todo: List[Tuple[int, Variant]],
    jobs: int,
    args: argparse.Namespace,
    device: torch.device,
    log_path: Path,
    finished: Callable[[Record], None],
) -> None:
    """Run ``todo`` in ``jobs`` worker processes (spawned: no state shared with this one), in order of seeds. The
    workers end with this call, however it ends: a failed run, a stop, or the last run done."""
    ctx = multiprocessing.get_context('spawn')
    queue = list(todo)
    workers: List[_Worker] = []
    try:
        with _ignored(signal.SIGINT):  # inherited: a Ctrl-C to the process group leaves the workers to this process
            for _ in range(jobs):
                conn, child_conn = ctx.Pipe()
                process = ctx.Process(target=_work, args=(child_conn, args, str(device), str(log_path)))
                process.start()
                child_conn.close()
                workers.append(_Worker(process, conn))
        for w in workers:
            _assign(w, queue)
        while any(w.task for w in workers):
            busy = [w for w in workers if w.task]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.conn.poll():
                    finished(_receive(w))
                    _assign(w, queue)
                elif w.process.exitcode is not None:
                    raise RunFailed(f'{_name(w.task)}: its worker process died (exit code {w.process.exitcode})')
    finally:
        _end(workers)


def _name(task: Optional[Tuple[int, Variant]]) -> str:
    return f'{task[1].name} seed {task[0]}' if task else 'no run'


def _assign(worker: _Worker, queue: List[Tuple[int, Variant]]) -> None:
    """Give ``worker`` the next run of ``queue``, or tell it to finish."""
    worker.task = queue.pop(0) if queue else None
    worker.conn.send(worker.task)


def _receive(worker: _Worker) -> Record:
    """The record of the run ``worker`` finished; RunFailed with its error if it failed, or if the worker died."""
    try:
        status, payload, details = worker.conn.recv()
    except (EOFError, OSError):
        raise RunFailed(
            f'{_name(worker.task)}: its worker process died (exit code {worker.process.exitcode})'
        ) from None
    if status == 'error':
        raise RunFailed(payload, details)
    return payload


def _end(workers: List[_Worker]) -> None:
    """End the worker processes: an idle one has been told to finish and gets a moment for it; any other is
    terminated (killed if it will not go). A second Ctrl-C meanwhile is ignored: the stop is under way."""
    with _ignored(signal.SIGINT, signal.SIGTERM):
        for w in workers:
            if w.task is None:
                w.process.join(timeout=10)
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        for w in workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()


@contextmanager
def _ignored(*signals: signal.Signals) -> Iterator[None]:
    """The ``signals`` ignored within the block (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _work(conn: Connection, args: argparse.Namespace, device: str, log_path: str) -> None:
    """A worker process: runs (seed, variant) tasks from ``conn`` until None, sending back each record, or the
    error of a run that failed, with its own thread count and its log lines appended to the log."""
    # SIGINT is ignored (inherited from the start: a terminal's Ctrl-C reaches the whole process group, and the
    # main process decides); SIGTERM, the main process's stop, leaves through Python's exit
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(max(1, args.threads))
    with open(log_path, 'a') as f:
        log = log_to(f)
        for seed, variant in iter(conn.recv, None):
            try:
                conn.send(('done', train_one(variant, seed, args, torch.device(device), log), ''))
            except Exception as e:
                conn.send(('error', first_line(e), traceback.format_exc()))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """Leave through Python's exit, so that what the worker started (data-loader processes) is ended too."""
    raise SystemExit(128 + signum)


def _exit_with_parent() -> None:
    """End this worker when the main process is gone, even killed (SIGKILL, the OOM killer): no orphan trains on."""
    multiprocessing.parent_process().join()
    os._exit(1)

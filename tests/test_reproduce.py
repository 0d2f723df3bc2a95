"""benchmarks/reproduce.py: the committed results are what the committed code computes (one seed of each check).

Per-seed numbers repeat exactly for the same thread count (one), torch and timm builds and CPU kind (the ``machine``
record of results.json); there each test compares exactly. On another machine kind the rounding differs and training
amplifies it, so reproduce.py checks within a tolerance, and the test says so in a warning (pytest's summary).
"""

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'reproduce.py'


def _reproduce():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduce
    finally:
        sys.path.pop(0)
    return reproduce


class NotAnExactCheck(UserWarning):
    """A rerun on another machine kind than the one that made the numbers: checked within a tolerance only."""


def _rerun(preset: str, *args: str) -> str:
    """Run the preset into results/tmp/ (the committed results are never touched); its output."""
    pytest.importorskip('sklearn')
    committed = ROOT / 'results' / preset / 'results.json'
    before = committed.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), preset, *args, '--jobs', '2'],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert committed.read_bytes() == before  # the check never writes the committed results
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the first line says which check ran (the last one repeats 'not an exact check' when it was not exact)
    summary = next(line for line in proc.stdout.splitlines() if line.startswith(('exact check', 'not an exact check')))
    if summary.startswith('not an exact check'):
        warnings.warn(summary, NotAnExactCheck, stacklevel=2)
        assert 'is within tolerance of' in proc.stdout
    else:
        assert summary.startswith('exact check') and 'every rerun run matches' in proc.stdout
    return proc.stdout


@pytest.mark.slow
def test_main_job_seed_0_reproduces_the_published_digits_numbers():
    _rerun('digits', '--seeds', '0', '--variants', 'baseline', 'tm', 'tm-noembed')


@pytest.mark.slow
def test_cluttered_mnist_seed_reproduces_the_published_numbers():
    _rerun('cluttered-mnist-confirm', '--seeds', '5', '--variants', 'baseline', 'tm-noembed')


def test_presets_name_existing_results_one_thread_and_their_machine():
    from timm_tm.bench.machine import numerics_record

    reproduce = _reproduce()
    for preset, args in reproduce.PRESETS.items():
        assert args[args.index('--threads') + 1] == '1', preset  # per-seed numbers depend on the thread count
        results = json.loads((ROOT / 'results' / preset / 'results.json').read_text())
        runs = {(r['variant'], r['seed']) for r in results['runs']}
        seeds = [int(s) for s in reproduce._option(args, '--seeds')]
        variants = reproduce._option(args, '--variants')
        assert runs == {(v, s) for v in variants for s in seeds}, preset
        # what an exact check needs to know: the machine kind that made them, recorded as compare records it
        assert results['config']['machine'].keys() == numerics_record(1).keys(), preset


# ------------------------------------------------------------------------------ the check itself, on a copy of the
# committed digits results ("rerun") against the committed file, or against a copy with one number changed


def _results(tmp_path, name, change=None, machine=None, seeds=None) -> Path:
    from timm_tm.bench.machine import numerics_record

    results = json.loads((ROOT / 'results' / 'digits' / 'results.json').read_text())
    if machine is None:  # this CPU kind, uncapped: the test's stand-in does not depend on ONEDNN_MAX_CPU_ISA here
        machine = {**numerics_record(1), 'kernel_env': {}}
    results['config']['machine'] = machine
    if seeds is not None:  # a rerun of these seeds only
        results['runs'] = [r for r in results['runs'] if r['seed'] in seeds]
    if change:
        change(results['runs'])
    path = tmp_path / name / 'results.json'
    path.parent.mkdir()
    path.write_text(json.dumps(results))
    return path


def _run(runs, variant, seed):
    return next(r for r in runs if r['variant'] == variant and r['seed'] == seed)


def _another_cpu_kind():
    from timm_tm.bench.machine import numerics_record

    machine = copy.deepcopy(numerics_record(1))
    machine['kernel_env'] = {'ONEDNN_MAX_CPU_ISA': 'SSE41'}
    return machine


def test_same_machine_kind_is_an_exact_check_that_catches_one_image(tmp_path):
    reproduce = _reproduce()
    committed = _results(tmp_path, 'committed')
    check = reproduce.compare_runs(_results(tmp_path, 'rerun'), committed)
    assert check.exact and check.summary.startswith('exact check') and check.problems == []

    def one_image_less(runs):  # 1 of the 359 val images: a change no tolerance would catch
        _run(runs, 'tm', 3)['top1'] -= 100 / 359

    check = reproduce.compare_runs(_results(tmp_path, 'changed', one_image_less), committed)
    (problem,) = check.problems
    assert check.exact and problem.startswith('tm seed 3: rerun ')


def test_another_machine_kind_is_checked_within_the_seed_spread(tmp_path):
    reproduce = _reproduce()
    committed = _results(tmp_path, 'committed')
    spread = reproduce.seed_spread(reproduce._runs(committed)[1])
    assert 0.3 < spread < 0.5  # the digits' per-variant stds are 0.32-0.46
    tolerance = reproduce.TOP1_SPREADS * 2**0.5 * spread  # one seed

    def as_measured(runs):  # ONEDNN_MAX_CPU_ISA=SSE41 on the machine that made them: seed 0 was 5 images lower
        _run(runs, 'tm-noembed', 0)['top1'] -= 500 / 359
        _run(runs, 'tm-noembed', 0)['train_loss_per_epoch'][0] += 0.0015

    rerun = _results(tmp_path, 'sse41', as_measured, _another_cpu_kind(), seeds=[0])
    check = reproduce.compare_runs(rerun, committed)
    assert not check.exact and check.problems == []
    assert check.summary.startswith('not an exact check') and "kernel_env {'ONEDNN_MAX_CPU_ISA': 'SSE41'} here" in (
        check.summary
    )

    def beyond_the_spread(runs):
        _run(runs, 'baseline', 2)['top1'] -= tolerance + 0.01

    rerun = _results(tmp_path, 'worse', beyond_the_spread, _another_cpu_kind(), seeds=[2])
    (problem,) = reproduce.compare_runs(rerun, committed).problems
    assert problem.startswith('baseline: mean top-1 ') and 'more than the tolerance' in problem

    shift = (tolerance + tolerance / 5**0.5) / 2  # within one seed's tolerance, not within five seeds' mean's

    def every_seed_lower(runs):
        for r in runs:
            r['top1'] -= shift if r['variant'] == 'tm' else 0.0

    rerun = _results(tmp_path, 'lower', every_seed_lower, _another_cpu_kind())
    (problem,) = reproduce.compare_runs(rerun, committed).problems
    assert problem.startswith(f'tm: mean top-1 -{shift:.2f} points')

    def another_first_epoch(runs):  # e.g. another learning rate: the first epoch's loss moves, the final top-1 not
        _run(runs, 'tm-embtied', 1)['train_loss_per_epoch'][0] += 0.02

    rerun = _results(tmp_path, 'lr', another_first_epoch, _another_cpu_kind(), seeds=[1])
    (problem,) = reproduce.compare_runs(rerun, committed).problems
    assert problem.startswith('tm-embtied seed 1: first-epoch training loss')


def test_results_without_a_machine_record_are_never_checked_exactly(tmp_path):
    reproduce = _reproduce()
    check = reproduce.compare_runs(_results(tmp_path, 'rerun'), _results(tmp_path, 'old', machine={}))
    assert not check.exact and 'the committed results record no machine' in check.summary

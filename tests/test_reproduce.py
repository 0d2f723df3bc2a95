"""benchmarks/reproduce.py: the committed results are what the committed code computes (one seed of each check).

Per-seed numbers repeat exactly for the same thread count (one), torch build and CPU kind; each test reruns a small
part of a published table and compares it with results/.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'reproduce.py'

pytest.importorskip('sklearn')


def _rerun(tmp_path, preset: str, *args: str) -> str:
    """Run the preset from a copy of the repository's results (the committed ones are never touched)."""
    committed = ROOT / 'results' / preset / 'results.json'
    before = committed.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), preset, *args, '--jobs', '2'],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert committed.read_bytes() == before  # the check never writes the committed results
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_main_job_seed_0_reproduces_the_published_digits_numbers(tmp_path):
    out = _rerun(tmp_path, 'digits', '--seeds', '0', '--variants', 'baseline', 'tm', 'tm-embtied')
    assert 'every rerun run matches' in out


@pytest.mark.slow
def test_cluttered_mnist_seed_reproduces_the_published_numbers(tmp_path):
    out = _rerun(tmp_path, 'cluttered-mnist-confirm', '--seeds', '5', '--variants', 'baseline', 'tm-noembed')
    assert 'every rerun run matches' in out


def test_presets_name_existing_results_and_one_thread():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduce
    finally:
        sys.path.pop(0)
    for preset, args in reproduce.PRESETS.items():
        assert args[args.index('--threads') + 1] == '1', preset  # per-seed numbers depend on the thread count
        results = json.loads((ROOT / 'results' / preset / 'results.json').read_text())
        runs = {(r['variant'], r['seed']) for r in results['runs']}
        seeds = [int(s) for s in reproduce._option(args, '--seeds')]
        variants = reproduce._option(args, '--variants')
        assert runs == {(v, s) for v in variants for s in seeds}, preset

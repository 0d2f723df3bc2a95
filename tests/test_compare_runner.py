"""``timm-tm compare``'s runs as processes: a stop (Ctrl-C, SIGTERM, a kill) keeps what finished and leaves no
worker behind, and two comparisons never write one folder at once. Real processes and real signals."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_compare import TINY

from timm_tm.compare import main

pytest.importorskip('sklearn')
pytestmark = pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads processes from /proc (Linux)')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def start(tmp_path):
    """``start(ARGV)``: ``timm-tm compare ARGV`` in its own process (and process group: a terminal's Ctrl-C goes to
    the group); its stdout / stderr go to files (a full pipe would block it). Whatever the test leaves running of
    it is killed at the end."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    started = []

    def _start(argv) -> subprocess.Popen:
        with open(tmp_path / 'stdout.txt', 'w') as stdout, open(tmp_path / 'stderr.txt', 'w') as stderr:
            proc = subprocess.Popen(
                [sys.executable, '-m', 'timm_tm', 'compare', *argv], cwd=tmp_path, env=env, stdout=stdout,
                stderr=stderr, start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f'compare exited with {proc.returncode} before the test could stop it'
        assert time.time() < deadline, 'timed out waiting for the comparison'
        time.sleep(0.1)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ''


def _runs(out: Path) -> list:
    text = _read(out / 'results.json')
    return [(r['variant'], r['seed']) for r in json.loads(text)['runs']] if text else []


def _children(pid: int) -> list:
    """The processes whose parent is ``pid``."""
    kids = []
    for d in Path('/proc').iterdir():
        try:
            if d.name.isdigit() and int((d / 'stat').read_text().rsplit(')', 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path('/proc') / str(pid) / 'stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def _stopped_line(out: Path, signame: str, finished: int) -> str:
    return (
        f'timm-tm compare: error: stopped by {signame} ({finished} finished run(s) kept in {out / "results.json"}; '
        'rerun the same command with --resume to continue)'
    )


def test_ctrl_c_during_the_first_run_is_one_line_and_the_folder_resumes(tmp_path, start):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) before any run finished: exit 130, one line,
    and results.json (no runs yet) is there, so that --resume continues the folder."""
    out = tmp_path / 'run'
    proc = start(TINY + ['--seeds', '0', '--variants', 'baseline-ep1000', '--out', str(out)])
    _wait_for(lambda: re.search(r'epoch +2/1000', _read(out / 'log.txt')), proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert _read(tmp_path / 'stderr.txt').splitlines() == [_stopped_line(out, 'SIGINT', 0)]
    assert _runs(out) == []
    assert main(TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(out), '--resume']) == 0
    assert _runs(out) == [('baseline', 0)]


def test_sigterm_stops_the_workers_and_keeps_the_finished_runs_and_the_folder_is_locked_meanwhile(
    tmp_path, capsys, start
):
    """--jobs 2, SIGTERM to the main process alone: the workers stop with it (no orphans), the finished run is
    kept, exit 143 with one line. While it runs, a second comparison on its folder (a resume) is refused."""
    out = tmp_path / 'run'
    argv = TINY + ['--seeds', '0', '--variants', 'baseline', 'baseline-ep1000', '--jobs', '2', '--out', str(out)]
    proc = start(argv)
    _wait_for(lambda: _runs(out) == [('baseline', 0)], proc)
    with pytest.raises(SystemExit) as e:
        main(argv[:-1] + [str(out), '--resume', '--seeds', '0', '1'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f'--out {out} is in use by another timm-tm compare (pid {proc.pid})' in err, err
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert _read(tmp_path / 'stderr.txt').splitlines() == [_stopped_line(out, 'SIGTERM', 1)]
    assert _runs(out) == [('baseline', 0)]
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], 'worker processes outlived the comparison'


def test_a_killed_comparison_leaves_no_worker_and_a_folder_that_resumes(tmp_path, start):
    """A kill cannot be caught: nothing is cleaned up, yet the workers end with the main process, and --resume
    continues the folder (its lock died with it)."""
    out = tmp_path / 'run'
    argv = TINY + ['--seeds', '0', '--variants', 'baseline-ep1000', 'baseline-ep999', '--jobs', '2', '--out', str(out)]
    proc = start(argv)
    _wait_for(lambda: re.search(r'baseline-ep999 +seed 0  epoch +2/', _read(out / 'log.txt')), proc)
    workers = _children(proc.pid)
    assert workers
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], 'worker processes outlived the comparison'
    assert main(TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(out), '--resume']) == 0
    assert _runs(out) == [('baseline', 0)]

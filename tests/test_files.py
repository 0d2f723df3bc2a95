"""timm_tm.files: the one way the commands write results, pictures and exports."""

import os
import stat

import pytest

from timm_tm.files import atomic_write, atomic_write_text, make_shareable, process_umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_text(text: str):
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    return write


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / 'sub' / 'results.json'
    assert atomic_write(path, _write_text('one')) is None
    assert atomic_write(path, _write_text('two')) is None
    assert path.read_text() == 'two'
    assert sorted(p.name for p in path.parent.iterdir()) == ['results.json']
    # mkstemp makes 0600 files: the result has the mode open() gives a new file
    assert _mode(path) == 0o666 & ~process_umask()


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / 'results.json'
    path.write_text('good')

    def fails(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write('half')
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fails)
    assert path.read_text() == 'good'
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_without_replace_an_existing_file_is_kept_and_the_new_one_named(tmp_path):
    path = tmp_path / 'bench.json'
    assert atomic_write(path, _write_text('first'), replace=False) is None
    kept = atomic_write(path, _write_text('second'), replace=False)
    assert path.read_text() == 'first'
    assert kept is not None and kept.parent == tmp_path and kept.read_text() == 'second'


def test_make_shareable_gives_files_and_folders_their_usual_modes(tmp_path):
    folder, file = tmp_path / 'folder', tmp_path / 'file'
    folder.mkdir(mode=0o700)
    file.touch(mode=0o600)
    make_shareable(folder)
    make_shareable(file)
    umask = process_umask()
    assert _mode(folder) == 0o777 & ~umask and _mode(file) == 0o666 & ~umask


def test_process_umask_reads_without_changing_it():
    previous = os.umask(0o027)
    try:
        assert process_umask() == 0o027
        assert process_umask() == 0o027
    finally:
        os.umask(previous)


def test_atomic_write_text_is_utf8_and_keeps_an_existing_file_without_replace(tmp_path):
    path = tmp_path / 'results.md'
    assert atomic_write_text(path, 'Δ ± 0.5\n') is None
    assert path.read_bytes() == 'Δ ± 0.5\n'.encode()
    kept = atomic_write_text(path, 'other', replace=False)
    assert path.read_text(encoding='utf-8') == 'Δ ± 0.5\n' and kept.read_text(encoding='utf-8') == 'other'


@pytest.mark.skipif(os.name != 'posix', reason='fcntl.flock is POSIX')
def test_exclusive_lock_refuses_a_live_holder_and_takes_over_a_dead_ones_file(tmp_path):
    import subprocess
    import sys

    from timm_tm.files import LockedError, exclusive_lock

    lock = tmp_path / '.lock'
    with exclusive_lock(lock):
        assert lock.read_text() == f'{os.getpid()}\n'
        with pytest.raises(LockedError, match=f'held by process {os.getpid()}') as e:
            with exclusive_lock(lock):
                pass
        assert e.value.pid == os.getpid()
    assert not lock.exists()  # removed on release
    # another process holds it until it dies, even by SIGKILL; the file it leaves behind is taken over
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from timm_tm.files import exclusive_lock\n'
         'with exclusive_lock(sys.argv[1]):\n    print("held", flush=True); time.sleep(600)', str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(LockedError, match=f'held by process {holder.pid}'):
            with exclusive_lock(lock):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()
    with exclusive_lock(lock):
        assert lock.read_text() == f'{os.getpid()}\n'

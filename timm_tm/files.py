"""Writing files safely: atomically (a reader never sees half a file), with the permissions of a normal file.

Every command that writes results, pictures or weights goes through here, so that a killed run leaves either the
old file or the new one, never a truncated one, and a file made through ``tempfile`` (0600) is as readable as one
made by ``open`` (0666 less the umask).
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

__all__ = ['atomic_write', 'atomic_write_text', 'process_umask', 'make_shareable', 'exclusive_lock', 'LockedError']

PathLike = Union[str, os.PathLike]


def process_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_shareable(path: PathLike) -> None:
    """Give ``path`` the mode ``open`` / ``mkdir`` would have given it: 0666 (0777 for a folder) less the umask.

    ``tempfile.mkstemp`` / ``mkdtemp`` make private files and folders; results and exports are for sharing.
    """
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~process_umask())


def atomic_write(
    path: PathLike,
    write: Callable[[str], None],
    replace: bool = True,
) -> Optional[Path]:
    """Write ``path`` through ``write(temporary_path)``, then move the finished file into place in one step.

    The temporary file sits beside ``path`` (same file system) and is removed when ``write`` fails. With
    ``replace=False`` an existing ``path`` is never replaced, even one that appears while ``write`` runs: the
    finished file is then kept under its temporary name, which is returned. Returns None when ``path`` was written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        make_shareable(tmp)
        if replace:
            os.replace(tmp, path)
            return None
        try:
            os.link(tmp, path)  # unlike os.replace, refuses an existing path (atomically)
        except FileExistsError:
            return Path(tmp)
        except OSError:  # a file system without hard links: check, then replace
            if os.path.lexists(path):
                return Path(tmp)
            os.replace(tmp, path)
            return None
        os.unlink(tmp)
        return None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str, replace: bool = True) -> Optional[Path]:
    """:func:`atomic_write` of ``text`` (UTF-8): results, tables, JSON."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding='utf-8'), replace=replace)


class LockedError(OSError):
    """The lock file is held by another live process, ``pid`` (None when it has not written its id yet)."""

    def __init__(self, path: Path, pid: Optional[int]):
        super().__init__(f'{path} is held by process {pid if pid is not None else "(unknown)"}')
        self.path, self.pid = path, pid


@contextmanager
def exclusive_lock(path: PathLike) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block: created with this process's id in it, removed at the end.

    A file held by a live process raises :class:`LockedError` at once (no waiting). The lock is the kernel's
    (``fcntl.flock``), so a process that dies, even by SIGKILL, releases it: the file it leaves is taken over.
    POSIX only.
    """
    import fcntl  # POSIX: imported here, so that the rest of this module imports anywhere

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode('ascii', 'replace').strip()
            os.close(fd)
            raise LockedError(path, int(text) if text.isdigit() else None) from None
        try:  # the holder before us may have removed the file after we opened it: retry on the file now there
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode('ascii'))
        yield
    finally:
        try:  # while still holding it: a process that opened it meanwhile finds it removed, and retries
            os.unlink(path)
        except FileNotFoundError:  # its folder was removed under us
            pass
        os.close(fd)

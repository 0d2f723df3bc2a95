"""The Hugging Face Hub, offline: a cache laid out as a download leaves it, and weights files damaged on purpose.

Shared by the tests of pretrained weights, export and push (a pytest plugin for ``hf_cache``: list this module in a
test module's ``pytest_plugins``; import the helpers). PYTEST_DONT_REWRITE: the tests import it before pytest loads it
as a plugin, too late to rewrite its asserts (it has none).
"""

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

__all__ = ['LFS_FILES', 'populate_hf_cache', 'offline_hf_cache', 'corrupt_file', 'hf_cache']

LFS_FILES = ('.safetensors', '.bin', '.pth')  # stored on the Hub with git LFS: etag = sha256 of the content


def _etag(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(LFS_FILES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()  # git blob id, the etag of a regular file


def populate_hf_cache(cache_dir: Path, repo_id: str, folder: Path, commit: Optional[str] = None) -> Path:
    """Put ``folder``'s files in ``cache_dir`` as ``hf_hub_download`` of ``repo_id`` at ``main`` leaves them.

    blobs/<etag> holds each file, snapshots/<commit>/<name> links to it, refs/main names the commit.
    Returns the snapshot folder.
    """
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    storage = cache_dir / ('models--' + repo_id.replace('/', '--'))
    snapshot = storage / 'snapshots' / commit
    (storage / 'blobs').mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / 'refs').mkdir(exist_ok=True)
    (storage / 'refs' / 'main').write_text(commit)  # no newline, as huggingface_hub writes it
    for src in sorted(folder.iterdir()):
        etag = _etag(src)
        shutil.copyfile(src, storage / 'blobs' / etag)
        link = snapshot / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.join('..', '..', 'blobs', etag), link)
    return snapshot


def offline_hf_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline; env vars and the already-imported constants both point at it."""
    import huggingface_hub.constants as constants

    cache = tmp_path / 'hf_home' / 'hub'
    cache.mkdir(parents=True)
    monkeypatch.setenv('HF_HOME', str(cache.parent))
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return cache


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty offline Hugging Face cache for one test (:func:`offline_hf_cache`)."""
    return offline_hf_cache(tmp_path, monkeypatch)


def corrupt_file(path: Path, how: str) -> None:
    """Damage a weights file in place: ``'truncated'`` (its last 1000 bytes cut) or ``'altered'`` (one byte of one
    tensor flipped: a safetensors header still parses)."""
    data = bytearray(path.read_bytes())
    if how == 'truncated':
        data = data[: len(data) - 1000]
    else:
        data[-5] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))

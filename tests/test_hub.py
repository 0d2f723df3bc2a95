"""Pretrained tags: timm's ResNet weights into tm_resnet, unpublished TM tags, verified weights files.

Offline throughout: weights are placed in a temporary Hugging Face cache laid out exactly as a download leaves it
(``models--ORG--NAME/{blobs,refs,snapshots}``), with ``HF_HUB_OFFLINE=1``; timm's loader runs unmocked.
"""

import hashlib
import os
import shutil
from pathlib import Path
from typing import Dict, Optional

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

from timm_tm.weights import PUBLISHED_TAGS, TM_WEIGHTS, WeightsFileError, tm_hub_id, verify_weights_file

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
    return offline_hf_cache(tmp_path, monkeypatch)


def _publish_resnet18(cache: Path, tmp_path: Path) -> Dict[str, torch.Tensor]:
    """A resnet18 (random weights, made distinct from init) cached as timm/resnet18.a1_in1k; its state_dict."""
    model = timm.create_model('resnet18', pretrained_cfg='a1_in1k')
    with torch.no_grad():  # BN statistics and affine away from their init, so a skipped load would show
        for name, t in model.state_dict().items():
            if t.is_floating_point() and 'bn' in name:
                t.uniform_(0.5, 1.5)
    folder = tmp_path / 'resnet18.a1_in1k'
    save_for_hf(model, folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors']
    populate_hf_cache(cache, 'timm/resnet18.a1_in1k', folder)
    return model.state_dict()


def test_cache_layout_is_what_huggingface_hub_resolves(hf_cache, tmp_path):
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    _publish_resnet18(hf_cache, tmp_path)
    for name in ('model.safetensors', 'config.json'):
        path = hf_hub_download('timm/resnet18.a1_in1k', name)  # offline: resolved through refs/main
        assert Path(path).parent.parent.name == 'snapshots' and Path(path).is_symlink()
        assert try_to_load_from_cache('timm/resnet18.a1_in1k', name) == path
        assert (tmp_path / 'resnet18.a1_in1k' / name).read_bytes() == Path(path).read_bytes()
    blob = Path(os.path.realpath(hf_hub_download('timm/resnet18.a1_in1k', 'model.safetensors')))
    assert blob.parent.name == 'blobs' and blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()


def test_tm_resnet18_tag_equals_resnet18_exactly(hf_cache, tmp_path):
    source = _publish_resnet18(hf_cache, tmp_path)
    resnet = timm.create_model('resnet18.a1_in1k', pretrained=True).eval()
    tm = timm.create_model('tm_resnet18.a1_in1k', pretrained=True).eval()
    assert tm.pretrained_cfg['hf_hub_id'] == 'timm/resnet18.a1_in1k'
    tm_sd = tm.state_dict()
    for k, v in source.items():
        assert torch.equal(tm_sd[k], v), k
    for name, block in tm.tm_blocks().items():
        assert not block.embed.weight.any() and block.evidence_weight.item() == 0, name
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(tm(x), resnet(x))


def test_tm_resnet18_tag_new_num_classes_fresh_head_same_features(hf_cache, tmp_path):
    source = _publish_resnet18(hf_cache, tmp_path)
    resnet = timm.create_model('resnet18.a1_in1k', pretrained=True).eval()
    tm = timm.create_model('tm_resnet18.a1_in1k', pretrained=True, num_classes=7).eval()
    assert tm.fc.weight.shape == (7, 512)
    assert all(b.num_classes == 7 for b in tm.tm_blocks().values())
    assert not torch.equal(tm.fc.weight[:7], source['fc.weight'][:7])  # the head is fresh, not a slice
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(tm.forward_features(x), resnet.forward_features(x))  # embeddings at zero: identity
        assert tm(x).shape == (2, 7)


def test_tm_tags_are_registered_and_unpublished_ones_not_listed_as_pretrained():
    tagged = set(timm.list_models('tm_*', include_tags=True))
    pretrained = set(timm.list_pretrained('tm_*'))
    for name in TM_WEIGHTS:
        assert name in tagged
        assert (name in pretrained) == (name in PUBLISHED_TAGS)
    assert 'tm_resnet50.a1_in1k' in pretrained
    # the default tag of every architecture is unchanged by the TM tags
    assert timm.create_model('tm_resnet18_small').pretrained_cfg.get('tag') is None
    assert timm.create_model('tm_resnet50').pretrained_cfg['tag'] == 'a1_in1k'


@pytest.mark.parametrize('name', sorted(n for n in TM_WEIGHTS if n not in PUBLISHED_TAGS))
def test_unpublished_tag_says_so_and_shows_the_publish_commands(hf_cache, name):
    with pytest.raises(RuntimeError) as e:
        timm.create_model(name, pretrained=True)
    msg = str(e.value)
    assert 'not published' in msg and f'hf-hub:{tm_hub_id(name)}' in msg
    assert (
        'timm-tm export' in msg and f'--name {name}' in msg and f'timm-tm push {name} --repo {tm_hub_id(name)}' in msg
    )
    assert str(hf_cache) in msg
    timm.create_model(name, pretrained=False)  # the architecture itself is fine


def test_unpublished_tag_loads_from_the_local_cache(hf_cache, tmp_path):
    name = 'tm_resnet18_small.mnist'
    model = timm.create_model('tm_resnet18_small', num_classes=10).eval()
    with torch.no_grad():
        for block in model.tm_blocks().values():
            block.embed.weight.normal_(0, 0.01)  # not the init: a load that skipped the TM blocks would show
    folder = tmp_path / name
    save_for_hf(model, folder, safe_serialization=True)
    populate_hf_cache(hf_cache, tm_hub_id(name), folder)
    loaded = timm.create_model(name, pretrained=True).eval()
    assert loaded.pretrained_cfg['hf_hub_id'] == tm_hub_id(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == 'truncated':
        data = data[: len(data) - 1000]
    else:  # one byte of one tensor changed: the header still parses
        data[-5] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('how', ['truncated', 'altered'])
def test_corrupt_cached_weights_are_refused_naming_the_file(hf_cache, tmp_path, how):
    _publish_resnet18(hf_cache, tmp_path)
    from huggingface_hub import hf_hub_download

    cached = Path(hf_hub_download('timm/resnet18.a1_in1k', 'model.safetensors'))
    _corrupt(Path(os.path.realpath(cached)), how)
    with pytest.raises(WeightsFileError) as e:
        timm.create_model('tm_resnet18.a1_in1k', pretrained=True)
    assert str(cached) in str(e.value)
    assert ('SHA-256' in str(e.value)) and ('altered or truncated' in str(e.value))


def test_verify_weights_file_checks_the_header_without_a_recorded_hash(tmp_path):
    import safetensors.torch

    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file({'a': torch.randn(64, 64)}, str(path))
    verify_weights_file(path)
    verify_weights_file(path, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    _corrupt(path, 'truncated')
    with pytest.raises(WeightsFileError, match='not a valid safetensors file') as e:
        verify_weights_file(path)
    assert str(path) in str(e.value)
    with pytest.raises(WeightsFileError, match='not found'):
        verify_weights_file(tmp_path / 'missing.safetensors')

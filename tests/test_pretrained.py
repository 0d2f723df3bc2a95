"""Pretrained tags: timm's ResNet weights into tm_resnet, unpublished TM tags, verified weights files.

Offline throughout: weights are placed in a temporary Hugging Face cache laid out exactly as a download leaves it
(``models--ORG--NAME/{blobs,refs,snapshots}``), with ``HF_HUB_OFFLINE=1``; timm's loader runs unmocked.
"""

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
from conftest import tm_at_identity
from offline_hub import corrupt_file, populate_hf_cache
from timm.models import PretrainedCfg, get_pretrained_cfg, save_for_hf

from timm_tm.pretrained import (
    PREFERRED_WEIGHTS_FILES,
    PUBLISHED_TAGS,
    TM_WEIGHTS,
    TMWeights,
    WeightsFileError,
    split_hub_revision,
    tm_hub_id,
    tm_weight_cfgs,
    verify_weights_file,
    weights_source,
)

pytest_plugins = ('offline_hub',)  # the hf_cache fixture


def _publish_timm_weights(cache: Path, tmp_path: Path, name: str = 'resnet18.a1_in1k') -> Dict[str, torch.Tensor]:
    """A timm model (resnet18; random weights, made distinct from init) cached as timm/NAME; its state_dict."""
    arch, tag = name.split('.')
    model = timm.create_model(arch, pretrained_cfg=tag)
    with torch.no_grad():  # BN statistics and affine away from their init, so a skipped load would show
        for key, t in model.state_dict().items():
            if t.is_floating_point() and ('bn' in key or key.startswith('conv1.1')):  # conv1.1: a deep stem's BN
                t.uniform_(0.5, 1.5)
    folder = tmp_path / name
    save_for_hf(model, folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors']
    populate_hf_cache(cache, f'timm/{name}', folder)
    return model.state_dict()


def test_cache_layout_is_what_huggingface_hub_resolves(hf_cache, tmp_path):
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    _publish_timm_weights(hf_cache, tmp_path)
    for name in ('model.safetensors', 'config.json'):
        path = hf_hub_download('timm/resnet18.a1_in1k', name)  # offline: resolved through refs/main
        assert Path(path).parent.parent.name == 'snapshots' and Path(path).is_symlink()
        assert try_to_load_from_cache('timm/resnet18.a1_in1k', name) == path
        assert (tmp_path / 'resnet18.a1_in1k' / name).read_bytes() == Path(path).read_bytes()
    blob = Path(os.path.realpath(hf_hub_download('timm/resnet18.a1_in1k', 'model.safetensors')))
    assert blob.parent.name == 'blobs' and blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()


@pytest.mark.parametrize('name', ['resnet18.a1_in1k', 'resnet18d.ra2_in1k'])  # a plain ResNet, a ResNet-D
def test_tm_tag_equals_its_base_exactly(hf_cache, tmp_path, name):
    source = _publish_timm_weights(hf_cache, tmp_path, name)
    resnet = timm.create_model(name, pretrained=True).eval()
    tm = timm.create_model(f'tm_{name}', pretrained=True, embedding='tied', evidence_mode='logits').eval()
    assert tm.pretrained_cfg['hf_hub_id'] == f'timm/{name}'
    tm_sd = tm.state_dict()
    for k, v in source.items():
        assert torch.equal(tm_sd[k], v), k
    assert tm_at_identity(tm)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(tm(x), resnet(x))


def test_tm_resnet18_tag_new_num_classes_fresh_head_same_features(hf_cache, tmp_path):
    source = _publish_timm_weights(hf_cache, tmp_path)
    resnet = timm.create_model('resnet18.a1_in1k', pretrained=True).eval()
    tm = timm.create_model('tm_resnet18.a1_in1k', pretrained=True, num_classes=7).eval()
    assert tm.fc.weight.shape == (7, 512)
    assert {n: b.num_classes for n, b in tm.tm_blocks().items()} == {'layer3.2': 7, 'layer4.2': 7}
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
    folder = tmp_path / name
    save_for_hf(model, folder, safe_serialization=True)
    populate_hf_cache(hf_cache, tm_hub_id(name), folder)
    loaded = timm.create_model(name, pretrained=True).eval()
    assert loaded.pretrained_cfg['hf_hub_id'] == tm_hub_id(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    loaded_sd = loaded.state_dict()  # the TM blocks too, though they change no prediction: templates are trained
    assert all(torch.equal(loaded_sd[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize('how', ['truncated', 'altered'])
def test_corrupt_cached_weights_are_refused_naming_the_file(hf_cache, tmp_path, how):
    _publish_timm_weights(hf_cache, tmp_path)
    from huggingface_hub import hf_hub_download

    cached = Path(hf_hub_download('timm/resnet18.a1_in1k', 'model.safetensors'))
    corrupt_file(Path(os.path.realpath(cached)), how)
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
    corrupt_file(path, 'truncated')
    with pytest.raises(WeightsFileError, match='not a valid safetensors file') as e:
        verify_weights_file(path)
    assert str(path) in str(e.value)
    with pytest.raises(WeightsFileError, match='not found'):
        verify_weights_file(tmp_path / 'missing.safetensors')


def test_tm_weights_give_pretrained_cfgs_without_the_card_fields():
    for name, weights in TM_WEIGHTS.items():
        assert isinstance(weights, TMWeights)
        cfg = tm_weight_cfgs()[name]
        assert 'dataset' not in cfg and 'recipe' not in cfg and weights.recipe in cfg['notes'][0]
        assert {k: v for k, v in cfg.items() if k not in ('hf_hub_id', 'notes')} == weights.pretrained_cfg()
        registered = get_pretrained_cfg(name)
        assert all(getattr(registered, k) == v for k, v in weights.pretrained_cfg().items()), name
    mnist = TM_WEIGHTS['tm_resnet18_small.mnist'].pretrained_cfg()
    assert mnist['num_classes'] == 10 and mnist['mean'] == (0.1307,) * 3
    assert 'mean' not in TM_WEIGHTS['tm_resnet50.tm_in1k'].pretrained_cfg()  # the architecture's default stays


# --- our copies of what timm keeps private: a timm that changes its own fails here ---------------------------------


def test_preferred_files_and_revision_split_are_timms():
    from timm.models._hub import _PREFERRED_FILES, hf_split

    assert PREFERRED_WEIGHTS_FILES == _PREFERRED_FILES
    for hub_id in ('org/name', 'org/name@main', 'org/name@v1.0', 'org/name@', 'name', '@rev', 'org/name@refs/pr/1'):
        assert split_hub_revision(hub_id) == hf_split(hub_id), hub_id
    for hub_id in ('org/name@a@b', '@@'):
        with pytest.raises((AssertionError, ValueError)):
            hf_split(hub_id)
        with pytest.raises(ValueError, match='at most one @'):
            split_hub_revision(hub_id)


def test_weights_source_follows_timms_order():
    """Every mix of sources a pretrained cfg can hold: the one ``weights_source`` names is the one timm loads."""
    from timm.models._builder import _resolve_pretrained_source

    sources = itertools.product(
        (None, 'hf-hub', 'local-dir'),  # source
        (None, {'w': torch.zeros(1)}),  # state_dict
        (None, '/weights.pth'),  # file
        (None, 'org/name'),  # hf_hub_id
        (None, 'w.bin'),  # hf_hub_filename
        (None, 'https://example.com/w.pth'),  # url
    )
    checked = set()
    for source, state_dict, file, hf_hub_id, hf_hub_filename, url in sources:
        if source == 'hf-hub' and hf_hub_id is None:
            continue  # timm asserts a Hub id for an hf-hub: name
        cfg = PretrainedCfg(
            source=source,
            state_dict=state_dict,
            file=file,
            hf_hub_id=hf_hub_id,
            hf_hub_filename=hf_hub_filename,
            url=url,
        )
        kind, where = weights_source(cfg)
        timm_kind, timm_where = _resolve_pretrained_source(cfg.to_dict())
        assert kind == timm_kind, cfg
        if kind == 'hf-hub' and hf_hub_filename:
            timm_where = timm_where[0]  # (hub id, file name): the file name is the cfg's, read beside
        if kind == 'state_dict':
            assert where is state_dict, cfg  # timm's is a copy (to_dict)
        elif kind:
            assert where == timm_where, cfg
        checked.add(kind)
    assert checked == {'hf-hub', 'local-dir', 'state_dict', 'file', 'url', ''}


def test_timm_loads_the_weights_our_check_verifies_from_a_cfg_with_two_sources(hf_cache, tmp_path):
    """A file and a Hub id in one cfg: timm loads the file, so the file is verified and damaged cached Hub weights do
    not stop the load; with the Hub id alone, those Hub weights are loaded, and verified."""
    import safetensors.torch

    from_file = timm.create_model('tm_resnet18_small', num_classes=10).eval()
    from_hub = timm.create_model('tm_resnet18_small', num_classes=10).eval()
    file = tmp_path / 'file.safetensors'
    safetensors.torch.save_file(from_file.state_dict(), str(file))
    save_for_hf(from_hub, tmp_path / 'hub', safe_serialization=True)
    cached = populate_hf_cache(hf_cache, 'some-org/hub', tmp_path / 'hub') / 'model.safetensors'
    both = dict(file=str(file), hf_hub_id='some-org/hub')
    x = torch.randn(2, 3, 32, 32)

    def logits(**sources) -> torch.Tensor:
        overlay = dict(num_classes=10, **sources)
        model = timm.create_model('tm_resnet18_small', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)
        with torch.no_grad():
            return model.eval()(x)

    with torch.no_grad():
        assert not torch.equal(from_file(x), from_hub(x))
        assert torch.equal(logits(**both), from_file(x))
        assert torch.equal(logits(hf_hub_id='some-org/hub'), from_hub(x))
    corrupt_file(Path(os.path.realpath(cached)), 'altered')
    with torch.no_grad():
        assert torch.equal(logits(**both), from_file(x))  # not what timm reads: not checked, not in the way
    with pytest.raises(WeightsFileError, match='altered or truncated') as e:
        logits(hf_hub_id='some-org/hub')
    assert str(cached) in str(e.value)
    corrupt_file(file, 'truncated')
    with pytest.raises(WeightsFileError, match='not a valid safetensors file') as e:
        logits(**both)
    assert str(file) in str(e.value)


# --- tm_resnet checkpoints through timm's pretrained paths: another TM configuration is refused ----------------------


def _tm_checkpoint(tmp_path: Path, how: str, **kwargs) -> str:
    """A tm_resnet18_small (10 classes, ``kwargs``) saved as timm's pretrained paths read it; the path to pass.

    'file': a state_dict file for ``pretrained_cfg_overlay=dict(file=...)``. 'local-dir': a save_for_hf folder whose
    config.json lacks the TM model args (as an older export's does): the model is built with the defaults.
    """
    source = timm.create_model('tm_resnet18_small', num_classes=10, **kwargs)
    if how == 'file':
        path = tmp_path / 'source.pth'
        torch.save(source.state_dict(), path)
        return str(path)
    folder = tmp_path / 'source'
    save_for_hf(source, folder, safe_serialization=True)
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'] = {'num_classes': 10}
    (folder / 'config.json').write_text(json.dumps(config))
    return str(folder)


def _load(how: str, path: str, **kwargs):
    if how == 'file':
        overlay = dict(file=path, num_classes=10)  # the checkpoint's class count, as train.py --pretrained-path sets
        return timm.create_model('tm_resnet18_small', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return timm.create_model(f'local-dir:{path}', pretrained=True, **kwargs)


@pytest.mark.parametrize('how', ['file', 'local-dir'])
@pytest.mark.parametrize('num_classes', [10, 7])  # 7: timm loads non-strict (its head dropped): nothing may slip
@pytest.mark.parametrize(
    'source_kwargs, model_kwargs, needle',
    [
        (dict(tm_stages=(4,)), dict(), 'tm_stages=(4,)'),  # blocks the checkpoint lacks: no fresh ones filled in
        (dict(), dict(tm_stages=(4,)), 'tm_stages=(3, 4)'),  # blocks the model lacks: not dropped
        (dict(templates_per_class=2), dict(), 'templates_per_class=2'),
        (dict(), dict(templates_per_class=3), 'templates_per_class=1'),
    ],
)
def test_pretrained_tm_checkpoint_of_other_tm_config_is_refused(
    hf_cache, tmp_path, how, num_classes, source_kwargs, model_kwargs, needle
):
    path = _tm_checkpoint(tmp_path, how, **source_kwargs)
    with pytest.raises(RuntimeError) as e:
        _load(how, path, num_classes=num_classes, **model_kwargs)
    message = str(e.value)
    assert needle in message and path in message and 'nothing was loaded' in message, message
    assert '\n' not in message  # one line


def test_pretrained_tm_checkpoint_lacking_tm_entries_is_refused(hf_cache, tmp_path):
    """A TM block whose entries differ from the model's (another TM option): refused, the entries named."""
    source = timm.create_model('tm_resnet18_small', num_classes=10).state_dict()
    del source['layer4.2.log_temperature']
    source['layer4.2.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'source.pth'
    torch.save(source, path)
    with pytest.raises(RuntimeError, match=r'layer4\.2\.extra\.weight.*lacks.*layer4\.2\.log_temperature'):
        _load('file', str(path), num_classes=7)  # non-strict in timm: the missing entry would stay at its init


@pytest.mark.parametrize('overlay_classes', [-1, None])  # train.py --pretrained-path; the cfg's 1000
def test_pretrained_tm_checkpoint_for_other_classes_reinitializes_class_parts_and_says_so(
    hf_cache, tmp_path, caplog, overlay_classes
):
    source = timm.create_model('tm_resnet18_small', num_classes=10, templates_per_class=2)
    with torch.no_grad():  # away from the init, so that a skipped load would show
        source.layer4[1].conv2.weight.mul_(2)
    path = tmp_path / 'source.pth'
    torch.save(source.state_dict(), path)
    overlay = dict(file=str(path)) if overlay_classes is None else dict(file=str(path), num_classes=overlay_classes)
    num_classes = 1000 if overlay_classes is None else 7  # None: the cfg's class count, so timm keeps the head
    with caplog.at_level(logging.WARNING, logger='timm_tm.models._loading'):
        model = timm.create_model(
            'tm_resnet18_small',
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            templates_per_class=2,
        )
    assert model.fc.weight.shape[0] == num_classes
    assert all(b.templates.weight.shape[0] == 2 * num_classes for b in model.tm_blocks().values())
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    (record,) = [r for r in caplog.records if r.name == 'timm_tm.models._loading']
    message = record.getMessage()
    assert str(path) in message and f'is for 10 classes, this model for {num_classes}' in message
    assert 're-initialized' in message and 'fc.weight' in message and 'layer4.2.templates.weight' in message


def test_pretrained_tm_checkpoint_for_the_same_config_loads_without_a_warning(hf_cache, tmp_path, caplog):
    """The refusals above are specific: the checkpoint's own configuration loads as saved, silently."""
    path = _tm_checkpoint(tmp_path, 'file', tm_stages=(4,), templates_per_class=2)
    source = torch.load(path)
    with caplog.at_level(logging.WARNING, logger='timm_tm.models._loading'):
        model = _load('file', path, num_classes=10, tm_stages=(4,), templates_per_class=2)
    assert not [r for r in caplog.records if r.name == 'timm_tm.models._loading']
    loaded = model.state_dict()
    assert loaded.keys() == source.keys() and all(torch.equal(loaded[k], v) for k, v in source.items())


def test_pretrained_headless_tm_checkpoint_must_match_the_template_count(hf_cache, tmp_path):
    """An embedding checkpoint (num_classes=0: no fc.weight) keeps its templates: their count must be the model's."""
    source = timm.create_model('tm_resnet18_small', num_classes=0, template_classes=10, templates_per_class=2)
    assert 'fc.weight' not in source.state_dict()
    path = tmp_path / 'embedding.pth'
    torch.save(source.state_dict(), path)
    overlay = dict(file=str(path), num_classes=10)
    with pytest.raises(RuntimeError, match='no head.*20 templates.*templates_per_class'):
        timm.create_model('tm_resnet18_small', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0)
    model = timm.create_model(
        'tm_resnet18_small', pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, templates_per_class=2
    )
    for name, block in model.tm_blocks().items():
        assert torch.equal(block.templates.weight, source.tm_blocks()[name].templates.weight)

"""Pretrained tags for TM-trained weights, and the checks that run before any tm_* weights are loaded.

Two kinds of pretrained tags exist for ``tm_resnetX``:

* ``tm_resnetX.<resnet tag>`` (e.g. ``tm_resnet50.a1_in1k``): timm's own ResNet weights from ``timm/resnetX.<tag>``,
  converted on load with the TM blocks at identity (``timm_tm.models.tm_resnet``).
* ``tm_resnetX.<tm tag>`` (``TM_WEIGHTS`` below): weights trained with the TM blocks, hosted under
  ``HUB_NAMESPACE/<model>.<tag>``. Until a tag is listed in ``PUBLISHED_TAGS`` its cfg carries no ``hf_hub_id``
  (so ``timm.list_pretrained()`` does not offer it); asking for it with ``pretrained=True`` loads it from the local
  Hugging Face cache when it is there, and otherwise fails with the commands that publish it.

Before timm's loader reads a local weights file (``local-dir:``, the Hugging Face cache, ``pretrained_cfg_overlay=
dict(file=...)``), :func:`verify_weights_file` checks it: a safetensors header that covers the whole file, and its
SHA-256 against what the Hub (the cache's blob name) or the export (``config.json``'s ``weights_sha256``) recorded.
A truncated or altered file is then refused with its path, before any tensor reaches the model.
"""

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional

__all__ = [
    'HUB_NAMESPACE',
    'TM_WEIGHTS',
    'PUBLISHED_TAGS',
    'WeightsFileError',
    'tm_hub_id',
    'tm_weight_cfgs',
    'not_published_message',
    'verify_weights_file',
    'sha256_file',
    'prepare_pretrained',
]

# The Hub namespace (user or organization) of the project's TM-trained weights; forks publishing their own set
# point it elsewhere with TIMM_TM_HUB_NAMESPACE (read once, at import).
HUB_NAMESPACE: str = os.environ.get('TIMM_TM_HUB_NAMESPACE', 'timm-tm')

# One entry per model the project would publish. Fields are pretrained_cfg fields (plus 'dataset' and 'recipe',
# which the model card uses). The weights must load into the architecture's default kwargs (tm_stages,
# templates_per_class, ...), since a registry tag cannot carry model args: `timm-tm export --name` checks it.
_IMAGENET_1K = dict(
    num_classes=1000,
    input_size=(3, 224, 224),
    pool_size=(7, 7),
    crop_pct=0.95,
    interpolation='bicubic',
    dataset='imagenet-1k',
)
TM_WEIGHTS: Dict[str, Dict[str, Any]] = {
    'tm_resnet18_small.mnist': dict(
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(4, 4),
        crop_pct=1.0,
        interpolation='bilinear',
        mean=(0.1307,) * 3,
        std=(0.3081,) * 3,
        dataset='mnist',
        recipe='MNIST digits (60k train, 10k test) upsampled to 32 x 32 px, trained from scratch',
    ),
    'tm_resnet18.tm_in1k': dict(
        **_IMAGENET_1K,
        recipe='ImageNet-1k, fine-tuned from timm resnet18.a1_in1k with the TM blocks starting at identity',
    ),
    'tm_resnet50.tm_in1k': dict(
        **_IMAGENET_1K,
        recipe='ImageNet-1k, fine-tuned from timm resnet50.a1_in1k with the TM blocks starting at identity',
    ),
}

# Tags of TM_WEIGHTS whose weights are on the Hub under HUB_NAMESPACE. None yet: add a tag here once
# `timm-tm push` has uploaded it.
PUBLISHED_TAGS: FrozenSet[str] = frozenset()

WEIGHTS_NAME = 'model.safetensors'
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')


class WeightsFileError(RuntimeError):
    """A weights file that is truncated, altered or not safetensors; the message names the file."""


def tm_hub_id(name: str) -> str:
    """Hub repo of a TM tag, e.g. ``'tm_resnet50.tm_in1k'`` -> ``'timm-tm/tm_resnet50.tm_in1k'``."""
    return f'{HUB_NAMESPACE}/{name}'


def tm_weight_cfgs() -> Dict[str, Dict[str, Any]]:
    """pretrained_cfg fields per TM tag, for ``generate_default_cfgs``; ``hf_hub_id`` only once published."""
    out = {}
    for name, fields in TM_WEIGHTS.items():
        cfg = {k: v for k, v in fields.items() if k not in ('dataset', 'recipe')}
        published = name in PUBLISHED_TAGS
        cfg['hf_hub_id'] = tm_hub_id(name) if published else None
        note = f'TM-trained: {fields["recipe"]}.'
        if not published:
            note += f' Not published yet (would be hf-hub:{tm_hub_id(name)}).'
        cfg['notes'] = (note,)
        out[name] = cfg
    return out


def not_published_message(name: str, cache_dir: Optional[str] = None) -> str:
    """The error for a TM tag whose weights are neither published nor in the local cache."""
    from huggingface_hub import constants

    model, tag = name.split('.', 1)
    repo = tm_hub_id(name)
    return (
        f'No pretrained weights for {name}: they are not published on the Hugging Face Hub yet (they would be '
        f'hf-hub:{repo}) and are not in the local Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}). '
        f'To publish them from a timm train.py run of {model}: '
        f'`timm-tm export OUTPUT_DIR/model_best.pth.tar --model {model} --name {name} --summary OUTPUT_DIR/summary.csv '
        f'--out {name}` then `timm-tm push {name} --repo {repo}`, and add {name!r} to PUBLISHED_TAGS in '
        'timm_tm/pretrained.py. Use pretrained=False (or another tag) meanwhile.'
    )


def sha256_file(path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _recorded_sha256(folder: Path, filename: str) -> Optional[str]:
    """The SHA-256 that ``timm-tm export`` recorded for ``filename`` in ``folder/config.json``, if any.

    A ``weights_sha256`` entry that is not a ``{file: sha256}`` mapping, or that does not list ``filename``, is
    refused rather than read as "nothing recorded": that would switch the integrity check off.
    """
    config = folder / 'config.json'
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise WeightsFileError(f'{config}: not readable JSON ({e}); the weights beside it cannot be checked') from e
    if not isinstance(data, dict) or data.get('weights_sha256') is None:
        return None
    recorded = data['weights_sha256']
    if not isinstance(recorded, dict):
        raise WeightsFileError(
            f'{config}: weights_sha256 has type {type(recorded).__name__}, expected {{"{filename}": "<sha256>"}}: the '
            'folder was altered; export it again'
        )
    sha = recorded.get(filename)
    if not isinstance(sha, str) or not _SHA256_RE.match(sha.lower()):
        raise WeightsFileError(
            f'{config}: weights_sha256 gives no SHA-256 for {filename} (it has {sha!r}): the folder was altered; '
            'export it again'
        )
    return sha


def verify_weights_file(path, expected_sha256: Optional[str] = None) -> None:
    """Refuse a weights file that is not intact: a ``WeightsFileError`` naming ``path``.

    Checks the SHA-256 against ``expected_sha256`` (else against the Hub blob name, when ``path`` is a link into
    a Hugging Face cache, and against ``weights_sha256`` in a ``config.json`` beside it), and for ``.safetensors``
    that the header parses and its tensors cover the file exactly (a truncated download fails here).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f'{path}: weights file not found')
    expected = {}
    if expected_sha256:
        expected['expected'] = expected_sha256
    blob_name = Path(os.path.realpath(path)).name
    if path.is_symlink() and _SHA256_RE.match(blob_name) and Path(os.path.realpath(path)).parent.name == 'blobs':
        expected['the Hub (cache blob name)'] = blob_name
    recorded = _recorded_sha256(path.parent, path.name)
    if recorded:
        expected['config.json weights_sha256'] = recorded
    if expected:
        actual = sha256_file(path)
        for source, sha in expected.items():
            if actual != sha.lower():
                raise WeightsFileError(
                    f'{path}: the file was altered or truncated: its SHA-256 is {actual}, {source} says {sha}. '
                    'Delete it and download / export it again.'
                )
    if path.suffix == '.safetensors':
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework='pt') as f:
                f.keys()
        except Exception as e:  # safetensors raises its own SafetensorError (not exported under one name)
            raise WeightsFileError(
                f'{path}: not a valid safetensors file ({e}); it is truncated or altered: delete it and download / '
                'export it again.'
            ) from e


def _cached_hub_file(hf_hub_id: str, filename: str, cache_dir: Optional[str]) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import hf_split

    repo_id, revision = hf_split(hf_hub_id)
    found = try_to_load_from_cache(repo_id, filename, revision=revision, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def _local_weights_file(cfg) -> Optional[Path]:
    """The local file timm's loader is about to read for ``cfg`` (a PretrainedCfg), when it is already on disk."""
    if cfg.state_dict is not None:
        return None
    if cfg.source == 'local-dir' and cfg.file:
        from timm.models._hub import _PREFERRED_FILES

        for name in _PREFERRED_FILES:
            if (Path(cfg.file) / name).is_file():
                return Path(cfg.file) / name
        return None
    if cfg.source != 'hf-hub' and cfg.file:
        return Path(cfg.file)
    return None


def prepare_pretrained(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Run by the tm_* entrypoints when ``pretrained=True``, before timm loads anything; returns the kwargs.

    * A TM tag that is not published: point it at its Hub repo when the local cache holds the weights, else raise
      a ``RuntimeError`` that says so and shows the publishing commands.
    * The local weights file about to be read is verified (:func:`verify_weights_file`).
    """
    from timm.models._builder import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    cache_dir = kwargs.get('cache_dir')
    hf_hub_id = cfg.hf_hub_id
    has_other_source = cfg.file or cfg.url or cfg.state_dict is not None or cfg.source
    if name in TM_WEIGHTS and not hf_hub_id and not has_other_source:
        hf_hub_id = tm_hub_id(name)
        if _cached_hub_file(hf_hub_id, WEIGHTS_NAME, cache_dir) is None:
            raise RuntimeError(not_published_message(name, cache_dir))
        kwargs = dict(
            kwargs, pretrained_cfg_overlay=dict(kwargs.get('pretrained_cfg_overlay') or {}, hf_hub_id=hf_hub_id)
        )

    local = _local_weights_file(cfg)
    if local is None and hf_hub_id and (cfg.source == 'hf-hub' or not has_other_source):
        cached = _cached_hub_file(hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME, cache_dir)
        local = Path(cached) if cached else None
    if local is not None:
        verify_weights_file(local)
    return kwargs

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

The Hub's naming rules (:func:`hub_name_problem`, :func:`repo_id_problem`) live here too: ``timm-tm export`` and
``timm-tm push`` both check the names they write or upload under.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, FrozenSet, Optional, Tuple

from timm.models import resolve_pretrained_cfg

__all__ = [
    'HUB_NAMESPACE',
    'TMWeights',
    'TM_WEIGHTS',
    'PUBLISHED_TAGS',
    'WEIGHTS_NAME',
    'PREFERRED_WEIGHTS_FILES',
    'WeightsFileError',
    'tm_hub_id',
    'hub_name_problem',
    'repo_id_problem',
    'split_hub_revision',
    'tm_weight_cfgs',
    'not_published_message',
    'verify_weights_file',
    'sha256_file',
    'weights_source',
    'prepare_pretrained',
]

# The Hub namespace (user or organization) of the project's TM-trained weights; forks publishing their own set
# point it elsewhere with TIMM_TM_HUB_NAMESPACE (read once, at import).
HUB_NAMESPACE: str = os.environ.get('TIMM_TM_HUB_NAMESPACE', 'timm-tm')


@dataclass(frozen=True)
class TMWeights:
    """One tag of TM-trained weights: the pretrained_cfg fields timm loads it with, and what its model card says.

    The weights must load into the architecture's default kwargs (tm_stages, templates_per_class, ...), since a
    registry tag cannot carry model args: ``timm-tm export --name`` checks it.
    """

    dataset: str  # card only: what the weights were trained on
    recipe: str  # card only: one sentence on how
    num_classes: int
    input_size: Tuple[int, int, int]
    pool_size: Tuple[int, int]
    crop_pct: float
    interpolation: str
    mean: Optional[Tuple[float, ...]] = None  # None: the architecture's default (ImageNet's)
    std: Optional[Tuple[float, ...]] = None

    def pretrained_cfg(self) -> Dict[str, Any]:
        """The pretrained_cfg fields of the tag (the card-only ones and an unset mean / std left out)."""
        cfg = dict(
            num_classes=self.num_classes,
            input_size=self.input_size,
            pool_size=self.pool_size,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
        )
        if self.mean is not None:
            cfg['mean'] = self.mean
        if self.std is not None:
            cfg['std'] = self.std
        return cfg


def _imagenet_1k(recipe: str) -> TMWeights:
    return TMWeights(
        dataset='imagenet-1k',
        recipe=recipe,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.95,
        interpolation='bicubic',
    )


# One entry per model the project would publish, by tag name.
TM_WEIGHTS: Dict[str, TMWeights] = {
    'tm_resnet18_small.mnist': TMWeights(
        dataset='mnist',
        recipe='MNIST digits (60k train, 10k test) upsampled to 32 x 32 px, trained from scratch',
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(4, 4),
        crop_pct=1.0,
        interpolation='bilinear',
        mean=(0.1307,) * 3,
        std=(0.3081,) * 3,
    ),
    'tm_resnet18.tm_in1k': _imagenet_1k(
        'ImageNet-1k, fine-tuned from timm resnet18.a1_in1k with the TM blocks starting at identity'
    ),
    'tm_resnet50.tm_in1k': _imagenet_1k(
        'ImageNet-1k, fine-tuned from timm resnet50.a1_in1k with the TM blocks starting at identity'
    ),
}

# Tags of TM_WEIGHTS whose weights are on the Hub under HUB_NAMESPACE. None yet: add a tag here once
# `timm-tm push` has uploaded it.
PUBLISHED_TAGS: FrozenSet[str] = frozenset()

WEIGHTS_NAME = 'model.safetensors'
# the files timm's local-dir: / hf-hub: loaders look for in a folder, first found first (timm's _PREFERRED_FILES,
# which is private: tests/test_pretrained.py pins this copy to it)
PREFERRED_WEIGHTS_FILES: Tuple[str, ...] = (
    WEIGHTS_NAME,
    'pytorch_model.bin',
    'pytorch_model.pth',
    'model.pth',
    'open_clip_model.safetensors',
    'open_clip_pytorch_model.safetensors',
    'open_clip_pytorch_model.bin',
    'open_clip_pytorch_model.pth',
)
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
# a Hub repo / user / org name: ASCII letters, digits, '_', '-', '.', not starting or ending with '-' or '.'
_HUB_NAME_RE = re.compile(r'[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?')


class WeightsFileError(RuntimeError):
    """A weights file that is truncated, altered or not safetensors; the message names the file."""


def tm_hub_id(name: str) -> str:
    """Hub repo of a TM tag, e.g. ``'tm_resnet50.tm_in1k'`` -> ``'timm-tm/tm_resnet50.tm_in1k'``."""
    return f'{HUB_NAMESPACE}/{name}'


def hub_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` is not a valid Hub repo (or user / org) name, as the Hub's rules go; None when it is."""
    if not isinstance(name, str) or not name:
        return 'empty'
    if not _HUB_NAME_RE.fullmatch(name):
        return (
            "use only ASCII letters, digits, '_', '-' and '.', not starting or ending with '-' or '.', at most 96 "
            'characters'
        )
    if '--' in name or '..' in name:
        return "'--' and '..' are not allowed"
    if name.endswith('.git'):
        return "it may not end with '.git'"
    return None


def repo_id_problem(repo_id: Any) -> Optional[str]:
    """Why ``repo_id`` is not a valid Hub repo id (``ORG/NAME``); None when it is."""
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        return 'expected ORG/NAME'
    for part in repo_id.split('/'):
        problem = hub_name_problem(part)
        if problem:
            return f'{part!r}: {problem}'
    return None


def split_hub_revision(hub_id: str) -> Tuple[str, Optional[str]]:
    """``'ORG/NAME@REVISION'`` -> ``('ORG/NAME', 'REVISION')``; without ``@`` the revision is None.

    The split timm's hf-hub loader makes (its ``hf_split``, private: tests/test_pretrained.py pins this to it).
    """
    repo_id, at, revision = hub_id.partition('@')
    if '@' in revision:
        raise ValueError(f'{hub_id!r}: a Hub id holds at most one @ (before the revision)')
    return repo_id, revision if at else None


def tm_weight_cfgs() -> Dict[str, Dict[str, Any]]:
    """pretrained_cfg fields per TM tag, for ``generate_default_cfgs``; ``hf_hub_id`` only once published."""
    out = {}
    for name, weights in TM_WEIGHTS.items():
        cfg = weights.pretrained_cfg()
        published = name in PUBLISHED_TAGS
        cfg['hf_hub_id'] = tm_hub_id(name) if published else None
        note = f'TM-trained: {weights.recipe}.'
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

    repo_id, revision = split_hub_revision(hf_hub_id)
    found = try_to_load_from_cache(repo_id, filename, revision=revision, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def weights_source(cfg) -> Tuple[str, Any]:
    """Where timm's loader takes the weights of ``cfg`` (a PretrainedCfg) from: ``(kind, location)``.

    ``kind`` is ``'hf-hub'``, ``'local-dir'``, ``'state_dict'``, ``'file'``, ``'url'`` or ``''`` (none), picked in
    timm's order: the ``source`` the name gave (``hf-hub:`` / ``local-dir:``), else a state_dict, a file, a Hub id,
    a URL. timm's ``_resolve_pretrained_source`` is private: tests/test_pretrained.py pins this to it.
    """
    if cfg.source == 'hf-hub':
        return 'hf-hub', cfg.hf_hub_id
    if cfg.source == 'local-dir':
        return 'local-dir', cfg.file
    if cfg.state_dict:
        return 'state_dict', cfg.state_dict
    if cfg.file:
        return 'file', cfg.file
    if cfg.hf_hub_id:
        return 'hf-hub', cfg.hf_hub_id
    if cfg.url:
        return 'url', cfg.url
    return '', None


def _local_weights_file(cfg, cache_dir: Optional[str]) -> Optional[Path]:
    """The local file timm's loader is about to read for ``cfg``, when it is on disk already (a Hub file not yet in
    the cache is checked by huggingface_hub as it downloads; a URL by torch.hub)."""
    kind, where = weights_source(cfg)
    if kind == 'local-dir' and where:
        return next((Path(where, n) for n in PREFERRED_WEIGHTS_FILES if Path(where, n).is_file()), None)
    if kind == 'file':
        return Path(where)
    if kind == 'hf-hub' and where:
        cached = _cached_hub_file(where, cfg.hf_hub_filename or WEIGHTS_NAME, cache_dir)
        return Path(cached) if cached else None
    return None


def prepare_pretrained(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Run by the tm_* entrypoints when ``pretrained=True``, before timm loads anything; returns the kwargs.

    * A TM tag that is not published (and given no other source): point it at its Hub repo when the local cache
      holds the weights, else raise a ``RuntimeError`` that says so and shows the publishing commands.
    * The local weights file about to be read is verified (:func:`verify_weights_file`).
    """
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    cache_dir = kwargs.get('cache_dir')
    if name in TM_WEIGHTS and not weights_source(cfg)[0]:
        hf_hub_id = tm_hub_id(name)
        if _cached_hub_file(hf_hub_id, WEIGHTS_NAME, cache_dir) is None:
            raise RuntimeError(not_published_message(name, cache_dir))
        overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, hf_hub_id=hf_hub_id)
        kwargs = dict(kwargs, pretrained_cfg_overlay=overlay)
        cfg = replace(cfg, hf_hub_id=hf_hub_id)
    local = _local_weights_file(cfg, cache_dir)
    if local is not None:
        verify_weights_file(local)
    return kwargs

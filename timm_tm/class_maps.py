"""Per-region class maps of the TemplateMatching blocks in a model: what each region of an image matches.

``compute_class_maps(model, images)`` runs the model once and returns, for every
:class:`~timm_tm.layers.TemplateMatching` block (keyed by module name, e.g. ``'layer4.2'``):

* ``class_map``: B x N x H x W, ``block.pool_classes(block.match(x))``: how well each region matches each class;
* ``best_class``: B x H x W, the best-matching class of each region (argmax over N);
* ``class_evidence``: B x N, the class map averaged over regions (unweighted; the model adds
  ``evidence_weight * class_evidence`` to its logits with ``evidence_mode='logits'``, and only its gradient with the
  default ``'gradient'``).

It works for any model with TM blocks (the ``tm_*`` family, or any timm model a block was added to) and leaves
the model's outputs unchanged: each block's ``match`` is wrapped for the duration of one forward pass, so the
scores the model computes anyway are recorded whichever of ``forward`` / ``forward_with_evidence`` /
``forward_class_map`` the model calls.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Tuple

import torch
import torch.nn as nn

from timm_tm.layers import TemplateMatching

__all__ = ['BlockClassMap', 'compute_class_maps', 'compute_class_maps_and_output', 'find_tm_blocks']


@dataclass
class BlockClassMap:
    """The class maps of one TM block for a batch (B images, N classes, H x W regions)."""

    class_map: torch.Tensor  # B x N x H x W matching score of each region with each class
    best_class: torch.Tensor  # B x H x W (int64) best-matching class of each region
    class_evidence: torch.Tensor  # B x N class map averaged over regions, before the evidence weight
    evidence_weight: float  # the block's weight of class_evidence in the logits
    evidence_mode: str = 'logits'  # 'gradient': the logits receive only the evidence's gradient

    @property
    def weighted_evidence(self) -> torch.Tensor:
        """B x N: what the block adds to the logits' values (``evidence_weight * class_evidence``; zero in
        ``'gradient'`` mode)."""
        if self.evidence_mode == 'gradient':
            return torch.zeros_like(self.class_evidence)
        return self.class_evidence * self.evidence_weight

    def __getitem__(self, index: Any) -> 'BlockClassMap':
        """The class maps of some images of the batch, e.g. ``maps[0:1]``."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return BlockClassMap(
            self.class_map[index], self.best_class[index], self.class_evidence[index], self.evidence_weight,
            self.evidence_mode,
        )  # fmt: skip


def find_tm_blocks(model: nn.Module) -> Dict[str, TemplateMatching]:
    """The TemplateMatching blocks of ``model`` by module name; a clear ValueError when there are none."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, TemplateMatching)}
    if not blocks:
        name = getattr(model, 'default_cfg', {}).get('architecture') or type(model).__name__
        raise ValueError(f'model {name!r} has no TemplateMatching blocks: class maps need a tm_* model')
    return blocks


@contextmanager
def _record_scores(blocks: Dict[str, TemplateMatching]) -> Iterator[Dict[str, torch.Tensor]]:
    """Within the context, each block's ``match`` also stores its B x K x H x W scores under the block's name."""
    recorded: Dict[str, torch.Tensor] = {}

    def wrap(name: str, block: TemplateMatching):
        match = type(block).match.__get__(block)

        def recording_match(x: torch.Tensor) -> torch.Tensor:
            scores = match(x)
            recorded[name] = scores  # a block called more than once per forward keeps its last call
            return scores

        return recording_match

    try:
        for name, block in blocks.items():
            # an instance attribute shadows the method; deleting it restores the class's method
            object.__setattr__(block, 'match', wrap(name, block))
        yield recorded
    finally:
        for block in blocks.values():
            block.__dict__.pop('match', None)


def compute_class_maps_and_output(
    model: nn.Module,
    images: torch.Tensor,
    no_grad: bool = True,
    train: bool = False,
) -> Tuple[Any, Dict[str, BlockClassMap]]:
    """Run ``model(images)`` once; returns (the model's output, unchanged, and ``{block name: BlockClassMap}``).

    Args:
        model: Any module containing TemplateMatching blocks.
        images: B x C x H x W, preprocessed as the model expects.
        no_grad: Run without autograd (the default); with False, the maps keep their graph (e.g. for an auxiliary
            per-region loss).
        train: Run in training mode; by default the model runs in eval mode (BN running statistics). Every
            module's own training flag is restored afterwards.
    """
    blocks = find_tm_blocks(model)
    modes = {m: m.training for m in model.modules()}
    model.train(train)
    try:
        with torch.set_grad_enabled(not no_grad and torch.is_grad_enabled()), _record_scores(blocks) as scores:
            output = model(images)
    finally:
        for m, mode in modes.items():
            m.training = mode

    maps = {}
    for name, block in blocks.items():
        if name not in scores:
            raise RuntimeError(f'TemplateMatching block {name!r} was not run by the forward pass of the model')
        with torch.set_grad_enabled(not no_grad and torch.is_grad_enabled()):
            class_map = block.pool_classes(scores[name])
            evidence = class_map.mean(dim=(2, 3))
        maps[name] = BlockClassMap(
            class_map=class_map,
            best_class=class_map.argmax(dim=1),
            class_evidence=evidence,
            evidence_weight=float(block.evidence_weight.detach()),
            evidence_mode=block.evidence_mode,
        )
    return output, maps


def compute_class_maps(
    model: nn.Module,
    images: torch.Tensor,
    no_grad: bool = True,
    train: bool = False,
) -> Dict[str, BlockClassMap]:
    """``{block name: BlockClassMap}`` for ``images`` (B x C x H x W); see :func:`compute_class_maps_and_output`."""
    return compute_class_maps_and_output(model, images, no_grad=no_grad, train=train)[1]

"""Timing: one model's inference or training step (:class:`Runner`), and the two models of a pair in alternation.

Each round times every model for the same number of steps; the order flips every round (A B, B A, A B, ...) so
that a slow drift of the machine hits both models alike, and a burst shows up as one outlying round.
"""

import math
import statistics
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['MODES', 'Runner', 'create_model', 'summarize', 'time_alternating', 'ratio_block']

# inference: model(x) in eval mode under torch.no_grad; train: zero_grad, forward, cross-entropy, backward, SGD step
MODES = ('infer', 'train')


def create_model(
    name: str, num_classes: int, kwargs: Dict[str, Any], device: torch.device, channels_last: bool
) -> nn.Module:
    """``timm.create_model`` on ``device`` (importing timm_tm, the parent of this package, registered the tm_*)."""
    model = timm.create_model(name, num_classes=num_classes, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs no wait)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Runner:
    """One model, its batch (B x 3 x H x W, fixed random) and its optimizer: ``prepare(mode)``, then ``step()``."""

    def __init__(self, model: nn.Module, cfg: Dict[str, Any], device: torch.device, compile_model: bool):
        self.model = model
        self.device = device
        generator = torch.Generator().manual_seed(0)
        size = (cfg['batch_size'], 3, cfg['img_size'], cfg['img_size'])
        self.x = torch.randn(size, generator=generator).to(device)
        if cfg['channels_last']:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        num_classes = max(1, cfg['num_classes'])
        self.target = torch.randint(0, num_classes, (cfg['batch_size'],), generator=generator).to(device)
        # the config holds the dtype's name ('bfloat16'; JSON has no dtypes), autocast wants the dtype
        amp_dtype = getattr(torch, cfg['amp_dtype']) if cfg['amp_dtype'] else None
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        # a small learning rate keeps the weights (and so the arithmetic) in range over the timed steps
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        self.forward = torch.compile(model) if compile_model else model
        self.mode = 'infer'

    def prepare(self, mode: str) -> None:
        """Switch to ``mode`` ('infer' or 'train'): the model's eval / train state follows."""
        self.mode = mode
        self.model.train(mode == 'train')

    def step(self) -> None:
        """One inference (no gradients) or one training step on the batch."""
        if self.mode == 'infer':
            with torch.no_grad(), self.autocast():
                self.forward(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.x).float(), self.target)
        loss.backward()
        self.optimizer.step()

    def timed(self, iters: int) -> float:
        """Seconds for ``iters`` steps (device synchronized before and after)."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            self.step()
        sync(self.device)
        return time.perf_counter() - start


def summarize(values: Sequence[float]) -> Dict[str, Any]:
    """Median, min, max and the values themselves (one per round)."""
    values = list(values)
    return {
        'median': statistics.median(values),
        'min': min(values),
        'max': max(values),
        'per_round': values,
    }


def time_alternating(
    runners: Dict[str, Runner],
    mode: str,
    batch_size: int,
    rounds: int,
    warmup: int,
    min_seconds: float,
) -> Dict[str, Any]:
    """Images/s per round of each runner (A B, B A, A B, ...), every runner the same steps per round.

    The steps per round are enough for the slowest warm-up step to last ``min_seconds``.
    """
    names = list(runners)
    slowest = 0.0
    for name in names:
        runner = runners[name]
        runner.prepare(mode)
        for _ in range(max(1, warmup)):
            slowest = max(slowest, runner.timed(1))
    iters = max(1, math.ceil(min_seconds / max(slowest, 1e-9)))
    ips: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runner = runners[name]
            runner.prepare(mode)
            ips[name].append(iters * batch_size / runner.timed(iters))
    return {'iters_per_round': iters, 'images_per_s': {name: summarize(v) for name, v in ips.items()}}


def ratio_block(timing: Dict[str, Any], tm: str, base: str) -> Dict[str, Any]:
    """``timing`` plus the ratio of the medians (``tm`` / ``base``) and the spread of the per-round ratios."""
    per_model = timing['images_per_s']
    round_ratios = [a / b for a, b in zip(per_model[tm]['per_round'], per_model[base]['per_round'])]
    return {
        **timing,
        'ratio': per_model[tm]['median'] / per_model[base]['median'],
        'round_ratios': summarize(round_ratios),
    }

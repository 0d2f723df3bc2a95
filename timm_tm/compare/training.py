"""One run of a comparison: a variant trained for one seed under the shared recipe, and its record.

Every run of a seed starts from the same backbone and head weights (``build_model`` seeds before the TM blocks are
built) and draws the same batches and the same Mixup / augmentation stream, so per-seed differences are paired.
"""

import argparse
import math
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, TextIO, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .data import Data, load_data, seed_everything
from .variants import Variant

__all__ = ['model_kwargs', 'build_model', 'check_model', 'evaluate', 'train_one', 'log_to']

Log = Callable[[str], None]


class _Optimization(NamedTuple):
    """What updates the weights: timm's optimizer, its per-update schedule, the loss and Mixup / CutMix (or None)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: nn.Module
    mixup: Optional[Mixup]


def model_kwargs(variant: Variant, args: argparse.Namespace, num_classes: int, in_chans: int) -> Dict[str, Any]:
    """The ``timm.create_model`` keyword arguments of ``variant`` under the recipe ``args``."""
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans)
    if args.channels:
        kwargs['channels'] = tuple(args.channels)
        kwargs['stem_width'] = args.channels[0]
    if args.layers:
        kwargs['layers'] = tuple(args.layers)
    kwargs.update(variant.model_kwargs)
    return kwargs


def build_model(variant: Variant, args: argparse.Namespace, num_classes: int, in_chans: int, seed: int) -> nn.Module:
    """The variant's model; for one seed every variant's backbone and head start from the same weights."""
    kwargs = model_kwargs(variant, args, num_classes, in_chans)
    seed_everything(seed)
    model = timm.create_model(args.model, **kwargs)
    if variant.freeze_evidence_weight:
        for tm in model.tm_blocks().values():
            tm.evidence_weight.requires_grad_(False)
    return model


def check_model(variant: Variant, args: argparse.Namespace, num_classes: int, in_chans: int) -> None:
    """Build ``variant``'s model on the meta device (no memory, no random draw) and pass it a batch of two
    ``--img-size`` images: a keyword the model refuses (``tm-t100``) or an input it cannot take raises here."""
    with torch.device('meta'):
        model = timm.create_model(args.model, **model_kwargs(variant, args, num_classes, in_chans))
        model(torch.empty(2, in_chans, args.img_size, args.img_size))


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A B x C x H x W batch on ``device``, in the channels-last memory format when asked (as train.py's flag)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, device: torch.device, amp: bool, channels_last: bool = False) -> float:
    """Top-1 (%) on the val split."""
    model.eval()
    correct = total = 0
    for x, y in data.val_batches():
        x, y = to_device(x, device, channels_last), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        correct += (logits.argmax(dim=1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / max(total, 1)


def _optimization(model: nn.Module, args: argparse.Namespace, epochs: int, data: Data) -> _Optimization:
    """The recipe's optimizer, schedule (stepped per update), loss and Mixup for ``model`` trained ``epochs``."""
    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum
    )
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=epochs, warmup_epochs=args.warmup_epochs, min_lr=args.min_lr,
        step_on_epochs=False, updates_per_epoch=data.batches_per_epoch,
    )  # fmt: skip
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
            num_classes=data.num_classes,
        )  # fmt: skip
        criterion: nn.Module = SoftTargetCrossEntropy()  # Mixup's targets are smoothed soft labels
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    return _Optimization(optimizer, scheduler, criterion, mixup)


def _train_epoch(
    model: nn.Module,
    data: Data,
    epoch: int,
    opt: _Optimization,
    args: argparse.Namespace,
    device: torch.device,
    num_updates: int,
    run_name: str,
) -> Tuple[float, int]:
    """One epoch of updates; returns (mean train loss, updates so far). A non-finite loss raises
    FloatingPointError."""
    model.train()
    loss_sum, n = 0.0, 0
    for x, y in data.train_batches(epoch):
        x, y = to_device(x, device, args.channels_last), y.to(device, non_blocking=True)
        if opt.mixup is not None:
            x, y = opt.mixup(x, y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = opt.criterion(model(x), y)
        loss_value = loss.item()  # one device sync per step
        if not math.isfinite(loss_value):
            raise FloatingPointError(f'{run_name}: loss is {loss_value} at epoch {epoch}')
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        num_updates += 1
        opt.scheduler.step_update(num_updates=num_updates)
        loss_sum, n = loss_sum + loss_value, n + 1
    opt.scheduler.step(epoch + 1)
    return loss_sum / max(n, 1), num_updates


def train_one(variant: Variant, seed: int, args: argparse.Namespace, device: torch.device, log: Log) -> Dict[str, Any]:
    """Train one (variant, seed) under the shared recipe; returns its record (top-1, curves, time, ...)."""
    t0 = time.time()
    epochs = variant.epochs or args.epochs
    data = load_data(args, seed, device)
    model = build_model(variant, args, data.num_classes, data.in_chans, seed).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimization(model, args, epochs, data)
    # the same RNG stream for every variant from here on (mixup draws from numpy / torch)
    seed_everything(seed + 1)
    curve: List[Optional[float]] = []
    losses: List[float] = []
    num_updates = 0
    run_name = f'{variant.name} seed {seed}'
    for epoch in range(epochs):
        te = time.time()
        loss, num_updates = _train_epoch(model, data, epoch, opt, args, device, num_updates, run_name)
        last = epoch + 1 == epochs
        evaluated = last or (args.eval_every and (epoch + 1) % args.eval_every == 0)
        top1 = evaluate(model, data, device, args.amp, args.channels_last) if evaluated else None
        curve.append(top1)
        losses.append(loss)
        top1_s = f'{top1:6.2f}' if top1 is not None else '     -'
        log(
            f'  {variant.name:<14} seed {seed}  epoch {epoch + 1:>3}/{epochs}  loss {loss:.4f}  '
            f'val top-1 {top1_s}  lr {opt.optimizer.param_groups[0]["lr"]:.2e}  {time.time() - te:5.1f}s'
        )
    tm_blocks = model.tm_blocks()
    return {
        'variant': variant.name,
        'seed': seed,
        'top1': curve[-1],
        'top1_per_epoch': curve,
        'train_loss_per_epoch': losses,
        'seconds': round(time.time() - t0, 2),
        'params': sum(p.numel() for p in model.parameters()),
        'evidence_weight': {k: round(b.evidence_weight.item(), 5) for k, b in tm_blocks.items()},
        'temperature': {k: round(b.temperature.item(), 4) for k, b in tm_blocks.items()},
        'num_train': data.num_train,
        'num_val': data.num_val,
    }


def log_to(f: TextIO) -> Log:
    """A log function: each message printed and appended (flushed) to the open file ``f``."""

    def log(msg: str) -> None:
        print(msg, flush=True)
        f.write(msg + '\n')
        f.flush()

    return log

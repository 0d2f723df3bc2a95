"""``timm-tm compare``: does template matching beat ResNet? A paired, seeded comparison under one recipe.

Every variant (the TM-free ``baseline``, the TM model, ablations of it) is trained with the same data, seeds,
epochs, optimizer (``timm.optim.create_optimizer_v2``), schedule (``timm.scheduler.create_scheduler_v2``),
augmentations and loss (timm's), and evaluated by top-1 on a held-out split. Variants differ only in their TM
blocks: each is the same ``tm_*`` model, the baseline with ``tm_stages=()``. For a given seed, the backbone and
head start from the same weights in every variant (the TM blocks are built after them) and see the same batches
in the same order, so per-seed differences are paired.

Data: scikit-learn's digits (the default, installs with scikit-learn), cluttered MNIST built from the 10,000 real
MNIST digits that ship with the package (or another MNIST ``.npz``, ``--mnist-npz``), or any ImageFolder-layout
folder with ``train/`` and ``val/`` (``--data-dir``, read with timm's ``create_dataset`` / ``create_loader``).

Output, under ``--out``: ``results.json`` (every per-seed number, rewritten after each finished run, so an
interrupted comparison keeps what it finished; ``--resume`` skips those), ``results.md`` (the table) and
``results.png`` (final top-1 per seed and mean per variant) and ``curves.png`` (val top-1 per epoch, mean ± std
over seeds per variant). Runs go ``--jobs`` at a time, each in its own process with ``--threads`` threads (one by
default on the CPU), so per-seed numbers do not depend on how many run side by side.

Variant names: ``baseline``, or ``tm`` followed by ``-``-separated options that override the model's defaults:

* ``m<int>``: templates per class, e.g. ``tm-m4``
* ``s<stages>``: stages carrying TM blocks, e.g. ``tm-s4``, ``tm-s34``, ``tm-s234``
* ``w<float>``: initial evidence weight, e.g. ``tm-w0``
* ``fixw``: evidence weight frozen at its initial value; ``noguide`` = ``w0`` + ``fixw`` (no label guidance)
* ``t<float>``: initial temperature, e.g. ``tm-t30``
* ``max`` / ``lse``: pooling of a class's templates into its evidence
* ``noembed`` / ``embtemplates`` / ``embclasses`` / ``embtied``: the embedding (``none`` is the control whose blocks
  change no feature: they only send the labels' gradient through the templates)
* ``evgrad`` / ``evlogits``: the evidence reaches the logits as gradient only, or is added to them
* ``ep<int>``: this variant's own epoch count (also ``baseline-ep<int>``: a baseline trained longer, the
  comparison at equal cost and the check that the baseline has plateaued)
"""

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['Variant', 'parse_variant', 'main', 'summarize']

DATASETS = ('digits', 'cluttered-mnist')
DEFAULT_VARIANTS = ('baseline', 'tm', 'tm-embtied')
ABLATION_VARIANTS = ('baseline', 'tm', 'tm-noguide', 'tm-w0', 'tm-fixw', 'tm-m2', 'tm-m4', 'tm-s4')
# keys of the config that must agree for --resume to reuse finished runs
_RECIPE_KEYS = (
    'dataset', 'data_dir', 'mnist_npz', 'train_size', 'val_size', 'canvas', 'img_size', 'model', 'channels',
    'layers', 'epochs', 'batch_size', 'opt', 'lr', 'weight_decay', 'momentum', 'sched', 'warmup_epochs',
    'min_lr', 'smoothing', 'mixup', 'cutmix', 'shift', 'hflip', 'scale', 'color_jitter', 'auto_augment',
    'reprob', 'amp',
)  # fmt: skip


_FOLDER_ONLY = ('hflip', 'scale', 'color_jitter', 'auto_augment', 'reprob')


# ---------------------------------------------------------------------------------------------------------------
# Variants


@dataclass(frozen=True)
class Variant:
    """A named model configuration: keyword overrides for ``timm.create_model``, whether w is frozen, and the
    variant's own epoch count (``None``: the recipe's)."""

    name: str
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    freeze_evidence_weight: bool = False
    epochs: Optional[int] = None

    @property
    def is_baseline(self) -> bool:
        return self.model_kwargs.get('tm_stages', None) == ()


_EMBED_TOKENS = {'noembed': 'none', 'embtemplates': 'templates', 'embclasses': 'classes', 'embtied': 'tied'}


def parse_variant(name: str) -> Variant:
    """``'baseline[-ep<int>]'`` or ``'tm[-option...]'`` (see the module docstring) -> Variant. Raises ValueError."""
    parts = name.split('-')
    if parts[0] not in ('baseline', 'tm'):
        raise ValueError(f"unknown variant {name!r}: expected 'baseline' or 'tm[-option...]' (e.g. tm-noembed)")
    kwargs: Dict[str, Any] = {'tm_stages': ()} if parts[0] == 'baseline' else {}
    freeze = False
    epochs = None
    for tok in parts[1:]:
        if m := re.fullmatch(r'ep(\d+)', tok):
            if int(m.group(1)) < 1:
                raise ValueError(f'variant {name!r}: epochs must be >= 1, got {tok!r}')
            epochs = int(m.group(1))
        elif parts[0] == 'baseline':
            raise ValueError(f'unknown option {tok!r} in variant {name!r}: the baseline takes only ep<int>')
        elif m := re.fullmatch(r'm(\d+)', tok):
            if int(m.group(1)) < 1:
                raise ValueError(f'variant {name!r}: templates per class must be >= 1, got {tok!r}')
            kwargs['templates_per_class'] = int(m.group(1))
        elif m := re.fullmatch(r's([1-4]+)', tok):
            stages = tuple(int(c) for c in m.group(1))
            if len(set(stages)) != len(stages):
                raise ValueError(f'variant {name!r}: repeated stage in {tok!r}')
            kwargs['tm_stages'] = tuple(sorted(stages))
        elif m := re.fullmatch(r'w(-?\d+(?:\.\d+)?)', tok):
            kwargs['evidence_weight_init'] = float(m.group(1))
        elif m := re.fullmatch(r't(\d+(?:\.\d+)?)', tok):
            if float(m.group(1)) <= 0:
                raise ValueError(f'variant {name!r}: temperature must be > 0, got {tok!r}')
            kwargs['temperature_init'] = float(m.group(1))
        elif tok == 'fixw':
            freeze = True
        elif tok == 'noguide':
            kwargs['evidence_weight_init'] = 0.0
            freeze = True
        elif tok in ('max', 'lse'):
            kwargs['evidence_pool'] = 'max' if tok == 'max' else 'logsumexp'
        elif tok in _EMBED_TOKENS:
            kwargs['embedding'] = _EMBED_TOKENS[tok]
        elif tok in ('evgrad', 'evlogits'):
            kwargs['evidence_mode'] = 'gradient' if tok == 'evgrad' else 'logits'
        else:
            raise ValueError(
                f'unknown option {tok!r} in variant {name!r}: expected m<int>, s<stages>, w<float>, t<float>, '
                f'fixw, noguide, max, lse, {", ".join(_EMBED_TOKENS)}, evgrad, evlogits or ep<int>'
            )
    return Variant(name, kwargs, freeze, epochs)


# ---------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    """Train / val batches for one run: ``train_batches(epoch)`` and ``val_batches()`` yield (B x C x H x W, B)."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    num_train: int
    num_val: int
    train_batches: Callable[[int], Iterator[Tuple[torch.Tensor, torch.Tensor]]]
    val_batches: Callable[[], Iterator[Tuple[torch.Tensor, torch.Tensor]]]
    batches_per_epoch: int


def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    """N x h x w uint8 -> N x 1 x size x size float in [0, 1] (bilinear; antialiased when shrinking)."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=True)
    return x


def _array_data(
    name: str, splits: Dict[str, Tuple[np.ndarray, np.ndarray]], args: argparse.Namespace, seed: int
) -> Data:
    """A tensor pipeline over in-memory grayscale arrays: random shifts (zero padding) as augmentation."""
    x_train, y_train = splits['train']
    x_val, y_val = splits['val']
    train_x, val_x = _resize(x_train, args.img_size), _resize(x_val, args.img_size)
    mean, std = train_x.mean().item(), train_x.std().item()
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    pad_value = -mean / std  # zero intensity after normalization
    train_y, val_y = torch.from_numpy(y_train), torch.from_numpy(y_val)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    bs, shift = args.batch_size, args.shift

    def train_batches(epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # own generator per (seed, epoch): the same order and shifts for every variant
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(order) - bs + 1, bs):  # drop_last, as timm's train loader
            idx = order[i : i + bs]
            x = train_x[idx]
            if shift > 0:
                s = args.img_size
                x = F.pad(x, (shift,) * 4, value=pad_value)
                dy = torch.randint(0, 2 * shift + 1, (len(idx),), generator=g)
                dx = torch.randint(0, 2 * shift + 1, (len(idx),), generator=g)
                x = torch.stack([x[j, :, dy[j] : dy[j] + s, dx[j] : dx[j] + s] for j in range(len(idx))])
            yield x, train_y[idx]

    def val_batches() -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(val_x), 256):
            yield val_x[i : i + 256], val_y[i : i + 256]

    return Data(
        name, num_classes, 1, args.img_size, len(train_x), len(val_x), train_batches, val_batches,
        len(train_x) // bs,
    )  # fmt: skip


def _subsample(x: np.ndarray, y: np.ndarray, n: Optional[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[idx], y[idx]


def _check_image_folder(data_dir: str) -> None:
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f'--data-dir {data_dir!r} is not a directory')
    missing = [s for s in ('train', 'val') if not (root / s).is_dir()]
    if missing:
        raise ValueError(
            f'--data-dir {data_dir!r} must hold ImageFolder splits train/ and val/ (one sub-folder per class); '
            f'missing: {", ".join(m + "/" for m in missing)}'
        )


def _folder_data(args: argparse.Namespace, seed: int, device: torch.device) -> Data:
    """An ImageFolder dataset through timm's create_dataset / create_loader (RGB, ImageNet mean / std)."""
    from timm.data import create_dataset, create_loader

    _check_image_folder(args.data_dir)
    ds_train = create_dataset('', root=args.data_dir, split='train', is_training=True)
    ds_val = create_dataset('', root=args.data_dir, split='val', class_map=ds_train.reader.class_to_idx)
    num_classes = len(ds_train.reader.class_to_idx)
    if len(ds_train) == 0 or len(ds_val) == 0:
        raise ValueError(f'--data-dir {args.data_dir!r}: no images found in train/ or val/')
    input_size = (3, args.img_size, args.img_size)
    prefetch = device.type == 'cuda'
    common = dict(num_workers=args.workers, device=device, use_prefetcher=prefetch, pin_memory=prefetch)
    train_loader = create_loader(
        ds_train, input_size, args.batch_size, is_training=True, hflip=args.hflip,
        scale=tuple(args.scale) if args.scale else None, color_jitter=args.color_jitter,
        auto_augment=args.auto_augment, re_prob=args.reprob, persistent_workers=False, **common,
    )  # fmt: skip
    val_loader = create_loader(ds_val, input_size, 256, is_training=False, crop_pct=1.0, **common)

    def train_batches(epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # seed the sampler, the workers and the transforms' RNGs: the same stream for every variant
        _seed_everything(seed * 100003 + epoch)
        yield from train_loader

    def val_batches() -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        yield from val_loader

    return Data(
        Path(args.data_dir).name, num_classes, 3, args.img_size, len(ds_train), len(ds_val), train_batches,
        val_batches, len(train_loader),
    )  # fmt: skip


def load_data(args: argparse.Namespace, seed: int, device: torch.device) -> Data:
    if args.data_dir:
        return _folder_data(args, seed, device)
    from timm_tm.data import load_digits_arrays, load_mnist_npz, make_cluttered, split_arrays

    if args.dataset == 'digits':
        images, labels = load_digits_arrays()
        splits = split_arrays(images, labels, val_fraction=0.2, seed=0)
    else:
        images, labels = load_mnist_npz(args.mnist_npz or None)
        # a fixed split and fixed clutter (seed 0): seeds vary the models and the batch order, not the data
        splits = split_arrays(images, labels, val_fraction=0.2, seed=0)
        splits = {
            'train': make_cluttered(*_subsample(*splits['train'], args.train_size, 0), canvas=args.canvas, seed=1),
            'val': make_cluttered(*_subsample(*splits['val'], args.val_size, 0), canvas=args.canvas, seed=2),
        }
    if args.dataset == 'digits' and (args.train_size or args.val_size):
        splits = {
            'train': _subsample(*splits['train'], args.train_size, 0),
            'val': _subsample(*splits['val'], args.val_size, 0),
        }
    check_splits(splits['train'][1], splits['val'][1])
    return _array_data(args.dataset, splits, args, seed)


def check_splits(train_labels: np.ndarray, val_labels: np.ndarray) -> None:
    """Refuse a comparison that cannot tell models apart: empty splits, one class, val classes never trained on."""
    if len(train_labels) == 0 or len(val_labels) == 0:
        raise ValueError(f'empty split: {len(train_labels)} train and {len(val_labels)} val images')
    train_classes = set(np.unique(train_labels).tolist())
    if len(train_classes) < 2:
        raise ValueError(f'the training split has {len(train_classes)} class: a comparison needs at least 2')
    unseen = sorted(set(np.unique(val_labels).tolist()) - train_classes)
    if unseen:
        raise ValueError(f'val classes {unseen} have no training images: every val class must occur in train')


# ---------------------------------------------------------------------------------------------------------------
# Training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(variant: Variant, args: argparse.Namespace, num_classes: int, in_chans: int, seed: int) -> nn.Module:
    """The variant's model; for one seed every variant's backbone and head start from the same weights."""
    import timm

    import timm_tm  # noqa: F401  (registers the tm_* models)

    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans)
    if args.channels:
        kwargs['channels'] = tuple(args.channels)
        kwargs['stem_width'] = args.channels[0]
    if args.layers:
        kwargs['layers'] = tuple(args.layers)
    kwargs.update(variant.model_kwargs)
    _seed_everything(seed)
    model = timm.create_model(args.model, **kwargs)
    if variant.freeze_evidence_weight:
        for tm in model.tm_blocks().values():
            tm.evidence_weight.requires_grad_(False)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, device: torch.device, amp: bool) -> float:
    """Top-1 (%) on the val split."""
    model.eval()
    correct = total = 0
    for x, y in data.val_batches():
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        correct += (logits.argmax(dim=1) == y).sum().item()
        total += y.numel()
    return 100.0 * correct / max(total, 1)


def train_one(
    variant: Variant, seed: int, args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> Dict[str, Any]:
    """Train one (variant, seed) under the shared recipe; returns its record (top-1, curves, time, ...)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    t0 = time.time()
    epochs = variant.epochs or args.epochs
    data = load_data(args, seed, device)
    model = build_model(variant, args, data.num_classes, data.in_chans, seed).to(device)
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
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    # the same RNG stream for every variant from here on (mixup draws from numpy / torch)
    _seed_everything(seed + 1)
    curve, losses = [], []
    num_updates = 0
    for epoch in range(epochs):
        model.train()
        te, loss_sum, n = time.time(), 0.0, 0
        for x, y in data.train_batches(epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = criterion(model(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f'{variant.name} seed {seed}: loss is {loss.item()} at epoch {epoch}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
            loss_sum, n = loss_sum + loss.item(), n + 1
        scheduler.step(epoch + 1)
        last = epoch + 1 == epochs
        top1 = (
            evaluate(model, data, device, args.amp)
            if last or (args.eval_every and (epoch + 1) % args.eval_every == 0)
            else None
        )
        curve.append(top1)
        losses.append(loss_sum / max(n, 1))
        top1_s = f'{top1:6.2f}' if top1 is not None else '     -'
        log(
            f'  {variant.name:<14} seed {seed}  epoch {epoch + 1:>3}/{epochs}  loss {losses[-1]:.4f}  '
            f'val top-1 {top1_s}  lr {optimizer.param_groups[0]["lr"]:.2e}  {time.time() - te:5.1f}s'
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


def _train_in_worker(variant: Variant, seed: int, args: argparse.Namespace, device: str, log_path: str) -> Dict:
    """One run in a worker process (``--jobs`` > 1): its own thread count, its log lines appended to the log."""
    torch.set_num_threads(max(1, args.threads))
    with open(log_path, 'a') as f:
        return train_one(variant, seed, args, torch.device(device), _log_to(f))


def _log_to(f: Any) -> Callable[[str], None]:
    """A log function: each message printed and appended (flushed) to the open file ``f``."""

    def log(msg: str) -> None:
        print(msg, flush=True)
        f.write(msg + '\n')
        f.flush()

    return log


# ---------------------------------------------------------------------------------------------------------------
# Statistics and output


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _paired_p(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided paired t-test p-value of the per-seed differences (None for < 2 seeds or without scipy)."""
    if len(diffs) < 2:
        return None
    d = np.asarray(diffs, dtype=np.float64)
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else 0.0
    try:
        from scipy import stats
    except ImportError:
        return None
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def summarize(runs: List[Dict[str, Any]], variants: Sequence[str], reference: str = 'baseline') -> List[Dict]:
    """Per variant: top-1 mean / std over seeds, and the paired difference to ``reference`` on shared seeds."""
    by = {(r['variant'], r['seed']): r for r in runs}
    rows = []
    for v in variants:
        seeds = sorted(s for vv, s in by if vv == v)
        if not seeds:
            continue
        top1 = [by[(v, s)]['top1'] for s in seeds]
        mean, std = _mean_std(top1)
        row = {
            'variant': v, 'seeds': seeds, 'top1': top1, 'mean': mean, 'std': std,
            'params': by[(v, seeds[0])]['params'], 'seconds': [by[(v, s)]['seconds'] for s in seeds],
        }  # fmt: skip
        d = paired(runs, v, reference) if v != reference else None
        if d is not None:
            row.update(
                paired_seeds=d['seeds'], diffs=d['diffs'], diff_mean=d['mean'], diff_std=d['std'],
                p_value=d['p_value'], wins=d['wins'],
            )  # fmt: skip
        rows.append(row)
    return rows


def format_table(rows: List[Dict], reference: str = 'baseline') -> str:
    lines = [
        f'| variant | params | top-1 % (mean ± std) | per seed | Δ vs {reference} (mean ± std) | Δ per seed | '
        'paired t-test p | better | time / run |',
        '|---|---:|---:|---|---:|---|---:|---:|---:|',
    ]
    for r in rows:
        per_seed = ', '.join(f'{t:.2f}' for t in r['top1'])
        if 'diffs' in r:
            delta = f'{r["diff_mean"]:+.2f} ± {r["diff_std"]:.2f}'
            per_delta = ', '.join(f'{d:+.2f}' for d in r['diffs'])
            p = '-' if r['p_value'] is None else f'{r["p_value"]:.3f}'
            wins = f'{r["wins"]}/{len(r["diffs"])}'
        else:
            delta = per_delta = p = wins = '-'
        lines.append(
            f'| {r["variant"]} | {r["params"] / 1e6:.3f}M | {r["mean"]:.2f} ± {r["std"]:.2f} | {per_seed} | {delta} '
            f'| {per_delta} | {p} | {wins} | {np.mean(r["seconds"]):.0f}s |'
        )
    return '\n'.join(lines)


def _atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.stem}-', suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
            f.write('\n')

    _atomic_write(path, _w, '.json')


def write_markdown(
    path: Path, config: Dict[str, Any], rows: List[Dict], reference: str = 'baseline', verdict_lines: Sequence[str] = ()
) -> None:
    # leave out the options that do not apply to this kind of dataset
    skip = {'canvas'} if config['dataset'] != 'cluttered-mnist' else set()
    skip |= {'shift'} if config['dataset'] == 'folder' else set(_FOLDER_ONLY)
    recipe = ', '.join(
        f'{k}={config[k]}' for k in _RECIPE_KEYS if k not in skip and config.get(k) not in (None, '', [], False)
    )
    text = (
        f'# timm-tm compare: {config["dataset"]}\n\n'
        f'Top-1 on the val split after the last epoch; seeds {config["seeds"]}. Δ is the paired per-seed difference '
        f'to `{reference}` (same initial backbone weights and batch order).\n\n'
        f'{format_table(rows, reference)}\n\n'
        + ''.join(f'- {line}\n' for line in verdict_lines)
        + ('\n' if verdict_lines else '')
        + f'Recipe: {recipe}\n\nCommand: `{config["command"]}`\n'
    )

    def _w(tmp: str) -> None:
        Path(tmp).write_text(text)

    _atomic_write(path, _w, '.md')


def _save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()

    def _w(tmp: str) -> None:
        fig.savefig(tmp, format='png')

    try:
        _atomic_write(path, _w, '.png')
    finally:
        plt.close(fig)


def write_plot(path: Path, rows: List[Dict], title: str) -> None:
    """Top-1 per seed (dots) and mean ± std (bar and line) per variant."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 4.0), dpi=120)
    seeds = sorted({s for r in rows for s in r['seeds']})
    colors = plt.get_cmap('tab10')
    ax.set_xlim(-0.6, len(rows) - 0.4)
    for j, s in enumerate(seeds):  # faint lines join a seed's runs: the comparison is paired
        pts = [(i, r['top1'][r['seeds'].index(s)]) for i, r in enumerate(rows) if s in r['seeds']]
        ax.plot([i + 0.12 * (j - (len(seeds) - 1) / 2) for i, _ in pts], [t for _, t in pts], color=colors(j % 10),
                alpha=0.25, lw=1, zorder=2)  # fmt: skip
    for i, r in enumerate(rows):
        ax.annotate(f'{r["mean"]:.2f}', (i, r['mean']), xytext=(14, -3), textcoords='offset points', fontsize=8)
        ax.errorbar(i, r['mean'], yerr=r['std'], fmt='_', color='black', markersize=22, capsize=6, zorder=3)
        for s, t in zip(r['seeds'], r['top1']):
            j = seeds.index(s)
            ax.scatter(i + 0.12 * (j - (len(seeds) - 1) / 2), t, color=colors(j % 10), s=22, zorder=4,
                       label=f'seed {s}' if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(rows)), [r['variant'] for r in rows], rotation=30, ha='right')
    ax.set_ylabel('val top-1 (%)')
    ax.set_title(title, fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=7, loc='best')
    _save_figure(fig, path)


def paired(runs: List[Dict[str, Any]], variant: str, reference: str) -> Optional[Dict[str, Any]]:
    """The paired per-seed difference ``variant - reference`` on their shared seeds (None if none are shared)."""
    by = {(r['variant'], r['seed']): r['top1'] for r in runs}
    seeds = sorted(s for v, s in by if v == variant and (reference, s) in by)
    if not seeds:
        return None
    diffs = [by[(variant, s)] - by[(reference, s)] for s in seeds]
    mean, std = _mean_std(diffs)
    return {
        'variant': variant, 'reference': reference, 'seeds': seeds, 'diffs': diffs, 'mean': mean, 'std': std,
        'p_value': _paired_p(diffs), 'wins': sum(d > 0 for d in diffs),
    }  # fmt: skip


def verdict(d: Dict[str, Any], alpha: float = 0.05) -> str:
    """One line in plain words, e.g. 'tm vs baseline: no significant difference (+0.12 points, p = 0.31, ...)'."""
    p = d['p_value']
    p_s = 'p n/a' if p is None else f'p = {p:.3f}'
    n = len(d['diffs'])
    if p is None or p >= alpha or d['mean'] == 0:
        what = 'no significant difference'
    else:
        what = 'better' if d['mean'] > 0 else 'worse'
    return (
        f'{d["variant"]} vs {d["reference"]}: {what} ({d["mean"]:+.2f} ± {d["std"]:.2f} points, paired t-test '
        f'{p_s}, better on {d["wins"]}/{n} seeds)'
    )


def control_pairs(variants: Sequence[str]) -> List[Tuple[str, str]]:
    """(variant, reference) pairs worth a verdict: every variant against the baseline (of its own epoch count, for
    an ``-ep<E>`` variant, when there is one); a variant with an embedding
    against its evidence-only twin (the same variant without embedding, e.g. ``tm`` for ``tm-embtied``); a variant
    against its ``-noguide`` control (the same blocks without label guidance) when they were run."""
    parsed = {v: parse_variant(v) for v in variants}
    pairs = []
    for v, pv in parsed.items():  # against the baseline trained as long (``baseline-ep<E>`` for ``-ep<E>`` variants)
        reference = 'baseline' if pv.epochs is None or pv.is_baseline else f'baseline-ep{pv.epochs}'
        if v != reference and reference in parsed:
            pairs.append((v, reference))

    def without(variant: Variant, key: str) -> Tuple:
        kwargs = {k: v for k, v in variant.model_kwargs.items() if k != key}
        return tuple(sorted(kwargs.items())), variant.freeze_evidence_weight, variant.epochs

    for a, va in parsed.items():
        if va.is_baseline:
            continue
        if va.model_kwargs.get('embedding', 'none') != 'none':
            pairs += [(a, b) for b, vb in parsed.items() if b != a and not vb.is_baseline
                      and vb.model_kwargs.get('embedding', 'none') == 'none'
                      and without(vb, 'embedding') == without(va, 'embedding')]  # fmt: skip
        if f'{a}-noguide' in parsed:
            pairs.append((a, f'{a}-noguide'))
    return pairs


def verdicts(runs: List[Dict[str, Any]], variants: Sequence[str]) -> List[str]:
    """The verdict lines for the ``control_pairs`` of ``variants`` among ``runs`` (pairs without runs left out)."""
    lines = []
    for v, ref in control_pairs([v for v in variants if any(r['variant'] == v for r in runs)]):
        d = paired(runs, v, ref)
        if d is not None:
            lines.append(verdict(d))
    return lines


def mean_curves(runs: List[Dict[str, Any]], variant: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of val top-1 per epoch over a variant's seeds, at the epochs every seed evaluated."""
    curves = [r['top1_per_epoch'] for r in runs if r['variant'] == variant]
    length = min(len(c) for c in curves)
    epochs = [e for e in range(length) if all(c[e] is not None for c in curves)]
    a = np.array([[c[e] for e in epochs] for c in curves], dtype=np.float64)
    std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(len(epochs))
    return np.array(epochs) + 1, a.mean(axis=0), std


def write_curves(path: Path, runs: List[Dict[str, Any]], variants: Sequence[str], title: str) -> None:
    """Learning curves: val top-1 per epoch, mean ± std over seeds (shaded) per variant, with a zoom on the end."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120)
    colors = plt.get_cmap('tab10')
    finals = []
    for i, v in enumerate(x for x in variants if any(r['variant'] == x for r in runs)):
        epochs, mean, std = mean_curves(runs, v)
        if len(epochs) == 0:
            continue
        n = sum(r['variant'] == v for r in runs)
        for ax in axes:
            ax.plot(epochs, mean, color=colors(i % 10), lw=1.5, marker='.', label=f'{v} (n={n})')
            ax.fill_between(epochs, mean - std, mean + std, color=colors(i % 10), alpha=0.15, lw=0)
        finals.append((epochs, mean, std))
    axes[0].set_title(title, fontsize=9)
    # the zoom: from two thirds of the shortest run to the end of the longest, the y range of the means there
    last = max(int(e[-1]) for e, _, _ in finals) if finals else 1
    start = max(1, int(round(min(int(e[-1]) for e, _, _ in finals) * 2 / 3))) if finals else 1
    tail = [m[e >= start] for e, m, _ in finals if (e >= start).any()]
    if tail:
        lo, hi = min(float(t.min()) for t in tail), max(float(t.max()) for t in tail)
        pad = max(0.3, 0.25 * (hi - lo))
        axes[1].set_xlim(start - 0.5, last + 0.5)
        axes[1].set_ylim(lo - pad, hi + pad)
    axes[1].set_title(f'epochs {start}-{last} (zoom)', fontsize=9)
    for ax in axes:
        ax.set_xlabel('epoch')
        ax.set_ylabel('val top-1 (%)')
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc='lower right')
    _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _int_list(text: str) -> List[int]:
    if not text.strip():
        return []
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'expected positive integers, got {text!r}')
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='timm-tm compare',
        description='Train a TM-free baseline and TM variants of one tm_* model under an identical recipe, for '
        'several seeds, and compare val top-1 (mean ± std, paired per-seed differences). The defaults are a '
        'quick CPU run on scikit-learn digits (a few minutes on 2 cores).',
        epilog='Variants: baseline | tm[-m<int>][-s<stages>][-w<float>][-t<float>][-fixw][-noguide][-max|-lse], '
        'e.g. tm-m4-s34, tm-noguide. --variants ablations runs ' + ' '.join(ABLATION_VARIANTS) + '.',
    )
    d = p.add_argument_group('data')
    d.add_argument(
        '--dataset',
        choices=DATASETS,
        default=None,
        help='built-in real dataset (default: digits; cluttered-mnist when --mnist-npz is given)',
    )
    d.add_argument('--data-dir', default='', help='ImageFolder root with train/ and val/ (overrides --dataset)')
    d.add_argument('--mnist-npz', default='', help='MNIST .npz (x: N x 28 x 28 uint8, y) for cluttered-mnist')
    d.add_argument('--train-size', type=int, default=None, help='use this many training images (default: all)')
    d.add_argument('--val-size', type=int, default=None, help='use this many val images (default: all)')
    d.add_argument('--canvas', type=int, default=48, help='cluttered-mnist canvas size before resizing')
    d.add_argument(
        '--img-size',
        type=int,
        default=None,
        help='input size (default: 16 for digits, the canvas for cluttered-mnist, 32 for folders)',
    )
    d.add_argument('--workers', type=int, default=2, help='data loader workers (ImageFolder only)')
    m = p.add_argument_group('model')
    m.add_argument('--model', default='tm_resnet18_small', help='a tm_* model; the baseline is it with tm_stages=()')
    m.add_argument(
        '--channels',
        type=_int_list,
        default=[16, 32, 64, 128],
        help="stage widths, comma-separated ('' = the model's own, 64,128,256,512)",
    )
    m.add_argument('--layers', type=_int_list, default=None, help="blocks per stage, e.g. 2,2,2,2 (default: model's)")
    m.add_argument(
        '--variants',
        nargs='+',
        default=list(DEFAULT_VARIANTS),
        help="variants to train ('ablations' = the standard ablation set)",
    )
    r = p.add_argument_group('recipe (shared by every variant)')
    r.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    r.add_argument('--epochs', type=int, default=10)
    r.add_argument('--batch-size', type=int, default=32)
    r.add_argument('--opt', default='adamw', help='timm optimizer name (create_optimizer_v2), e.g. adamw, sgd')
    r.add_argument('--lr', type=float, default=3e-3)
    r.add_argument('--weight-decay', type=float, default=0.05)
    r.add_argument('--momentum', type=float, default=0.9)
    r.add_argument('--sched', default='cosine', help='timm scheduler name (create_scheduler_v2)')
    r.add_argument('--warmup-epochs', type=int, default=1)
    r.add_argument('--min-lr', type=float, default=1e-5)
    r.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    r.add_argument('--mixup', type=float, default=0.0, help='timm Mixup alpha (0: off)')
    r.add_argument('--cutmix', type=float, default=0.0, help='timm CutMix alpha (0: off)')
    r.add_argument('--shift', type=int, default=2, help='random shift in pixels (built-in datasets)')
    r.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability (ImageFolder only)')
    r.add_argument('--scale', type=float, nargs=2, default=None, help='RandomResizedCrop scale (ImageFolder only)')
    r.add_argument('--color-jitter', type=float, default=0.0, help='ImageFolder only')
    r.add_argument('--auto-augment', default=None, help='e.g. rand-m9-mstd0.5 (ImageFolder only)')
    r.add_argument('--reprob', type=float, default=0.0, help='random erasing probability (ImageFolder only)')
    x = p.add_argument_group('run')
    x.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    x.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    x.add_argument(
        '--threads', type=int, default=1, help='torch CPU threads of each run (default 1: runs go side by side)'
    )
    x.add_argument(
        '--jobs', type=int, default=None, help='runs at a time, one process each (default: the CPU count; 1 on GPU)'
    )
    x.add_argument('--eval-every', type=int, default=1, help='evaluate every N epochs (0: only after the last)')
    x.add_argument('--out', default=None, help='results folder (default: results/tmp/<dataset>-<timestamp>)')
    x.add_argument('--resume', action='store_true', help='skip (variant, seed) runs already in --out/results.json')
    x.add_argument('--title', default=None, help='plot title')
    return p


def _validate(args: argparse.Namespace, p: argparse.ArgumentParser) -> List[Variant]:
    import timm

    import timm_tm  # noqa: F401

    if args.data_dir:
        try:
            _check_image_folder(args.data_dir)
        except ValueError as e:
            p.error(str(e))
        args.dataset = 'folder'
    elif args.dataset is None:
        args.dataset = 'cluttered-mnist' if args.mnist_npz else 'digits'
    if args.mnist_npz and args.dataset != 'cluttered-mnist':
        p.error(f'--mnist-npz is for --dataset cluttered-mnist, not {args.dataset}')
    if args.mnist_npz and not os.path.isfile(args.mnist_npz):
        p.error(f'--mnist-npz {args.mnist_npz!r}: file not found')
    # absolute paths, so that --resume from another working directory sees the same recipe
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else ''
    args.mnist_npz = os.path.abspath(args.mnist_npz) if args.mnist_npz else ''
    if args.img_size is None:
        args.img_size = {'digits': 16, 'cluttered-mnist': args.canvas}.get(args.dataset, 32)
    if args.model not in timm.list_models('tm_*'):
        p.error(f'--model {args.model!r} is not a tm_* model; choose from {", ".join(timm.list_models("tm_*"))}')
    for name, v in (('--epochs', args.epochs), ('--batch-size', args.batch_size), ('--img-size', args.img_size)):
        if v < 1:
            p.error(f'{name} must be >= 1, got {v}')
    if args.channels is not None and len(args.channels) not in (0, 4):
        p.error(f'--channels needs 4 stage widths, got {args.channels}')
    if args.layers is not None and len(args.layers) != 4:
        p.error(f'--layers needs 4 block counts, got {args.layers}')
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f'--seeds must be distinct, got {args.seeds}')
    for name, v in (('--threads', args.threads), ('--jobs', args.jobs)):
        if v is not None and v < 1:
            p.error(f'{name} must be >= 1, got {v}')
    for name in ('lr', 'weight_decay', 'momentum', 'min_lr', 'smoothing', 'mixup', 'cutmix'):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0:
            p.error(f'--{name.replace("_", "-")} must be a finite number >= 0, got {v}')
    if args.lr <= 0:
        p.error(f'--lr must be > 0, got {args.lr}')
    if args.smoothing >= 1:
        p.error(f'--smoothing must be < 1, got {args.smoothing}')
    _check_recipe_names(args, p)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f'--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)')
    if device.type == 'cuda' and not torch.cuda.is_available():
        p.error(f'--device {args.device}: no CUDA GPU is available here')
    names: List[str] = []
    for v in args.variants:
        for n in ABLATION_VARIANTS if v == 'ablations' else (v,):
            if n not in names:
                names.append(n)
    try:
        variants = [parse_variant(n) for n in names]
    except ValueError as e:
        p.error(f'--variants: {e}')
    args.variants = names
    try:  # read the data once before anything is written: a bad dataset is refused here
        load_data(args, args.seeds[0], torch.device('cpu'))
    except (OSError, ValueError) as e:
        p.error(f'data: {e}')
    return variants


def _check_recipe_names(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """--opt and --sched must name a timm optimizer and scheduler (checked on a throwaway parameter)."""
    from timm.optim import create_optimizer_v2, list_optimizers
    from timm.scheduler import create_scheduler_v2

    if args.opt.lower() not in list_optimizers():
        p.error(f'--opt {args.opt!r} is not a timm optimizer; choose from {", ".join(list_optimizers())}')
    opt = create_optimizer_v2(nn.Linear(1, 1), opt=args.opt, lr=args.lr)
    try:
        create_scheduler_v2(opt, sched=args.sched, num_epochs=max(args.epochs, 2), warmup_epochs=0)
    except ValueError:
        p.error(f'--sched {args.sched!r} is not a timm scheduler (e.g. cosine, tanh, step, multistep, poly)')


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.channels == []:
        args.channels = None
    variants = _validate(args, p)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.jobs is None:
        args.jobs = 1 if device.type == 'cuda' else (os.cpu_count() or 1)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    out = Path(args.out or Path('results') / 'tmp' / f'{args.dataset}-{time.strftime("%Y%m%d-%H%M%S")}')
    results_path = out / 'results.json'
    config = {k: v for k, v in vars(args).items() if k not in ('resume', 'out', 'title')}
    config['scale'] = list(args.scale) if args.scale else None
    config['command'] = 'timm-tm compare ' + ' '.join(argv if argv is not None else sys.argv[1:])
    runs: List[Dict[str, Any]] = []
    # what this command writes; without its results.json a folder's files are someone else's: never overwritten
    foreign = [n for n in ('results.md', 'results.png', 'curves.png', 'log.txt') if (out / n).exists()]
    if foreign and not results_path.exists():
        p.error(f'--out {out} holds {", ".join(foreign)} but no results.json of timm-tm compare: choose another --out')
    if results_path.exists():
        if not args.resume:
            p.error(f'{results_path} exists: pass --resume to continue it, or choose another --out')
        try:
            prev = json.loads(results_path.read_text())
            if not (isinstance(prev.get('config'), dict) and isinstance(prev.get('runs'), list)):
                raise ValueError('no "config" object and "runs" list')
        except (OSError, ValueError, AttributeError) as e:
            p.error(f'--resume: {results_path} is not a results file of timm-tm compare ({e}); choose another --out')
        changed = [k for k in _RECIPE_KEYS if prev['config'].get(k) != config.get(k)]
        if changed:
            p.error(
                f'--resume: {results_path} was made with another recipe (differs in: {", ".join(changed)}); '
                'choose another --out'
            )
        runs = prev['runs']
        # the command that started the folder stays its command; resumptions are listed after it
        config['resumed_with'] = prev['config'].get('resumed_with', []) + [config['command']]
        config['command'] = prev['config']['command']
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / 'log.txt', 'a')
    log = _log_to(log_file)

    done = {(r['variant'], r['seed']) for r in runs}
    todo = [(s, v) for s in args.seeds for v in variants if (v.name, s) not in done]
    jobs = max(1, min(args.jobs, len(todo)))
    log(
        f'timm-tm compare: {args.dataset}, {args.model} (channels {args.channels or "default"}, layers '
        f'{args.layers or "default"}), {args.img_size}px, {args.epochs} epochs, seeds {args.seeds}, variants '
        f'{args.variants}, {device}, {jobs} run(s) at a time with {args.threads} thread(s) each -> {out}'
    )
    if done:
        log(f'resuming: {len(done)} finished run(s) kept, {len(todo)} to go')
    t_all = time.time()
    order = {(v.name, s): i for i, (s, v) in enumerate((s, v) for s in args.seeds for v in variants)}

    def finished(record: Dict[str, Any]) -> None:
        runs.append(record)
        runs.sort(key=lambda r: order.get((r['variant'], r['seed']), len(order)))
        write_json(results_path, {'config': config, 'runs': runs})
        log(f'{record["variant"]} seed {record["seed"]}: top-1 {record["top1"]:.2f}% ({record["seconds"]:.0f}s)')

    try:
        if jobs == 1:
            for seed, variant in todo:
                finished(train_one(variant, seed, args, device, log))
        else:
            _run_parallel(todo, jobs, args, device, out / 'log.txt', finished)
    except (FloatingPointError, RuntimeError, ValueError) as e:
        log(f'error: {e} (finished runs are kept in {results_path}; rerun with --resume)')
        return 1
    finally:
        log_file.close()
    selected = [r for r in runs if r['seed'] in args.seeds]
    rows = summarize(selected, args.variants)
    lines = verdicts(selected, args.variants)
    write_json(results_path, {'config': config, 'runs': runs, 'summary': rows})
    write_markdown(out / 'results.md', config, rows, verdict_lines=lines)
    title = args.title or f'{args.dataset}: {args.model}, {args.epochs} epochs, {len(args.seeds)} seeds'
    write_plot(out / 'results.png', rows, title)
    write_curves(out / 'curves.png', selected, args.variants, title)

    print(f'\n{format_table(rows)}\n')
    for r in rows:
        print(f'{r["variant"]:>14} top-1: {r["mean"]:.2f} ± {r["std"]:.2f} %  (seeds {r["seeds"]})')
    for r in rows:
        if 'diffs' in r:
            p_s = '' if r['p_value'] is None else f', paired t-test p = {r["p_value"]:.3f}'
            print(f'{r["variant"]:>14} - baseline: {r["diff_mean"]:+.2f} ± {r["diff_std"]:.2f} points{p_s}')
    print(f'\n{len(todo)} run(s) in {time.time() - t_all:.0f}s; results in {out}/ (results.md, results.png, '
          'curves.png, results.json)')  # fmt: skip
    for line in lines:
        print(line)
    return 0


def _run_parallel(
    todo: List[Tuple[int, Variant]],
    jobs: int,
    args: argparse.Namespace,
    device: torch.device,
    log_path: Path,
    finished: Callable[[Dict[str, Any]], None],
) -> None:
    """Run ``todo`` in ``jobs`` worker processes (spawned: no state shared with this one), in order of seeds."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
        pending = {pool.submit(_train_in_worker, v, s, args, str(device), str(log_path)) for s, v in todo}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    finished(fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


if __name__ == '__main__':
    sys.exit(main())

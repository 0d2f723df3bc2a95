"""The data of a comparison: the same batches, in the same order, for every variant of a seed.

Two pipelines give one interface (:class:`Data`): in-memory grayscale arrays (scikit-learn digits, cluttered MNIST,
Fashion-MNIST from :mod:`timm_tm.data`) as tensors with random shifts (a random crop of the zero-padded image) and
horizontal flips, and an ImageFolder through timm's ``create_dataset`` / ``create_loader``.
"""

import argparse
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import create_dataset, create_loader

from timm_tm.data import load_digits_arrays, load_fashion_mnist, load_mnist_npz, make_cluttered, split_arrays

__all__ = ['Data', 'DATASETS', 'load_data', 'check_splits', 'check_image_folder', 'seed_everything']

DATASETS = ('digits', 'cluttered-mnist', 'fashion-mnist')

Batches = Iterator[Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Data:
    """Train / val batches for one run: ``train_batches(epoch)`` and ``val_batches()`` yield (B x C x H x W, B)."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    num_train: int
    num_val: int
    train_batches: Callable[[int], Batches]
    val_batches: Callable[[], Batches]
    batches_per_epoch: int


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (timm's transforms, workers and Mixup draw from them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(args: argparse.Namespace, seed: int, device: torch.device) -> Data:
    """The data of ``args`` for the runs of ``seed``: ``--data-dir`` if given, else ``--dataset``. Raises
    ValueError / OSError for data a comparison cannot use."""
    if args.dataset == 'folder':
        return _folder_data(args, seed, device)
    if args.dataset == 'fashion-mnist':  # the standard split: the 10,000 test images are the val split
        fashion = load_fashion_mnist(args.data_dir or None)
        splits = {
            'train': _subsample(*fashion['train'], args.train_size, 'train'),
            'val': _subsample(*fashion['test'], args.val_size, 'val'),
        }
        check_splits(splits['train'][1], splits['val'][1])
        return _array_data(args.dataset, splits, args, seed)
    images, labels = load_digits_arrays() if args.dataset == 'digits' else load_mnist_npz(args.mnist_npz or None)
    # a fixed split (and fixed clutter, seeds 1 / 2): seeds vary the models and the batch order, not the data
    splits = split_arrays(images, labels, val_fraction=0.2, seed=0)
    if args.dataset != 'digits':
        splits = {split: _subsample(*splits[split], getattr(args, f'{split}_size'), split) for split in splits}
        check_memory(sum(len(y) for _, y in splits.values()), args.canvas, 1, f'--canvas {args.canvas}', args.jobs)
        splits = {
            'train': make_cluttered(*splits['train'], canvas=args.canvas, seed=1),
            'val': make_cluttered(*splits['val'], canvas=args.canvas, seed=2),
        }
    elif args.train_size or args.val_size:
        splits = {
            'train': _subsample(*splits['train'], args.train_size, 'train'),
            'val': _subsample(*splits['val'], args.val_size, 'val'),
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


def check_image_folder(data_dir: str) -> None:
    """Raise ValueError unless ``data_dir`` holds the ImageFolder splits ``train/`` and ``val/``, each a tree that
    reaches every folder once (timm's reader follows symlinks: a loop, or a class folder linked into another,
    would count images twice, or without end)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f'--data-dir {data_dir!r} is not a directory')
    missing = [s for s in ('train', 'val') if not (root / s).is_dir()]
    if missing:
        raise ValueError(
            f'--data-dir {data_dir!r} must hold ImageFolder splits train/ and val/ (one sub-folder per class); '
            f'missing: {", ".join(m + "/" for m in missing)}'
        )
    for split in ('train', 'val'):
        _check_tree(root / split)


def _check_tree(top: Path) -> None:
    """Raise ValueError naming the first folder under ``top`` (symlinks followed) that leads to one seen before."""
    seen = {os.path.realpath(top)}
    for folder, subfolders, _ in os.walk(top, followlinks=True):
        for name in subfolders:
            real = os.path.realpath(os.path.join(folder, name))
            if real in seen:
                raise ValueError(
                    f'{os.path.join(folder, name)} leads to a folder read already ({real}): a symlink loop or a '
                    'folder linked twice would count its images more than once'
                )
            seen.add(real)


def _subsample(x: np.ndarray, y: np.ndarray, n: Optional[int], split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` (``--train-size`` / ``--val-size``) of the (image, label) pairs of ``split``, a fixed draw, in their
    original order (all of them for None). More than the split holds raises ValueError."""
    if n is not None and n > len(y):
        raise ValueError(f'--{split}-size {n}: the {split} split has only {len(y)} images')
    if n is None or n == len(y):
        return x, y
    idx = np.sort(np.random.default_rng(0).permutation(len(y))[:n])
    return x[idx], y[idx]


def check_memory(num_images: int, side: int, bytes_per_pixel: int, what: str, runs: Optional[int] = 1) -> None:
    """Raise ValueError, naming ``what``, when ``num_images`` side x side images (held by each of ``runs`` runs at
    a time) would not fit in this machine's memory: a one-line refusal instead of an allocator failure."""
    try:
        total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (AttributeError, OSError, ValueError):  # no way to tell here
        return
    need = num_images * side * side * bytes_per_pixel * (runs or 1)
    if need > total:
        raise ValueError(
            f'{what}: {num_images} images of {side} x {side} px take {need / 2**30:.1f} GiB in memory '
            f'({runs or 1} run(s) at a time), more than this machine has ({total / 2**30:.1f} GiB)'
        )


def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    """N x h x w uint8 -> N x 1 x size x size float in [0, 1] (bilinear; antialiased when shrinking)."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False, antialias=True)
    return x


def _array_data(
    name: str, splits: Dict[str, Tuple[np.ndarray, np.ndarray]], args: argparse.Namespace, seed: int
) -> Data:
    """A tensor pipeline over in-memory grayscale arrays: random shifts (a random crop of the image zero-padded by
    ``--shift``) and, with ``--hflip`` > 0, horizontal flips as augmentation."""
    x_train, y_train = splits['train']
    x_val, y_val = splits['val']
    if x_train.min() == x_train.max():  # (and a division by a zero std below)
        raise ValueError(f'every training pixel is {x_train.min()}: nothing to learn')
    # float32, and a normalized copy: 8 bytes a pixel
    check_memory(len(y_train) + len(y_val), args.img_size, 8, f'--img-size {args.img_size}', args.jobs)
    train_x, val_x = _resize(x_train, args.img_size), _resize(x_val, args.img_size)
    mean, std = train_x.mean().item(), train_x.std().item()
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    pad_value = -mean / std  # zero intensity after normalization
    train_y, val_y = torch.from_numpy(y_train), torch.from_numpy(y_val)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    bs, shift, hflip = args.batch_size, args.shift, args.hflip

    def train_batches(epoch: int) -> Batches:
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
            if hflip > 0:  # no draw without flips: the digits' batches stay what they were
                flip = torch.rand(len(idx), generator=g) < hflip
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            yield x, train_y[idx]

    def val_batches() -> Batches:
        for i in range(0, len(val_x), 256):
            yield val_x[i : i + 256], val_y[i : i + 256]

    return Data(
        name, num_classes, 1, args.img_size, len(train_x), len(val_x), train_batches, val_batches,
        len(train_x) // bs,
    )  # fmt: skip


def _folder_data(args: argparse.Namespace, seed: int, device: torch.device) -> Data:
    """An ImageFolder dataset through timm's create_dataset / create_loader (RGB, ImageNet mean / std)."""
    check_image_folder(args.data_dir)
    ds_train = create_dataset('', root=args.data_dir, split='train', is_training=True)
    classes = ds_train.reader.class_to_idx
    # the val classes as val/ has them: with the train classes as its class map, timm drops the others' images
    val_classes = create_dataset('', root=args.data_dir, split='val').reader.class_to_idx
    ds_val = create_dataset('', root=args.data_dir, split='val', class_map=classes)
    num_classes = len(classes)
    if len(ds_train) == 0 or len(ds_val) == 0:
        raise ValueError(f'--data-dir {args.data_dir!r}: no images found in train/ or val/')
    if num_classes < 2:
        raise ValueError(f'--data-dir {args.data_dir!r}: the training split has 1 class: a comparison needs at least 2')
    unseen = sorted(set(val_classes) - set(classes))
    if unseen:
        raise ValueError(
            f'--data-dir {args.data_dir!r}: val classes {unseen} have no training images: every val class must occur '
            'in train'
        )
    input_size = (3, args.img_size, args.img_size)
    prefetch = device.type == 'cuda'
    common = dict(num_workers=args.workers, device=device, use_prefetcher=prefetch, pin_memory=prefetch)
    train_loader = create_loader(
        ds_train, input_size, args.batch_size, is_training=True, hflip=args.hflip,
        scale=tuple(args.scale) if args.scale else None, color_jitter=args.color_jitter,
        auto_augment=args.auto_augment, re_prob=args.reprob, persistent_workers=False, **common,
    )  # fmt: skip
    val_loader = create_loader(ds_val, input_size, 256, is_training=False, crop_pct=1.0, **common)

    def train_batches(epoch: int) -> Batches:
        # seed the sampler, the workers and the transforms' RNGs: the same stream for every variant
        seed_everything(seed * 100003 + epoch)
        yield from train_loader

    def val_batches() -> Batches:
        yield from val_loader

    return Data(
        Path(args.data_dir).name, num_classes, 3, args.img_size, len(ds_train), len(ds_val), train_batches,
        val_batches, len(train_loader),
    )  # fmt: skip

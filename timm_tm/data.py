"""Small real datasets for demos, tests and comparisons.

* ``load_digits_arrays``: scikit-learn's handwritten digits (1,797 images, 8 x 8, 10 classes); installs with
  scikit-learn, so it is the embedded default that needs no download.
* ``load_mnist_npz`` + ``make_cluttered``: MNIST digits placed at random in a larger canvas among fragments
  of other digits, a harder task that tells models apart. ``load_mnist_npz()`` without a path reads the 10,000
  real MNIST digits that ship with the package (``timm_tm/assets/mnist10k.npz``, 1.6 MB; see
  ``timm_tm/assets/README.md`` for their source and licence).
* ``write_image_folder``: writes arrays as an ImageNet-layout folder (``root/<split>/<class>/*.png``) that
  timm's ``create_dataset`` / ``train.py`` read unchanged.
"""

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'load_digits_arrays', 'load_mnist_npz', 'make_cluttered', 'split_arrays', 'write_image_folder', 'PACKAGED_MNIST',
]  # fmt: skip

PACKAGED_MNIST = Path(__file__).parent / 'assets' / 'mnist10k.npz'


def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (N x 8 x 8 uint8 images in 0..255, N int64 labels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, d.target.astype(np.int64)


def load_mnist_npz(path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """An ``.npz`` with ``x`` (N x H x W uint8) and ``y`` (N integer labels); the packaged MNIST digits by default.

    Raises ValueError (naming the file) for anything else: not an npz, missing arrays, wrong shapes or types.
    """
    path = str(PACKAGED_MNIST if path is None else path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'MNIST archive not found: {path}')
    try:
        with np.load(path, allow_pickle=False) as d:
            if 'x' not in d or 'y' not in d:
                raise ValueError(f'{path}: expected arrays "x" and "y", found {sorted(d.keys())}')
            x, y = d['x'], d['y']
    except ValueError:
        raise
    except Exception as e:  # a truncated or foreign file: zipfile / pickle / OS errors
        raise ValueError(f'{path}: not a readable .npz archive ({type(e).__name__}: {e})') from None
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f'{path}: expected x of shape (N, H, W) and y of shape (N,), got {x.shape} and {y.shape}')
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise ValueError(f'{path}: expected non-negative integer labels y, got dtype {y.dtype}')
    if x.dtype != np.uint8:
        raise ValueError(f'{path}: expected uint8 images x (0..255), got dtype {x.dtype}')
    return x, y.astype(np.int64)


def make_cluttered(
    images: np.ndarray,
    labels: np.ndarray,
    canvas: int = 48,
    num_clutter: int = 4,
    clutter_size: int = 8,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Each digit pasted at a random position of a ``canvas`` x ``canvas`` image, with ``num_clutter``
    random ``clutter_size`` patches cut from other digits. Returns (N x canvas x canvas uint8, labels)."""
    n, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f'canvas ({canvas}) must be at least the digit size ({h} x {w})')
    rng = np.random.default_rng(seed)
    out = np.zeros((n, canvas, canvas), dtype=np.uint8)
    for i in range(n):
        img = out[i]
        for _ in range(num_clutter):
            src = images[rng.integers(n)]
            sy, sx = rng.integers(0, h - clutter_size + 1), rng.integers(0, w - clutter_size + 1)
            dy, dx = rng.integers(0, canvas - clutter_size + 1), rng.integers(0, canvas - clutter_size + 1)
            patch = src[sy : sy + clutter_size, sx : sx + clutter_size]
            region = img[dy : dy + clutter_size, dx : dx + clutter_size]
            np.maximum(region, patch, out=region)
        dy, dx = rng.integers(0, canvas - h + 1), rng.integers(0, canvas - w + 1)
        region = img[dy : dy + h, dx : dx + w]
        np.maximum(region, images[i], out=region)
    return out, labels.copy()


def split_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """A stratified, seeded train / val split: ``{'train': (x, y), 'val': (x, y)}``."""
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, int(round(len(idx) * val_fraction)))])
    val_mask = np.zeros(len(labels), dtype=bool)
    val_mask[np.concatenate(val_idx)] = True
    return {'train': (images[~val_mask], labels[~val_mask]), 'val': (images[val_mask], labels[val_mask])}


def write_image_folder(
    root: str,
    splits: Dict[str, Tuple[np.ndarray, np.ndarray]],
    class_names: Optional[Sequence[str]] = None,
    size: Optional[int] = None,
) -> Path:
    """Write ``{'train': (x, y), ...}`` grayscale arrays as RGB PNGs in ``root/<split>/<class>/<i>.png``.

    ``size`` resizes (bilinear) to size x size. Returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    num_classes = int(max(int(y.max()) for _, y in splits.values())) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise ValueError(f'class_names has {len(names)} names for {num_classes} classes')
    for split, (x, y) in splits.items():
        for c in range(num_classes):
            (root / split / names[c]).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(x, y)):
            im = Image.fromarray(img).convert('RGB')
            if size is not None:
                im = im.resize((size, size), Image.BILINEAR)
            im.save(root / split / names[int(label)] / f'{i:05d}.png')
    return root

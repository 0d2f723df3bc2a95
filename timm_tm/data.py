"""Small real datasets for demos, tests and comparisons.

* ``load_digits_arrays``: scikit-learn's handwritten digits (1,797 images, 8 x 8, 10 classes); installs with
  scikit-learn, so it is the embedded default that needs no download.
* ``load_mnist_npz`` + ``make_cluttered``: MNIST digits placed at random in a larger canvas among fragments
  of other digits, a harder task that tells models apart. ``load_mnist_npz()`` without a path reads the 10,000
  real MNIST digits that ship with the package (``timm_tm/assets/mnist10k.npz``, 1.6 MB; see
  ``timm_tm/assets/README.md`` for their source and licence).
* ``load_fashion_mnist``: Zalando's Fashion-MNIST (70,000 28 x 28 clothing images, 10 classes; 60,000 train,
  10,000 test) from the four standard idx files in a folder: Debian's ``dataset-fashion-mnist`` package (the
  default folder), torchvision's ``FashionMNIST/raw`` or a clone of Zalando's repository (``data/fashion``).
  ``read_idx`` reads one idx file (``.gz`` or not).
* ``write_image_folder``: writes arrays as an ImageNet-layout folder (``root/<split>/<class>/*.png``) that
  timm's ``create_dataset`` / ``train.py`` read unchanged.
"""

import gzip
import os
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'load_digits_arrays', 'load_mnist_npz', 'make_cluttered', 'split_arrays', 'write_image_folder', 'PACKAGED_MNIST',
    'load_fashion_mnist', 'read_idx', 'FASHION_MNIST_DIR', 'FASHION_MNIST_CLASSES', 'FASHION_MNIST_FILES',
]  # fmt: skip

PACKAGED_MNIST = Path(__file__).parent / 'assets' / 'mnist10k.npz'

# where Debian's package dataset-fashion-mnist puts the idx files (`dpkg -L dataset-fashion-mnist`)
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)  # fmt: skip
# split -> (images, labels): the standard idx file names (MNIST's), each read as is or with .gz
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_HOW_TO_GET_FASHION_MNIST = (
    'get it with `apt-get install dataset-fashion-mnist` (Debian / Ubuntu; puts it in '
    f'{FASHION_MNIST_DIR}), torchvision.datasets.FashionMNIST(ROOT, download=True) (then --data-dir '
    'ROOT/FashionMNIST/raw), or a clone of github.com/zalandoresearch/fashion-mnist (--data-dir CLONE/data/fashion)'
)


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


def read_idx(path: str) -> np.ndarray:
    """One idx file (the MNIST format: big-endian header, unsigned bytes), plain or gzip-compressed, as a uint8
    array of the shape its header gives. Raises ValueError naming the file when it is not a whole idx file of
    unsigned bytes (truncated, another format)."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(2)
            f.seek(0)
            data = gzip.decompress(f.read()) if raw == b'\x1f\x8b' else f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f'{path}: a damaged or truncated gzip file ({e})') from None
    if len(data) < 4 or data[:2] != b'\x00\x00':
        raise ValueError(f'{path}: not an idx file (it does not start with the idx magic number)')
    if data[2] != 0x08:
        raise ValueError(f'{path}: idx data type 0x{data[2]:02x}, expected 0x08 (unsigned bytes)')
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise ValueError(f'{path}: truncated idx header')
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f'{path}: its header gives shape {shape} ({expected} bytes), the file holds {len(data) - header}: '
            'truncated or damaged'
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_idx(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz``; FileNotFoundError saying how to get the data otherwise."""
    for name in (stem, stem + '.gz'):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f'Fashion-MNIST: {folder} has no {stem}[.gz]; {_HOW_TO_GET_FASHION_MNIST}')


def load_fashion_mnist(data_dir: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST from the four idx files in ``data_dir`` (default: Debian's ``FASHION_MNIST_DIR``):
    ``{'train': (N x 28 x 28 uint8, N int64), 'test': (...)}``, the standard 60,000 / 10,000 split for the real data.

    Raises FileNotFoundError (saying how to get the data) for a missing folder or file, ValueError naming the file
    for a truncated or foreign one, or images and labels that do not belong together.
    """
    folder = Path(data_dir or FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise FileNotFoundError(f'Fashion-MNIST: no folder {folder}; {_HOW_TO_GET_FASHION_MNIST}')
    splits = {}
    for split, (images_stem, labels_stem) in FASHION_MNIST_FILES.items():
        images_path, labels_path = _find_idx(folder, images_stem), _find_idx(folder, labels_stem)
        images, labels = read_idx(str(images_path)), read_idx(str(labels_path))
        if images.ndim != 3:
            raise ValueError(f'{images_path}: expected N x H x W images, got shape {images.shape}')
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f'{labels_path}: expected {len(images)} labels (one per image of {images_path.name}), got shape '
                f'{labels.shape}'
            )
        if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f'{labels_path}: label {labels.max()} is not one of the 10 Fashion-MNIST classes')
        splits[split] = (images, labels.astype(np.int64))
    return splits

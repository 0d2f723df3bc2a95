"""timm_tm.data: the idx reader and Fashion-MNIST, on small idx files the tests write (and on the real data when
Debian's dataset-fashion-mnist is installed)."""

import gzip
import os

import numpy as np
import pytest

from timm_tm.data import FASHION_MNIST_DIR, FASHION_MNIST_FILES, load_fashion_mnist, read_idx


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """``array`` (uint8) as an idx file: magic 0x0000 0x08 ndim, big-endian dims, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    with open(path, 'wb') as f:
        f.write(gzip.compress(data) if compress else data)


def write_fashion_folder(folder, n_train: int = 40, n_test: int = 20, compress: bool = True, seed: int = 0):
    """A Fashion-MNIST-like folder: the four standard idx files, 28 x 28 images, the 10 classes in turn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (('train', n_train), ('test', n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        names = FASHION_MNIST_FILES[split]
        suffix = '.gz' if compress else ''
        write_idx(folder / (names[0] + suffix), images, compress)
        write_idx(folder / (names[1] + suffix), labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize('compress', [True, False])
def test_fashion_mnist_folder_round_trips(tmp_path, compress):
    written = write_fashion_folder(tmp_path / 'fm', compress=compress)
    loaded = load_fashion_mnist(str(tmp_path / 'fm'))
    assert sorted(loaded) == ['test', 'train']
    for split, (images, labels) in written.items():
        np.testing.assert_array_equal(loaded[split][0], images)
        np.testing.assert_array_equal(loaded[split][1], labels)
        assert loaded[split][1].dtype == np.int64


def test_missing_folder_or_file_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        load_fashion_mnist(str(tmp_path / 'nowhere'))
    write_fashion_folder(tmp_path / 'fm')
    (tmp_path / 'fm' / 't10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError, match=r't10k-labels-idx1-ubyte\[\.gz\].*apt-get install'):
        load_fashion_mnist(str(tmp_path / 'fm'))


def test_truncated_or_foreign_files_are_refused_naming_the_file(tmp_path):
    folder = tmp_path / 'fm'
    write_fashion_folder(folder, compress=False)
    images = folder / 'train-images-idx3-ubyte'
    images.write_bytes(images.read_bytes()[:-100])  # a download cut short
    with pytest.raises(ValueError, match=r'train-images-idx3-ubyte: its header gives shape \(40, 28, 28\).*truncated'):
        load_fashion_mnist(str(folder))
    write_fashion_folder(folder, compress=True)
    (folder / 'train-images-idx3-ubyte').unlink()
    gz = folder / 'train-images-idx3-ubyte.gz'
    gz.write_bytes(gz.read_bytes()[:-50])
    with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz: a damaged or truncated gzip file'):
        load_fashion_mnist(str(folder))
    gz.write_bytes(b'<html>not found</html>')
    with pytest.raises(ValueError, match='not an idx file'):
        load_fashion_mnist(str(folder))


def test_images_and_labels_that_do_not_belong_together_are_refused(tmp_path):
    folder = tmp_path / 'fm'
    write_fashion_folder(folder)
    write_idx(folder / 't10k-labels-idx1-ubyte.gz', np.zeros(19, np.uint8), compress=True)
    with pytest.raises(ValueError, match='expected 20 labels'):
        load_fashion_mnist(str(folder))
    write_idx(folder / 't10k-labels-idx1-ubyte.gz', np.full(20, 12, np.uint8), compress=True)
    with pytest.raises(ValueError, match='label 12 is not one of the 10'):
        load_fashion_mnist(str(folder))


def test_read_idx_refuses_other_data_types(tmp_path):
    path = tmp_path / 'float.idx'
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, 'big') + b'\0' * 8)
    with pytest.raises(ValueError, match='data type 0x0d'):
        read_idx(str(path))


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason=f'Fashion-MNIST not installed ({FASHION_MNIST_DIR}; Debian package '
    'dataset-fashion-mnist)',
)  # fmt: skip
def test_the_real_fashion_mnist_is_the_standard_split():
    data = load_fashion_mnist()
    assert data['train'][0].shape == (60000, 28, 28) and data['test'][0].shape == (10000, 28, 28)
    for split, n in (('train', 6000), ('test', 1000)):  # balanced: n images per class
        assert np.bincount(data[split][1]).tolist() == [n] * 10

"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) read straight from its four IDX files.

70,000 grayscale 28x28 photographs of clothing (60,000 train, 10,000 test; 10 balanced classes). Debian and
Ubuntu ship the whole set in the ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``,
31 MB), which puts the gzipped IDX files in ``/usr/share/datasets/fashion-mnist``. :func:`load_fashion_mnist`
reads them with gzip + numpy (no other dependency, no download) in well under a second; a folder of the same
four files elsewhere is found through ``$CONVRNN_FASHION_MNIST`` or the ``root`` argument, gzipped or not.

IDX format (LeCun's): two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "SPLITS",
    "FashionMNISTError",
    "fashion_dir",
    "fashion_files",
    "fashion_fingerprint",
    "load_fashion_mnist",
    "read_idx",
]

# The label order of the dataset's README (label k is CLASSES[k]).
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = ("train", "test")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_PREFIX = {"train": "train", "test": "t10k"}
_SIZES = {"train": 60000, "test": 10000}
_INSTALL = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
    "or set CONVRNN_FASHION_MNIST to a folder holding the four IDX files"
)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class FashionMNISTError(ValueError):
    """An IDX file that is not what it should be; the message names the file."""


def fashion_dir(root: str | Path | None = None) -> Path:
    """The folder to read: ``root``, else ``$CONVRNN_FASHION_MNIST``, else Debian's install location."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CONVRNN_FASHION_MNIST")
    return Path(env).expanduser() if env else DEBIAN_DIR


def fashion_files(split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """(images, labels) IDX files of ``split``; FileNotFoundError, saying how to install them, if missing."""
    if split not in SPLITS:
        raise ValueError(f"Fashion-MNIST split must be one of {SPLITS}, got {split!r}")
    folder = fashion_dir(root)
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{_PREFIX[split]}-{kind}"
        # Debian ships them gzipped; the dataset's own download is gzipped too, but people often unpack it.
        path = next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"Fashion-MNIST: {folder / (name + '.gz')} not found; {_INSTALL}")
        found.append(path)
    return found[0], found[1]


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds (gzipped if the name ends in ``.gz``); errors name the file."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:  # a gzip stream cut short or not gzip at all
        raise FashionMNISTError(f"{path}: unreadable IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise FashionMNISTError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise FashionMNISTError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - head != want:
        raise FashionMNISTError(
            f"{path}: the header says shape {shape} ({want} bytes of data) but the file holds {len(data) - head}"
        )
    return np.frombuffer(data, dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, 28, 28) (0 = black background) and labels int64 (n,) of ``"train"`` or ``"test"``."""
    images_path, labels_path = fashion_files(split, root)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise FashionMNISTError(f"{images_path}: expected uint8 images (n, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise FashionMNISTError(f"{labels_path}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise FashionMNISTError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) and labels.max() >= len(CLASSES):
        raise FashionMNISTError(f"{labels_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    if len(labels) != _SIZES[split]:
        # Not an error (a subset is still Fashion-MNIST), but worth knowing: results would not be comparable.
        warnings.warn(f"{images_path}: {len(labels)} images, the {split} split has {_SIZES[split]}", stacklevel=2)
    return images, labels.astype(np.int64)


def fashion_fingerprint(split: str, root: str | Path | None = None) -> str:
    """A short SHA-256 of the split's two files, so caches built from other files are not reused."""
    h = hashlib.sha256()
    for path in fashion_files(split, root):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]

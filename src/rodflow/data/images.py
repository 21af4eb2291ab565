"""Image classification datasets: sklearn's bundled digits, Fashion-MNIST (IDX files), CIFAR-10 (pickles)."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import RodflowError
from . import Dataset, class_subset, register, standardise

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_HINT = ("install it with `sudo apt-get install dataset-fashion-mnist` (files land in "
                f"{FASHION_DIR}) or pass data_dir=DIR holding train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
CIFAR_HINT = ("download the 'CIFAR-10 python version' (cifar-10-python.tar.gz from "
              "https://www.cs.toronto.edu/~kriz/cifar.html), unpack it, and pass data_dir=DIR (the "
              "cifar-10-batches-py folder or its parent) or set RODFLOW_CIFAR10=DIR")


def _image_dataset(name, images, labels, n, classes, seed, total_classes, info) -> Dataset:
    idx = class_subset(labels, n, classes, seed, name, total_classes)
    x = standardise(images[idx].astype(np.float64), channel_axis=1)
    return Dataset(name, x, labels[idx].astype(np.int64), int(classes), "classification", info)


# ----------------------------------------------------------------------------------------------- digits
@register("digits")
def digits(n: int = 400, classes: int = 10, seed: int = 0) -> Dataset:
    """sklearn's bundled 8×8 handwritten digits (1797 images, 10 classes; needs no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RodflowError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    raw = load_digits()
    images = raw.images.astype(np.float64)[:, None, :, :]
    return _image_dataset("digits", images, raw.target.astype(np.int64), n, classes, seed, 10,
                          {"source": "sklearn.datasets.load_digits"})


# -------------------------------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise RodflowError(f"{path} is not an IDX file (bad magic number); re-download or re-install it")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset < count * dtype.itemsize:
        raise RodflowError(f"{path} is truncated: expected {count} values of shape {dims}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _fashion_arrays(folder: str, split: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(Path(folder), f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(Path(folder), f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise RodflowError(f"Fashion-MNIST files in {folder} have inconsistent shapes {images.shape}, {labels.shape}")
    return images, labels.astype(np.int64)


@register("fashion")
def fashion(n: int = 400, classes: int = 10, seed: int = 0, data_dir: str | None = None,
            split: str = "train") -> Dataset:
    """Fashion-MNIST 28×28 from raw IDX files (Debian package dataset-fashion-mnist)."""
    if split not in ("train", "test"):
        raise RodflowError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir or os.environ.get("RODFLOW_FASHION_MNIST") or FASHION_DIR).expanduser()
    prefix = "train" if split == "train" else "t10k"
    files = [_find(folder, f"{prefix}-{kind}-idx{k}-ubyte") for kind, k in (("images", 3), ("labels", 1))]
    if None in files:
        raise RodflowError(f"Fashion-MNIST not found in {folder}: {FASHION_HINT}")
    images, labels = _fashion_arrays(str(folder), split, max(f.stat().st_mtime for f in files))
    return _image_dataset("fashion", images[:, None, :, :], labels, n, classes, seed, 10,
                          {"source": str(folder), "split": split})


# ---------------------------------------------------------------------------------------------- CIFAR-10
def cifar_folder(data_dir: str | None) -> Path:
    given = data_dir or os.environ.get("RODFLOW_CIFAR10")
    candidates = []
    if given:
        root = Path(given).expanduser()
        candidates = [root, root / "cifar-10-batches-py"]
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rodflow"
        candidates = [cache / "cifar-10-batches-py", cache / "cifar10"]
    for c in candidates:
        if (c / "data_batch_1").is_file() or (c / "test_batch").is_file():
            return c
    where = given or " or ".join(str(c) for c in candidates)
    raise RodflowError(f"CIFAR-10 not found in {where}: {CIFAR_HINT}")


@functools.lru_cache(maxsize=8)
def read_cifar_batch(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (images uint8 (m, 3, 32, 32), labels int64 (m,))."""
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as exc:
        raise RodflowError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}); {CIFAR_HINT}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise RodflowError(f"{path} has data of shape {data.shape}; a CIFAR-10 batch has (m, 3072)")
    return data.reshape(-1, 3, 32, 32), labels


@register("cifar10")
def cifar10(n: int = 200, classes: int = 10, seed: int = 0, data_dir: str | None = None,
            split: str = "train") -> Dataset:
    """CIFAR-10 32×32×3 from the standard python-pickle batches (data_dir, or $RODFLOW_CIFAR10)."""
    if split not in ("train", "test"):
        raise RodflowError(f"split must be 'train' or 'test', got {split!r}")
    folder = cifar_folder(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    paths = [folder / b for b in names if (folder / b).is_file()]
    if not paths:
        raise RodflowError(f"no CIFAR-10 {split} batches in {folder}: {CIFAR_HINT}")
    need = n // max(int(classes), 1) + 1
    images, labels = [], []
    for p in paths:  # read batches in order until every wanted class has enough examples (seed 0)
        x, y = read_cifar_batch(str(p), p.stat().st_mtime)
        images.append(x)
        labels.append(y)
        counts = np.bincount(np.concatenate(labels), minlength=10)[: int(classes)]
        if not seed and counts.min(initial=0) >= need:
            break
    return _image_dataset("cifar10", np.concatenate(images), np.concatenate(labels), n, classes, seed, 10,
                          {"source": str(folder), "split": split})

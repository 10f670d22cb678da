"""Fashion-MNIST from Debian's dataset-fashion-mnist (or its upstream files), checked and decoded."""
from __future__ import annotations

import functools
import gzip
import hashlib

import numpy as np
import torch

from ..errors import XaiError
from .sources import FASHION_MNIST, sha256

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(name: str, magic: int, ndim: int) -> np.ndarray:
    path = FASHION_MNIST.path(name)
    expected = FASHION_MNIST.files[name]
    if sha256(path) != expected:
        raise XaiError(f"{path}: sha256 does not match the expected {expected[:12]}... (corrupt or different file)")
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise XaiError(f"{path}: corrupt gzip ({e})") from e
    header = np.frombuffer(raw[: 4 * (ndim + 1)], dtype=">i4")
    if header[0] != magic:
        raise XaiError(f"{path}: not an idx file of the expected kind (magic {header[0]})")
    dims = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw[4 * (ndim + 1):], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise XaiError(f"{path}: truncated ({data.size} values for shape {dims})")
    return data.reshape(dims)


@functools.cache
def _split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = {"train": "train", "test": "t10k"}[split]
    images = _read_idx(f"{prefix}-images-idx3-ubyte.gz", 2051, 3)
    labels = _read_idx(f"{prefix}-labels-idx1-ubyte.gz", 2049, 1)
    if len(images) != len(labels):
        raise XaiError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 1, 28, 28] float32 in [0, 1], labels [N] int64)`` for ``split`` in {train, test}."""
    if split not in ("train", "test"):
        raise XaiError(f"unknown Fashion-MNIST split {split!r}; choose train or test")
    images, labels = _split(split)
    return images[:, None].float().div_(255.0), labels.clone()


def data_hash() -> str:
    """Identifies the data a checkpoint was trained on (part of its cache key)."""
    return hashlib.sha256("".join(sorted(FASHION_MNIST.files.values())).encode()).hexdigest()[:16]

"""Datasets held whole on the device, batched and augmented there.

``digits``   scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, offline; needs the
             optional ``scikit-learn``), split into train/test stratified by class with a fixed seed.
``cifar10``  / ``cifar100``: the python-pickle releases (``cifar-10-batches-py/``, ``cifar-100-python/``)
             from a local folder. No torchvision, no download.

Images stay raw on the device (uint8 for CIFAR, float for digits); a batch is gathered, augmented
(random crop after zero padding, horizontal flip: ``device_transforms``) and normalised with the training
set's per-channel mean and std, all on the device. The random numbers of the data order and the
augmentation come from one CPU ``torch.Generator`` that the caller owns and checkpoints, so a run is
reproducible and resumable independent of the device. Image folders, too large for this, stream from disk
instead (``folders.py``, ``streaming.py``) behind the same batch interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .device_transforms import normalise, pad_crop_flip
from .distributed import shard_bounds
from .plain_pickle import ForeignPickleError, load_plain_pickle

DATASETS = ("digits", "cifar10", "cifar100")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


class DataError(RuntimeError):
    """A dataset cannot be loaded; the message says what to install or put where."""


@dataclass
class Dataset:
    name: str
    x_train: Tensor  # (N, C, H, W), uint8 or float32, raw values
    y_train: Tensor  # (N,) int64 clean labels
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: list = field(default_factory=list)
    mean: Optional[Tensor] = None  # (C,) float32 of the raw training values
    std: Optional[Tensor] = None

    def __post_init__(self):
        if self.mean is None:
            x = self.x_train.double()
            self.mean = x.mean(dim=(0, 2, 3)).float()
            self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).float()

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    def normalised_train_features(self) -> Tensor:
        """(N, C*H*W) float32 normalised training images (used by instance-dependent noise)."""
        x = (self.x_train.float() - self.mean[None, :, None, None]) / self.std[None, :, None, None]
        return x.reshape(x.shape[0], -1)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise DataError(
            "the 'digits' dataset comes from scikit-learn, which is not installed: "
            "pip install 'saner_kernels[demo]' (or pip install scikit-learn), "
            "or use --dataset cifar10/cifar100 with --data-dir"
        ) from exc
    bunch = _sk_load_digits()
    x = np.asarray(bunch.images, dtype=np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    return Dataset(
        "digits",
        torch.from_numpy(x[tr]),
        torch.from_numpy(y[tr]),
        torch.from_numpy(x[te]),
        torch.from_numpy(y[te]),
        10,
        [str(i) for i in range(10)],
    )


def _unpickle(path: str) -> dict:
    try:
        d = load_plain_pickle(path)
    except ForeignPickleError as exc:
        raise DataError(
            f"refusing to read {path}: it names {exc}, which the CIFAR python batches never hold (only dicts, lists, "
            f"strings and numpy arrays); unpickling it could run code. Replace it with the official release's file"
        ) from exc
    except Exception as exc:  # what a damaged pickle raises: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); extract it again") from exc
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, not a CIFAR batch (a dict); extract it again")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _names(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _find(data_dir: str, sub: str, needed: list[str], dataset: str, url: str) -> str:
    data_dir = os.path.expanduser(data_dir)
    candidates = [os.path.join(data_dir, sub), data_dir]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
            return folder
    folder = candidates[0]
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    raise DataError(
        f"{dataset} not found: expected the python-pickle release in {folder}/ "
        f"(files {', '.join(needed)}; missing {', '.join(missing)}). "
        f"Download {url} and extract it into {data_dir}/ "
        f"(e.g. `mkdir -p {data_dir} && tar xzf {os.path.basename(url)} -C {data_dir}`), "
        f"or point --data-dir at the folder that contains {sub}/. Nothing is downloaded automatically."
    )


def _images(data) -> Tensor:
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(x.copy())


def load_cifar10(data_dir: str) -> Dataset:
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    folder = _find(data_dir, "cifar-10-batches-py", batches + ["test_batch", "batches.meta"], "CIFAR-10", CIFAR10_URL)
    xs, ys = [], []
    for b in batches:
        d = _unpickle(os.path.join(folder, b))
        xs.append(_images(d["data"]))
        ys.append(torch.as_tensor(np.asarray(d["labels"], dtype=np.int64)))
    t = _unpickle(os.path.join(folder, "test_batch"))
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    return Dataset(
        "cifar10",
        torch.cat(xs),
        torch.cat(ys),
        _images(t["data"]),
        torch.as_tensor(np.asarray(t["labels"], dtype=np.int64)),
        10,
        _names(meta.get("label_names", [])),
    )


def load_cifar100(data_dir: str) -> Dataset:
    folder = _find(data_dir, "cifar-100-python", ["train", "test", "meta"], "CIFAR-100", CIFAR100_URL)
    tr = _unpickle(os.path.join(folder, "train"))
    te = _unpickle(os.path.join(folder, "test"))
    meta = _unpickle(os.path.join(folder, "meta"))
    return Dataset(
        "cifar100",
        _images(tr["data"]),
        torch.as_tensor(np.asarray(tr["fine_labels"], dtype=np.int64)),
        _images(te["data"]),
        torch.as_tensor(np.asarray(te["fine_labels"], dtype=np.int64)),
        100,
        _names(meta.get("fine_label_names", [])),
    )


def load_dataset(name: str, data_dir: str = "data", seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits(seed)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "cifar100":
        return load_cifar100(data_dir)
    raise DataError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class DeviceData:
    """The whole train/test set on ``device``; batches gathered, augmented and normalised there."""

    def __init__(
        self,
        ds: Dataset,
        noisy_labels: Tensor,
        device: torch.device,
        augment: bool,
        pad: int = 4,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.x_train = ds.x_train.to(self.device)
        self.x_test = ds.x_test.to(self.device)
        self.y_clean = ds.y_train.to(self.device)
        self.y_noisy = noisy_labels.to(self.device)
        self.y_test = ds.y_test.to(self.device)
        self.is_noisy = self.y_noisy != self.y_clean
        self.has_clean_labels = True  # CIFAR and digits ship their clean labels: memorisation is measurable
        self.mean = ds.mean.to(self.device)[None, :, None, None]
        self.inv_std = (1.0 / ds.std).to(self.device)[None, :, None, None]
        self.augment, self.pad = augment, pad
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.n_train = self.x_train.shape[0]

    def _prepare(self, x: Tensor) -> Tensor:
        return normalise(x, self.mean, self.inv_std, self.memory_format)

    def _augment(self, x: Tensor, gen: torch.Generator, rows=None) -> Tensor:
        return pad_crop_flip(x, gen, self.pad, rows=rows)

    def train_batches(
        self, batch_size: int, gen: torch.Generator, shard: Optional[tuple[int, int]] = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yields (indices, inputs, noisy labels) in a random order drawn from ``gen``.

        ``shard=(rank, world_size)``: this rank's contiguous part of each batch (``distributed.shard_bounds``);
        the order and the augmentation numbers are drawn for the whole batch, as one process draws them."""
        order = torch.randperm(self.n_train, generator=gen).to(self.device)
        for start in range(0, self.n_train, batch_size):
            idx = order[start : start + batch_size]
            rows = None
            if shard is not None:
                lo, hi = shard_bounds(idx.numel(), *shard)
                rows = (lo, hi, idx.numel())
                idx = idx[lo:hi]
            x = self.x_train[idx]
            if self.augment:
                x = self._augment(x, gen, rows)
            yield idx, self._prepare(x), self.y_noisy[idx]

    def eval_batches(
        self, split: str, batch_size: int = 1000, shard: Optional[tuple[int, int]] = None
    ) -> Iterator[tuple[Tensor, slice]]:
        """Yields (inputs, their positions in the split) in order; ``shard``: this rank's contiguous part only."""
        x_all = self.x_train if split == "train" else self.x_test
        lo, hi = shard_bounds(x_all.shape[0], *shard) if shard is not None else (0, x_all.shape[0])
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            yield self._prepare(x_all[start:stop]), slice(start, stop)

    def num_train_batches(self, batch_size: int) -> int:
        return (self.n_train + batch_size - 1) // batch_size

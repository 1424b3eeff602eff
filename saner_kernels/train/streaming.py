"""Image folders streamed from disk: decoded in DataLoader workers, augmented and normalised on the device.

Folder datasets (Mini-WebVision: 66k images at 224 pixels) do not fit in device memory the way CIFAR does
(``data.DeviceData``), so each batch is read when needed:

- worker processes (``--workers``) open, decode (Pillow), convert to RGB and resize each file to a fixed
  square, returning uint8 HWC arrays: the CPU work that would otherwise stall the training loop;
- batches arrive in pinned memory when training on a GPU, so the copy to the device overlaps with compute;
- the random crop and flip run on the device for the whole batch (``device_transforms``), with random
  numbers from the run's own generator, so the workers do no random draws: an epoch is the same with 0 or 8
  workers and after ``--resume``.

The data order is drawn in the main process (``torch.randperm`` on the run's generator) and handed to the
loader as the epoch's list of batches; one set of persistent workers serves training and evaluation.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .data import DataError
from .device_transforms import normalise, pad_crop_flip, random_resized_crop_flip
from .distributed import shard_bounds
from .folders import FolderDataset

RESIZED_CROP_FRAME = 256 / 224  # RandomResizedCrop draws its box from a frame this much larger than the output


def require_pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            "image folders are decoded with Pillow, which is not installed: pip install pillow "
            "(or pip install 'saner_kernels[demo]')"
        ) from exc
    return Image


class DecodedImages(torch.utils.data.Dataset):
    """Files of several splits, each decoded at its own square size; indexed by (split, position)."""

    def __init__(self, splits: dict[str, tuple[list, int]]):
        self.splits = splits

    def __len__(self) -> int:
        return sum(len(files) for files, _ in self.splits.values())

    def __getitem__(self, key: tuple[str, int]) -> Tensor:
        files, size = self.splits[key[0]]
        image = require_pillow()
        with image.open(files[key[1]]) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                # squashed to the square as torchvision's Resize((size, size)) does (Pillow antialiases)
                im = im.resize((size, size), image.BILINEAR)
            return torch.from_numpy(np.array(im, dtype=np.uint8))  # (H, W, 3)


class BatchPlan:
    """The loader's batch sampler: the list of batches of the current pass, set before each pass."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingData:
    """An image-folder dataset with the interface of ``data.DeviceData`` (``train_batches``, ``eval_batches``,
    labels and noise masks on the device), read from disk batch by batch."""

    def __init__(
        self,
        ds: FolderDataset,
        noisy_labels: Tensor,
        device: torch.device,
        augment: bool,
        workers: int = 0,
        channels_last: bool = False,
    ):
        require_pillow()
        self.device = torch.device(device)
        self.preset = ds.preset
        self.image_size = ds.image_size
        self.has_clean_labels = ds.preset.clean_labels
        self.y_clean = ds.y_train.to(self.device)
        self.y_noisy = noisy_labels.to(self.device)
        self.y_test = ds.y_test.to(self.device)
        # without clean labels nothing is known to be noisy; the engine then measures test accuracy only
        self.is_noisy = (
            (self.y_noisy != self.y_clean)
            if self.has_clean_labels
            else torch.zeros_like(self.y_noisy, dtype=torch.bool)
        )
        self.n_train = len(ds.train_files)
        self.n_test = len(ds.test_files)
        self.mean = (255 * torch.tensor(ds.preset.mean)).to(self.device)[None, :, None, None]
        self.inv_std = (1 / (255 * torch.tensor(ds.preset.std))).to(self.device)[None, :, None, None]
        self.augment = augment
        self.pad = ds.preset.pad or ds.image_size // 8
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # the resized crop needs a larger frame to crop from; the other transforms keep the size
        resized = augment and ds.preset.crop == "resized"
        train_size = round(ds.image_size * RESIZED_CROP_FRAME) if resized else ds.image_size
        images = self.images = DecodedImages(
            {
                "train": (ds.train_files, train_size),
                "train_eval": (ds.train_files, ds.image_size),
                "test": (ds.test_files, ds.image_size),
            }
        )
        self.plan = BatchPlan()
        self.pin = self.device.type == "cuda"
        self.loader = DataLoader(
            images, batch_sampler=self.plan, num_workers=workers, pin_memory=self.pin, persistent_workers=workers > 0
        )

    def _batches(self, split: str, chunks: list[list]) -> Iterator[Tensor]:
        """uint8 (B, 3, H, W) batches of ``split``, one per chunk of indices, on the device (a channels-last
        view). An empty chunk (a rank's share of a batch smaller than the world) is an empty batch."""
        self.plan.batches = [[(split, i) for i in chunk] for chunk in chunks if chunk]
        loaded = iter(self.loader)
        size = self.images.splits[split][1]
        for chunk in chunks:
            if not chunk:
                yield torch.empty((0, 3, size, size), dtype=torch.uint8, device=self.device)
                continue
            yield next(loaded).to(self.device, non_blocking=self.pin).permute(0, 3, 1, 2)

    def _augment(self, x: Tensor, gen: torch.Generator, rows=None) -> Tensor:
        if self.preset.crop == "resized":
            return random_resized_crop_flip(x, gen, self.image_size, rows=rows)
        return pad_crop_flip(x, gen, self.pad, rows=rows)

    def train_batches(
        self, batch_size: int, gen: torch.Generator, shard: Optional[tuple[int, int]] = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yields (indices, inputs, noisy labels) in a random order drawn from ``gen``; ``shard``: as
        ``DeviceData.train_batches`` (only this rank's part of each batch is decoded)."""
        order = torch.randperm(self.n_train, generator=gen).tolist()
        bounds = []
        for start in range(0, self.n_train, batch_size):
            total = min(batch_size, self.n_train - start)
            lo, hi = shard_bounds(total, *shard) if shard is not None else (0, total)
            bounds.append((start + lo, start + hi, (lo, hi, total) if shard is not None else None))
        for (lo, hi, rows), x in zip(bounds, self._batches("train", [order[lo:hi] for lo, hi, _ in bounds])):
            idx = torch.tensor(order[lo:hi], dtype=torch.int64).to(self.device)
            if self.augment:
                x = self._augment(x, gen, rows)
            yield idx, normalise(x, self.mean, self.inv_std, self.memory_format), self.y_noisy[idx]

    def eval_batches(
        self, split: str, batch_size: int = 256, shard: Optional[tuple[int, int]] = None
    ) -> Iterator[tuple[Tensor, slice]]:
        n = self.n_train if split == "train" else self.n_test
        name = "train_eval" if split == "train" else "test"
        lo, hi = shard_bounds(n, *shard) if shard is not None else (0, n)
        starts = range(lo, hi, batch_size)
        chunks = [list(range(s, min(s + batch_size, hi))) for s in starts]
        for start, x in zip(starts, self._batches(name, chunks)):
            yield normalise(x, self.mean, self.inv_std, self.memory_format), slice(start, min(start + batch_size, hi))

    def num_train_batches(self, batch_size: int) -> int:
        return (self.n_train + batch_size - 1) // batch_size

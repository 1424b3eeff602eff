"""Augmentation and normalisation of whole batches on the device (GPU or CPU), no torchvision.

Every random number is drawn from the CPU ``torch.Generator`` the caller passes (the run's data generator,
saved in the checkpoint), one draw per batch in a fixed order, so an augmented epoch is the same on any
device, with any number of loader workers, and after ``--resume``.

``pad_crop_flip``            random crop of the zero-padded image + horizontal flip (CIFAR, Animal-10N,
                             Tiny-ImageNet: torchvision's ``RandomCrop(size, padding) + RandomHorizontalFlip``).
``random_resized_crop_flip`` ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip``
                             (Mini-WebVision), as one bilinear ``grid_sample`` for the whole batch.
``normalise``                ``(x - mean) / std`` in raw pixel units, in the requested memory format.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rows(x: Tensor, rows: Optional[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(lo, hi, total): ``x`` holds rows lo..hi of a batch of ``total`` (default: the whole batch)."""
    if rows is None:
        return 0, x.shape[0], x.shape[0]
    lo, hi, total = rows
    if hi - lo != x.shape[0] or not 0 <= lo <= hi <= total:
        raise ValueError(f"rows {rows} do not describe a slice of {x.shape[0]} rows")
    return lo, hi, total


def pad_crop_flip(x: Tensor, gen: torch.Generator, pad: int, rows: Optional[tuple[int, int, int]] = None) -> Tensor:
    """Random crop of the zero-padded (raw-valued) image and a horizontal flip, per sample; float output.

    ``rows=(lo, hi, total)``: ``x`` is rows lo..hi of a batch of ``total`` (a rank's shard of the global batch);
    the numbers are drawn for the whole batch, as one process draws them, and the shard's are applied."""
    lo, hi, total = _rows(x, rows)
    b, _, h, w = x.shape
    device = x.device
    offs = torch.randint(0, 2 * pad + 1, (2, total), generator=gen)[:, lo:hi].to(device)
    flip = (torch.rand(total, generator=gen) < 0.5)[lo:hi].to(device)
    if pad > 0:
        xp = F.pad(x.float(), (pad, pad, pad, pad))
        rows = (offs[0][:, None] + torch.arange(h, device=device))[:, :, None]  # (B, H, 1)
        cols = (offs[1][:, None] + torch.arange(w, device=device))[:, None, :]  # (B, 1, W)
        x = xp[torch.arange(b, device=device)[:, None, None], :, rows, cols]  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def resized_crop_boxes(
    b: int, height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10
) -> Tensor:
    """(B, 4) float64 crop boxes (top, left, height, width) drawn as torchvision's RandomResizedCrop does:
    up to ``attempts`` (area, log-aspect) draws, the first that fits wins, else a centre crop with the
    aspect ratio clamped into ``ratio``. All attempts are drawn at once (same distribution, fixed count)."""
    area = height * width
    u = torch.rand(b, attempts, 2, generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    ws = torch.sqrt(target * aspect).round()
    hs = torch.sqrt(target / aspect).round()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = fits.double().argmax(dim=1)  # index of the first attempt that fits (0 when none does)
    w = ws.gather(1, first[:, None]).squeeze(1)
    h = hs.gather(1, first[:, None]).squeeze(1)
    pos = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    top = torch.floor(pos[:, 0] * (height - h + 1))
    left = torch.floor(pos[:, 1] * (width - w + 1))
    none_fit = ~fits.any(dim=1)
    if none_fit.any():
        in_ratio = width / height
        if in_ratio < ratio[0]:
            fw, fh = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            fw, fh = round(height * ratio[1]), height
        else:
            fw, fh = width, height
        w = torch.where(none_fit, float(fw), w)
        h = torch.where(none_fit, float(fh), h)
        top = torch.where(none_fit, float((height - fh) // 2), top)
        left = torch.where(none_fit, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)


def random_resized_crop_flip(
    x: Tensor,
    gen: torch.Generator,
    size: int,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    rows: Optional[tuple[int, int, int]] = None,
) -> Tensor:
    """Crops a random box of each image and resizes it to ``size`` x ``size`` (bilinear), flipping half of
    them horizontally; float output in the input's raw units. ``rows``: as ``pad_crop_flip``'s."""
    lo, hi, total = _rows(x, rows)
    b, c, h, w = x.shape
    boxes = resized_crop_boxes(total, h, w, gen, scale, ratio)[lo:hi]
    flip = (torch.rand(total, generator=gen) < 0.5)[lo:hi]
    if b == 0:  # a rank's empty share of a batch (the numbers are drawn all the same)
        return x.new_zeros((0, c, size, size), dtype=torch.float32)
    top, left, bh, bw = boxes.unbind(1)
    # affine map from output to input coordinates, normalised to [-1, 1] with align_corners=False: the box's
    # pixel edges [left, left + bw) become [2 left / W - 1, 2 (left + bw) / W - 1]; a negative x scale flips
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -bw / w, bw / w)
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta.float().to(x.device), [b, c, size, size], align_corners=False)
    # no antialiasing: the crop is at most the decoded frame (256 for a 224 output), a mild downscale
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalise(x: Tensor, mean: Tensor, inv_std: Tensor, memory_format=torch.contiguous_format) -> Tensor:
    """``(x - mean) * (1 / std)`` with (1, C, 1, 1) statistics in the raw units of ``x``."""
    x = (x.float() - mean) * inv_std
    return x.contiguous(memory_format=memory_format)

"""Every image of a folder dataset is decoded once before the first epoch, so that a bad file (corrupt, cut
short, empty, not an image) stops the run before training starts, with the list of files, instead of a Pillow
traceback from a loader worker in the middle of an epoch; or, with ``--skip-bad-images``, the run trains without
them and says how many it left out.

The check is the workers' decode made cheap: Pillow's ``draft`` lets a JPEG decode at 1/2 to 1/8 of its size
(the same entropy-coded data is read to its end, so a truncated or damaged stream fails as it would in full),
then the conversion to RGB. It runs in threads (Pillow's decoders release the GIL), and on big folders reports
its progress. Under torchrun each rank checks its share of the files and the lists are gathered.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import torch

from .data import DataError
from .distributed import Dist, shard_bounds
from .folders import FolderDataset
from .streaming import require_pillow

SHOWN = 10  # bad files listed in the error
PROGRESS_EVERY = 20_000  # images between progress lines


def decode_problem(path: str, image_module) -> Optional[str]:
    """Why ``path`` cannot be decoded to RGB, or None when it can."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with image_module.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG only; others decode in full
            im.convert("RGB")
    except Exception as exc:  # Pillow's errors: UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return None


def find_bad_images(
    files: list, threads: int, log: Callable[[str], None] = print, dist: Optional[Dist] = None
) -> list[tuple[str, str]]:
    """(path, problem) of each file of ``files`` that does not decode; under torchrun over all ranks' shares."""
    dist = dist or Dist()
    lo, hi = shard_bounds(len(files), dist.rank, dist.world_size)
    mine = files[lo:hi]
    image = require_pillow()
    t0, bad = time.time(), []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for n, problem in enumerate(pool.map(lambda p: decode_problem(p, image), mine, chunksize=64), 1):
            if problem is not None:
                bad.append((mine[n - 1], problem))
            if n % PROGRESS_EVERY == 0:
                log(f"checking images: {n * dist.world_size}/{len(files)} ({time.time() - t0:.0f}s)")
    return [entry for part in dist.all_gather_object(bad) for entry in part]


def checked_folder_dataset(
    ds: FolderDataset, skip_bad: bool, threads: int, log: Callable[[str], None] = print, dist: Optional[Dist] = None
) -> FolderDataset:
    """``ds`` once every file decodes: a ``DataError`` listing the bad files, or (``skip_bad``) ``ds`` without
    them. A class left without training images is an error either way."""
    files = ds.train_files + ds.test_files
    t0 = time.time()
    bad = find_bad_images(files, threads, log, dist)
    log(f"checked {len(files)} images in {time.time() - t0:.1f}s: {len(bad)} cannot be decoded")
    if bad and not skip_bad:
        listed = "; ".join(f"{path} ({problem})" for path, problem in bad[:SHOWN])
        more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DataError(
            f"{len(bad)} of {len(files)} images of {ds.root} cannot be decoded: {listed}{more}. Replace or delete "
            f"them, or pass --skip-bad-images to train without them"
        )
    if bad:
        drop = {path for path, _ in bad}
        train = [i for i, p in enumerate(ds.train_files) if p not in drop]
        test = [i for i, p in enumerate(ds.test_files) if p not in drop]
        ds = dataclasses.replace(
            ds,
            train_files=[ds.train_files[i] for i in train],
            y_train=ds.y_train[train],
            test_files=[ds.test_files[i] for i in test],
            y_test=ds.y_test[test],
        )
        log(f"--skip-bad-images: left out {len(bad)} images that cannot be decoded (e.g. {bad[0][0]})")
    check_every_class_has_images(ds)
    return ds


def check_every_class_has_images(ds: FolderDataset) -> None:
    """Each class has training images: an empty class would still take labels moved there by symmetric noise."""
    counts = torch.bincount(ds.y_train, minlength=ds.num_classes)
    empty = [ds.classes[c] for c in range(ds.num_classes) if counts[c] == 0]
    if empty:
        raise DataError(
            f"{ds.name}: {len(empty)} classes have no training images in {ds.root}: {', '.join(empty[:SHOWN])}. "
            f"Remove the empty class folders, or add their images"
        )

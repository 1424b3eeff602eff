"""Image-folder loading speed of saner-train: images per second with 0 and 2 DataLoader workers.

    python -m benchmarks.bench_loader                                  # 2,000 64x64 JPEGs, workers 0 and 2
    python -m benchmarks.bench_loader --workers 0,2,4 --images 5000 --model resnet18 --device cuda

Writes a folder of generated JPEGs (``--classes`` class folders of smooth random ``--size`` pixel images, so
they compress and decode like photos) into a temporary directory, then times whole epochs of saner-train's
``StreamingData.train_batches``: decoding in the workers, the (pinned, on a GPU) copy to the device, the random
crop, flip and normalisation on the device. One untimed epoch first starts the workers and warms the page
cache. With ``--model`` it also times SAM training steps (two forward/backward passes, as SANER's) on the same
batches, so that one can see whether loading or the two passes bound an epoch: loading is hidden behind
training only when its images/s is well above the step's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from saner_kernels.train.engine import resolve_device
from saner_kernels.train.folders import load_folder_dataset
from saner_kernels.train.streaming import StreamingData, require_pillow


def write_folder(root: str, images: int, classes: int, size: int, seed: int = 0) -> None:
    """``root/train/<class>/*.jpg`` and a small ``root/val/`` (the layout needs one; it is not timed)."""
    image = require_pillow()
    rng = np.random.RandomState(seed)
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            c = i % classes
            folder = os.path.join(root, split, f"class{c:03d}")
            os.makedirs(folder, exist_ok=True)
            small = np.clip(rng.rand(8, 8, 3) * 160 + 40 * (c % 3), 0, 255).astype(np.uint8)
            image.fromarray(small).resize((size, size), image.BICUBIC).save(
                os.path.join(folder, f"{i:06d}.jpg"), quality=90
            )


def time_loading(ds, device, workers: int, batch_size: int, epochs: int) -> float:
    """Images per second over ``epochs`` timed epochs, after one untimed epoch."""
    data = StreamingData(ds, ds.y_train, device, augment=True, workers=workers)
    gen = torch.Generator().manual_seed(0)
    for _ in data.train_batches(batch_size, gen):
        pass
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for _, x, _ in data.train_batches(batch_size, gen):
            x.sum()  # the batch is materialised on the device
    sync(device)
    return epochs * data.n_train / (time.perf_counter() - t0)


def time_sam_steps(ds, device, model_name: str, batch_size: int, steps: int) -> float:
    """Images per second of SAM steps (two forward/backward passes each) on batches already on the device."""
    from saner_kernels import SAM
    from saner_kernels.train.models import build_model

    data = StreamingData(ds, ds.y_train, device, augment=True, workers=0)
    batches = []
    for _, x, y in data.train_batches(batch_size, torch.Generator().manual_seed(0)):
        batches.append((x, y))
        if len(batches) == steps:
            break
    model = build_model(model_name, ds.num_classes).to(device)
    opt = SAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.1)

    def step(x, y):
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)

    step(*batches[0])  # warm-up: kernels, buckets
    sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync(device)
    return sum(x.shape[0] for x, _ in batches) / (time.perf_counter() - t0)


def rate_text(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="training images in the generated folder")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per worker count")
    ap.add_argument("--model", default=None, help="also time SAM steps of this saner-train model (e.g. resnet18)")
    ap.add_argument("--steps", type=int, default=3, help="timed SAM steps with --model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as root:
        t0 = time.perf_counter()
        write_folder(root, args.images, args.classes, args.size)
        ds = load_folder_dataset("imagefolder", root, image_size=args.size)
        print(
            f"{args.images} JPEGs of {args.size}x{args.size} in {args.classes} classes, written in "
            f"{time.perf_counter() - t0:.1f}s; device {device}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        print(
            f"random crop (padding {args.size // 8}) + flip + normalise on the device, batch {args.batch_size}, "
            f"{args.epochs} timed epochs after one untimed\n"
        )
        rows = [("what", "images/s")]
        for workers in (int(w) for w in args.workers.split(",") if w.strip()):
            rate = time_loading(ds, device, workers, args.batch_size, args.epochs)
            rows.append((f"loading, {workers} workers", rate_text(rate)))
        if args.model:
            rate = time_sam_steps(ds, device, args.model, args.batch_size, args.steps)
            rows.append((f"SAM steps, {args.model} (two passes)", rate_text(rate)))
        width = max(len(r[0]) for r in rows)
        for i, (what, rate) in enumerate(rows):
            print(f"| {what:<{width}} | {rate:>9} |")
            if i == 0:
                print(f"|{'-' * (width + 2)}|{'-' * 11}|")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``saner-train``: noisy-label training with SGD, SAM and SANER (``python -m saner_kernels.train --help``).

Modules: ``config`` (the options, defined once: defaults, help, resume keys; the command line is generated from
them), ``data`` (digits / CIFAR pickles held on the device), ``plain_pickle`` (the CIFAR batches read without
running code), ``cifar_n`` (CIFAR-N human labels), ``folders`` (image-folder layouts: imagefolder, Animal-10N,
Mini-WebVision, Tiny-ImageNet), ``image_check`` (every image decoded once before training), ``streaming`` (image
folders decoded in DataLoader workers), ``device_transforms`` (augmentation on the device), ``noise`` (synthetic
label noise), ``models``, ``engine`` (one run: epochs, metrics, checkpoint/resume), ``resume`` (what --resume finds
in the output folder), ``plan`` (the runs of an invocation: --compare, --sweep, their names), ``layer_groups``
(Group A/B/C fractions per layer kind), ``report`` (JSONL, table, plots), ``checkpoint`` (atomic, weights-only
files, damage reported), ``replica_state`` (each rank's own optimizer state in local mode), ``distributed``
(torchrun: process group, data shards, BatchNorm over the global batch), ``__main__`` (command line, compare mode).
"""

from .engine import Config, Run, lr_at
from .noise import make_noisy_labels

__all__ = ["Config", "Run", "lr_at", "make_noisy_labels", "main"]


def main(argv=None):
    from .__main__ import main as _main

    return _main(argv)

"""``saner-train``: noisy-label training with SGD, SAM and SANER (``python -m saner_kernels.train --help``).

Modules: ``data`` (digits / CIFAR pickles, on-device batches and augmentation), ``noise`` (label noise),
``models``, ``engine`` (one run: epochs, metrics, checkpoint/resume), ``report`` (JSONL, table, plot),
``checkpoint`` (atomic files), ``__main__`` (command line, compare mode).
"""

from .engine import Config, Run, lr_at
from .noise import make_noisy_labels

__all__ = ["Config", "Run", "lr_at", "make_noisy_labels", "main"]


def main(argv=None):
    from .__main__ import main as _main

    return _main(argv)

"""Test selection by machine: GPU tests skip without CUDA; interpreter tests run in their own process.

Triton decides between compiling and interpreting when it is imported, from ``TRITON_INTERPRET``. So
the ``interpreter``-marked tests (Triton kernels on CPU tensors) run only in a pytest process started
with ``TRITON_INTERPRET=1`` (``make test`` starts one after the main run), and that process runs
nothing else. Deselected, not skipped: each test runs in exactly one of the two processes.
"""

import os

import pytest
import torch

INTERPRETER_PROCESS = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        wants_interpreter = "interpreter" in item.keywords
        (keep if wants_interpreter == INTERPRETER_PROCESS else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

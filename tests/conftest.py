"""Test selection by machine and by size: GPU tests skip without CUDA; interpreter tests run in their own
process; the full switch products run only when asked for.

Triton decides between compiling and interpreting when it is imported, from ``TRITON_INTERPRET``. So
the ``interpreter``-marked tests (Triton kernels on CPU tensors) run only in a pytest process started
with ``TRITON_INTERPRET=1`` (``make test`` starts one after the main run), and that process runs
nothing else. Deselected, not skipped: each test runs in exactly one of the two processes.

``exhaustive``-marked items (the combinations of switches beyond a pairwise-covering subset,
``contract_cases.pairwise``) are deselected unless the ``-m`` expression names ``exhaustive``:
``-m exhaustive`` runs them alone (``make test-exhaustive``), ``-m "exhaustive or not exhaustive"`` runs
everything (``make compat``).
"""

import os

import pytest
import torch

INTERPRETER_PROCESS = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    exhaustive_asked = "exhaustive" in (config.option.markexpr or "")
    keep, drop = [], []
    for item in items:
        wanted = ("interpreter" in item.keywords) == INTERPRETER_PROCESS
        wanted = wanted and (exhaustive_asked or "exhaustive" not in item.keywords)
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

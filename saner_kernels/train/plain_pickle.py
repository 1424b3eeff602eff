"""Reading the CIFAR python batches without running code: ``pickle.load`` imports and calls whatever a file
names, so a tampered batch could run its payload. ``load_plain_pickle`` admits only what the format holds:
dicts, lists, strings, bytes and numbers (built by the pickle machine itself, no import) and numpy arrays (the
three names numpy needs to rebuild one). Any other name is refused before it is imported.
"""

from __future__ import annotations

import pickle

import numpy as np

NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"  # numpy 2 moved numpy.core to numpy._core
ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 and the official files
    ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3: encode(text, "latin1")
}


class ForeignPickleError(pickle.UnpicklingError):
    """The pickle names something other than plain data and numpy arrays; nothing of it was imported."""


class PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise ForeignPickleError(f"{module}.{name}")
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            module = NUMPY_CORE + module[module.index(".", len("numpy.")) :]
        return super().find_class(module, name)


def load_plain_pickle(path: str):
    """The object in ``path`` (Python 2 strings as bytes, as the CIFAR batches need); ``ForeignPickleError``
    when it names anything else than ``ALLOWED``."""
    with open(path, "rb") as f:
        return PlainDataUnpickler(f, encoding="bytes").load()

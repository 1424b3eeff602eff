"""Checkpoint files: written atomically, read without running code.

Atomic: write to a temporary file in the same folder, fsync, rename over the target, fsync the folder; a
reader (or a resumed run) sees either the previous complete file or the new complete file, never a torn one.

Safe: a checkpoint holds only tensors (weights, optimizer buffers, RNG states as uint8 tensors) and plain
containers of numbers, strings, None and booleans, so it is read with ``torch.load(weights_only=True)``. A file
that needs anything else to unpickle (an object whose unpickling could run code: a checkpoint folder copied
from elsewhere and altered) is refused with an ``UnsafeCheckpointError`` instead of being executed.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile

import torch


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def save_checkpoint(obj: dict, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs more than tensors and plain containers to load; it is not loaded."""


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line),
            str(exc).strip().splitlines()[0],
        )
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors and plain containers ({detail}). "
            f"saner-train writes only those, so the file was altered or written by something else; unpickling it "
            f"could run arbitrary code. Delete it (or use another --out) to start afresh."
        ) from exc

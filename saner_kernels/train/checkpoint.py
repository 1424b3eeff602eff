"""Checkpoint files: written atomically, read without running code.

Atomic: write to a temporary file in the same folder, fsync, rename over the target, fsync the folder; a
reader (or a resumed run) sees either the previous complete file or the new complete file, never a torn one.

Safe: a checkpoint holds only tensors (weights, optimizer buffers, RNG states as uint8 tensors) and plain
containers of numbers, strings, None and booleans, so it is read with ``torch.load(weights_only=True)``. A file
that needs anything else to unpickle (an object whose unpickling could run code: a checkpoint folder copied
from elsewhere and altered) is refused with an ``UnsafeCheckpointError`` instead of being executed. A file that
is empty, truncated or corrupt, or that is not a saner-train checkpoint, is a ``CheckpointError`` saying which.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile

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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: empty, truncated or corrupt, or not a saner-train checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs more than tensors and plain containers to load; it is not loaded."""


# what every saner-train checkpoint holds (``engine.Run.state_dict``)
REQUIRED_KEYS = ("epoch", "config", "optimizer_name", "model", "optimizer", "rng", "history")
START_AFRESH = "Delete it (or use another --out) to start afresh."


def load_checkpoint(path: str) -> dict:
    """The checkpoint at ``path``, or a ``CheckpointError`` whose message names the file and what is wrong with
    it. torch.save writes a zip archive whose members carry CRC-32 checksums: they are checked before anything
    is unpickled, so a file cut short or damaged is reported as such, never as tampering."""
    check_archive(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line),
            str(exc).strip().splitlines()[0],
        )
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors and plain containers ({detail}). "
            f"saner-train writes only those, so the file was altered or written by something else; unpickling it "
            f"could run arbitrary code. {START_AFRESH}"
        ) from exc
    except Exception as exc:  # an archive whose checksums hold but whose records do not
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}: {first_line}). {START_AFRESH}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in ck] if isinstance(ck, dict) else list(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(
            f"{path} is not a saner-train checkpoint: it lacks {', '.join(missing)} (a model state_dict saved by "
            f"hand, or another program's file). {START_AFRESH}"
        )
    return ck


def check_archive(path: str) -> None:
    """A complete zip archive with intact members, or a ``CheckpointError`` saying what the file is."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): truncated, or never written. {START_AFRESH}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is truncated or corrupt ({size} bytes, not a complete PyTorch archive). {START_AFRESH}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc}). {START_AFRESH}") from exc
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: its member {bad} fails its checksum. {START_AFRESH}")

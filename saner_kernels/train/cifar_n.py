"""CIFAR-N: real human label noise for the CIFAR training sets (Wei et al., ICLR 2022, "Learning with Noisy
Labels Revisited: A Study Using Real-World Human Annotations").

The published files (github.com/UCSC-REAL/cifar-10-100n, folder ``data/``) hold one label per training image,
in the order of the python-pickle release, as a dict of integer arrays:

``CIFAR-10_human.pt``   ``clean_label``, ``aggre_label`` (majority of 3, ~9% noisy), ``random_label1..3``
                        (one annotator each, ~17%), ``worse_label`` (a wrong one if any, ~40%)
``CIFAR-100_human.pt``  ``clean_label``, ``noisy_label`` (~40%)

The SANER paper uses ``worse_label`` for CIFAR-10N and ``noisy_label`` for CIFAR-100N: the defaults here.
The files are read with ``torch.load(weights_only=True)``, allowing only numpy's array reconstruction
(how the arrays are pickled), so a label file cannot run code.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .data import DataError

CIFAR_N_URL = "https://github.com/UCSC-REAL/cifar-10-100n (folder data/)"
CIFAR_N_FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
CIFAR_N_KEYS = {
    "cifar10": ("worse_label", "aggre_label", "random_label1", "random_label2", "random_label3", "clean_label"),
    "cifar100": ("noisy_label", "clean_label"),
}
DEFAULT_KEYS = {"cifar10": "worse_label", "cifar100": "noisy_label"}


def _numpy_array_globals() -> list:
    """What unpickling a numpy array needs, under the names numpy 1.x (numpy.core) and 2.x (numpy._core)
    write; the published files were saved with numpy 1.x."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed = [
        np.ndarray,
        np.dtype,
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Int64DType, ...)
    allowed += [
        type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
    ]
    return allowed


def read_label_file(path: str) -> dict:
    """The file's dict of label arrays, as int64 tensors. Refuses anything but plain data."""
    if not os.path.isfile(path):
        raise DataError(
            f"CIFAR-N label file {path} not found. Download CIFAR-10_human.pt / CIFAR-100_human.pt "
            f"from {CIFAR_N_URL} and give its path with --human-labels. Nothing is downloaded "
            f"automatically."
        )
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path} is not a CIFAR-N label file that can be read safely "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"
        ) from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict of label arrays (as in CIFAR-10_human.pt), got {type(raw).__name__}")
    labels = {}
    for key, value in raw.items():
        arr = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            continue  # not a label set (the published files hold nothing else, but be lenient)
        labels[str(key)] = torch.from_numpy(arr.astype(np.int64))
    return labels


def load_human_labels(
    path: str, dataset: str, key: Optional[str], clean_labels: Tensor, num_classes: int
) -> tuple[Tensor, str]:
    """(noisy labels for the training set, the key used). A file that does not match the dataset (keys,
    length, label range, or a ``clean_label`` that differs from the dataset's labels) is a DataError."""
    if dataset not in CIFAR_N_KEYS:
        raise DataError(f"--noise human reads CIFAR-N label files, defined for cifar10 and cifar100, not {dataset}")
    key = key or DEFAULT_KEYS[dataset]
    labels = read_label_file(path)
    if key not in labels:
        looks_like = [d for d, keys in CIFAR_N_KEYS.items() if set(keys) == set(labels)]
        hint = f"; its keys are those of {CIFAR_N_FILES[looks_like[0]]}" if looks_like else ""
        raise DataError(
            f"{path} has no label set {key!r} (keys: {', '.join(sorted(labels)) or 'none'}){hint}; "
            f"{dataset} files have {', '.join(CIFAR_N_KEYS[dataset])} (choose one with --human-key)"
        )
    noisy = labels[key]
    n = clean_labels.numel()
    if noisy.numel() != n:
        raise DataError(
            f"{path}: {key} has {noisy.numel()} labels but the {dataset} training set here has {n} "
            f"images: the file belongs to another dataset"
        )
    lo, hi = int(noisy.min()), int(noisy.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{path}: {key} has labels in [{lo}, {hi}], outside {dataset}'s {num_classes} classes: "
            f"the file belongs to another dataset"
        )
    if "clean_label" in labels:
        differ = int((labels["clean_label"] != clean_labels.cpu()).sum()) if labels["clean_label"].numel() == n else n
        if differ:
            raise DataError(
                f"{path}: its clean_label differs from the {dataset} training labels at {differ} of {n} "
                f"images: the file belongs to another dataset or another image order"
            )
    return noisy, key

"""Backend registry and choice: one kernel contract (see ``reference.py``), several implementations.

Each backend is a module (or object) exposing ``NAME``, ``DTYPES`` (the storage dtypes it takes),
``is_available(device) -> (ok, reason)`` and the three contract ops ``grad_sq_norm``, ``perturb_``, ``update_``. Backend modules are imported lazily so a
missing Triton or an unbuilt extension never breaks ``import saner_kernels``.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Union

import torch

# name -> module path (relative to this package); order does not imply preference.
_BACKEND_MODULES = {
    "reference": ".reference",
    "triton": ".triton",
    "cpp": ".native",
    "cuda": ".native",
}
BACKEND_NAMES = tuple(_BACKEND_MODULES)


class Availability:
    """Truthy when the backend can run; ``reason`` says why not. Compares equal to a bool."""

    __slots__ = ("ok", "reason")

    def __init__(self, ok: bool, reason: str = ""):
        self.ok, self.reason = bool(ok), reason

    def __bool__(self) -> bool:
        return self.ok

    def __eq__(self, other) -> bool:
        if isinstance(other, Availability):
            return (self.ok, self.reason) == (other.ok, other.reason)
        if isinstance(other, bool):
            return self.ok is other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ok)

    def __repr__(self) -> str:
        return "True" if self.ok else f"False ({self.reason})"


def _load(name: str) -> tuple[Optional[ModuleType], str]:
    try:
        module = importlib.import_module(_BACKEND_MODULES[name], __name__)
    except Exception as exc:  # ImportError, or a broken/stale extension raising at import
        return None, f"cannot import: {exc}"
    if name == "cpp":
        return module.CPP, ""
    if name == "cuda":
        return module.CUDA, ""
    return module, ""


def _default_device(name: str) -> torch.device:
    return torch.device("cuda" if name in ("cuda", "triton") else "cpu")


def backend_status(name: str, device: Union[str, torch.device, None] = None) -> Availability:
    if name not in _BACKEND_MODULES:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {BACKEND_NAMES}")
    module, reason = _load(name)
    if module is None:
        return Availability(False, reason)
    ok, reason = module.is_available(torch.device(device) if device is not None else _default_device(name))
    return Availability(ok, reason)


def available_backends(device: Union[str, torch.device, None] = None) -> dict[str, Availability]:
    """Which backends can run (on ``device``, or on each backend's natural device), and why not.

    >>> available_backends()["reference"]
    True
    """
    return {name: backend_status(name, device) for name in BACKEND_NAMES}


def _auto_order(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("triton", "cuda", "reference")
    if device.type == "cpu":
        return ("cpp", "reference")
    return ("reference",)


def check_backend_name(name: str) -> None:
    if name != "auto" and name not in _BACKEND_MODULES:
        raise ValueError(
            f"unknown backend {name!r}; choose 'auto' or one of {BACKEND_NAMES}. "
            f"available_backends() = {available_backends()}"
        )


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> ModuleType:
    """The backend for ``dtype`` tensors on ``device``; ``auto`` follows DESIGN.md section 2."""
    check_backend_name(name)
    device = torch.device(device)
    if name == "auto":
        for candidate in _auto_order(device):
            if backend_status(candidate, device):
                module = _load(candidate)[0]
                if dtype in module.DTYPES:
                    return module
        raise AssertionError("the reference backend is always available")
    status = backend_status(name, device)
    if not status:
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors: {status.reason}. "
            f"available_backends({device.type!r}) = {available_backends(device)}; "
            f"use backend='auto' to pick the best available one."
        )
    module = _load(name)[0]
    if dtype not in module.DTYPES:
        raise RuntimeError(
            f"backend {name!r} does not take {dtype} parameters (it takes {module.DTYPES}); "
            f"use backend='reference' or 'auto' for them."
        )
    return module

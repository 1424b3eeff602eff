"""Backend registry and choice: one kernel contract (see ``reference.py``), several implementations.

A backend is a module (or object) exposing ``DTYPES`` (the storage dtypes it takes),
``is_available(device) -> (ok, reason)`` and the six contract ops ``grad_sq_norm``, ``perturb_``,
``update_``, ``restore_``, ``gsam_dot_norm`` and ``reweight_``; optionally ``build_problem() -> str``,
non-empty when it is built but stale or broken. Backend modules are imported lazily so that a missing
Triton or an unbuilt extension never breaks ``import saner_kernels``.

The native ops (``native.py``) are one implementation for CPU and CUDA tensors; users name them by the
device they want: ``"cpp"`` (the C++ op on CPU tensors) and ``"cuda_cpp"`` (the CUDA C++ op on CUDA tensors;
Triton runs on CUDA tensors too, under ``"triton"``). The object ``resolve_backend`` returns has ``NAME``: the
name a user passes (``SANER.backends()`` reports it).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Optional, Union

import torch

# name -> (module path relative to this package, the device type the name stands for, or None: its own).
_BACKEND_MODULES = {
    "reference": (".reference", None),
    "triton": (".triton", None),
    "cpp": (".native", "cpu"),
    "cuda_cpp": (".native", "cuda"),
}
BACKEND_NAMES = tuple(_BACKEND_MODULES)
# Old name -> its name now; the old one still works, with a DeprecationWarning.
_RENAMED = {"cuda": "cuda_cpp"}
_CONTRACT = ("DTYPES", "grad_sq_norm", "perturb_", "update_", "restore_", "gsam_dot_norm", "reweight_")


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


class _DeviceName:
    """A multi-device backend under the name of one device type: the contract, ``NAME`` and an
    ``is_available`` that also says no to other devices' tensors."""

    def __init__(self, name: str, backend: ModuleType, device_type: str):
        self.NAME = name
        self.DEVICE_TYPE = device_type
        self._backend = backend
        for attr in _CONTRACT:
            setattr(self, attr, getattr(backend, attr))

    def is_available(self, device: torch.device) -> tuple[bool, str]:
        if device.type != self.DEVICE_TYPE:
            return False, f"the {self.NAME!r} backend runs {self.DEVICE_TYPE} tensors, not {device.type}"
        return self._backend.is_available(device)

    def build_problem(self) -> str:
        return self._backend.build_problem()

    def __repr__(self) -> str:
        return f"<saner_kernels backend {self.NAME!r} ({self._backend.__name__} on {self.DEVICE_TYPE} tensors)>"


_LOADED: dict[str, object] = {}
_WARNED: set[str] = set()


def _load(name: str) -> tuple[Optional[object], str]:
    if name in _LOADED:
        return _LOADED[name], ""
    path, device_type = _BACKEND_MODULES[name]
    try:
        module = importlib.import_module(path, __name__)
    except Exception as exc:  # ImportError, or a backend module raising at import
        return None, f"cannot import: {exc}"
    _LOADED[name] = module if device_type is None else _DeviceName(name, module, device_type)
    return _LOADED[name], ""


def _current_name(name: str) -> str:
    """``name``, or the name a renamed backend has now (with a DeprecationWarning)."""
    if name in _RENAMED:
        warnings.warn(
            f"saner_kernels: backend {name!r} is now called {_RENAMED[name]!r}; the old name will go away",
            DeprecationWarning,
            stacklevel=3,
        )
        return _RENAMED[name]
    return name


def _default_device(name: str) -> torch.device:
    return torch.device("cuda" if name in ("cuda_cpp", "triton") else "cpu")


def backend_status(name: str, device: Union[str, torch.device, None] = None) -> Availability:
    name = _current_name(name)
    if name not in _BACKEND_MODULES:
        raise ValueError(f"unknown backend {name!r}; choose 'auto' or one of {BACKEND_NAMES}")
    backend, reason = _load(name)
    if backend is None:
        return Availability(False, reason)
    ok, reason = backend.is_available(torch.device(device) if device is not None else _default_device(name))
    return Availability(ok, reason)


def available_backends(device: Union[str, torch.device, None] = None) -> dict[str, Availability]:
    """Which backends can run (on ``device``, or on each backend's natural device), and why not.

    >>> available_backends()["reference"]
    True
    """
    return {name: backend_status(name, device) for name in BACKEND_NAMES}


def _auto_order(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("triton", "cuda_cpp", "reference")
    if device.type == "cpu":
        return ("cpp", "reference")
    return ("reference",)


def _warn_unusable_build(name: str) -> None:
    """A backend that is built but stale or broken is never skipped silently: one warning per problem."""
    backend, _ = _load(name)
    problem = backend.build_problem() if backend is not None and hasattr(backend, "build_problem") else ""
    if problem and problem not in _WARNED:
        _WARNED.add(problem)
        warnings.warn(
            f"saner_kernels: backend='auto' falls back from {name!r}: {problem}", RuntimeWarning, stacklevel=3
        )


def check_backend_name(name: str) -> None:
    if name != "auto" and _current_name(name) not in _BACKEND_MODULES:
        raise ValueError(
            f"unknown backend {name!r}; choose 'auto' or one of {BACKEND_NAMES}. "
            f"available_backends() = {available_backends()}"
        )


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The backend for ``dtype`` tensors on ``device``; ``auto`` follows docs/design.md ("Backends")."""
    name = "auto" if name == "auto" else _current_name(name)
    check_backend_name(name)
    device = torch.device(device)
    if name == "auto":
        for candidate in _auto_order(device):
            if backend_status(candidate, device):
                backend = _load(candidate)[0]
                if dtype in backend.DTYPES:
                    return backend
            else:
                _warn_unusable_build(candidate)
        raise AssertionError("the reference backend is always available")
    status = backend_status(name, device)
    if not status:
        raise RuntimeError(
            f"backend {name!r} cannot run on {device.type} tensors: {status.reason}. "
            f"available_backends({device.type!r}) = {available_backends(device)}; "
            f"use backend='auto' to pick the best available one."
        )
    backend = _load(name)[0]
    if dtype not in backend.DTYPES:
        raise RuntimeError(
            f"backend {name!r} does not take {dtype} parameters (it takes {backend.DTYPES}); "
            f"use backend='reference' or 'auto' for them."
        )
    return backend

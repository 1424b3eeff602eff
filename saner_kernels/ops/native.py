"""Native backends: the ``torch.ops.saner_kernels.*`` custom ops built from ``csrc/`` by ``setup.py``.

Two backend objects share the one extension module ``saner_kernels._C``:

- ``CPP``  (``"cpp"``): the vectorized C++ CPU kernels (AVX2 or the build's baseline ISA, OpenMP);
- ``CUDA`` (``"cuda"``): the CUDA C++ kernels, the CUDA fallback when Triton is missing; present only
  when the extension was built against a CUDA build of torch with nvcc available.

The wrappers are thin: same names and Python signatures as ``reference.py`` (the contract), no
checks beyond what the C++ side does. Importing this module never fails because the extension is
missing or stale: ``is_available`` says so, with the command that (re)builds it.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from .._source_hash import source_hash

ABI_VERSION = 1  # must equal kAbiVersion in csrc/common.h
BUILD_HINT = "pip install --no-build-isolation -e .  (or `pip install --no-build-isolation .`)"

_EXT = None
_EXT_ERROR = ""


def _load_extension():
    """Import ``saner_kernels._C`` once; remember why it cannot be used, if it cannot."""
    global _EXT, _EXT_ERROR
    if _EXT is not None or _EXT_ERROR:
        return _EXT
    try:
        from saner_kernels import _C as ext
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "saner_kernels._C"
        if missing:
            _EXT_ERROR = f"the native extension is not built: run `{BUILD_HINT}`"
        else:  # built, but against another torch / toolchain: undefined symbols and the like
            _EXT_ERROR = f"the native extension does not load ({exc}); stale build? rebuild with `{BUILD_HINT}`"
        return None
    problems = []
    if getattr(ext, "ABI_VERSION", None) != ABI_VERSION:
        problems.append(f"op ABI {getattr(ext, 'ABI_VERSION', None)} != {ABI_VERSION}")
    if getattr(ext, "TORCH_VERSION", None) != torch.__version__:
        problems.append(f"built for torch {getattr(ext, 'TORCH_VERSION', None)}, running {torch.__version__}")
    # In a source checkout (editable install) csrc/ sits next to the package: a build older than the
    # sources is stale. An installed wheel has no csrc/ and skips this check.
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
    if os.path.isdir(csrc) and getattr(ext, "SOURCE_HASH", None) != source_hash(csrc):
        problems.append("csrc/ changed since it was built")
    if problems:
        _EXT_ERROR = f"the native extension is stale ({'; '.join(problems)}): rebuild with `{BUILD_HINT}`"
        return None
    _EXT = ext
    return _EXT


def extension():
    """The loaded ``saner_kernels._C`` module; raises with the build command when it is missing/stale."""
    ext = _load_extension()
    if ext is None:
        raise RuntimeError(_EXT_ERROR)
    return ext


def _has_kernel(dispatch_key: str) -> bool:
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"saner_kernels::{op}", dispatch_key)
               for op in ("grad_sq_norm", "perturb_", "update_"))


def _grad_sq_norm(g: Tensor, w: Optional[Tensor] = None) -> Tensor:
    return torch.ops.saner_kernels.grad_sq_norm(g, w)


def _perturb_(w: Tensor, g: Tensor, g_sgd: Tensor, scale: Tensor, e: Optional[Tensor] = None) -> None:
    torch.ops.saner_kernels.perturb_(w, g, g_sgd, scale, e)


def _update_(
    w: Tensor,
    g: Tensor,
    g_sgd: Tensor,
    buf: Optional[Tensor],
    scale: Tensor,
    *,
    e: Optional[Tensor] = None,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    alpha: float,
    eps: float,
    nesterov: bool,
    first_momentum_step: bool,
    stats: Optional[Tensor] = None,
) -> None:
    torch.ops.saner_kernels.update_(
        w, g, g_sgd, buf, scale, e=e, lr=float(lr), momentum=float(momentum), dampening=float(dampening),
        weight_decay=float(weight_decay), alpha=float(alpha), eps=float(eps), nesterov=bool(nesterov),
        first_momentum_step=bool(first_momentum_step), stats=stats)


_load_extension()  # registers torch.ops.saner_kernels.* when the extension is there


class _NativeBackend:
    """One device type's view of the extension, with the contract's module-like interface."""

    grad_sq_norm = staticmethod(_grad_sq_norm)
    perturb_ = staticmethod(_perturb_)
    update_ = staticmethod(_update_)

    def __init__(self, name: str, device_type: str, dtypes: tuple):
        self.NAME = name
        self.DEVICE_TYPE = device_type
        self.DTYPES = dtypes

    def is_available(self, device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != self.DEVICE_TYPE:
            return False, f"the {self.NAME!r} backend runs {self.DEVICE_TYPE} tensors, not {device.type}"
        ext = _load_extension()
        if ext is None:
            return False, _EXT_ERROR
        if self.DEVICE_TYPE == "cpu":
            if not _has_kernel("CPU"):
                return False, f"the extension has no CPU kernels registered: rebuild with `{BUILD_HINT}`"
            return True, ""
        if not ext.WITH_CUDA or not _has_kernel("CUDA"):
            return False, ("the extension was built without its CUDA kernels (CPU-only torch or no nvcc at build "
                           f"time): with a CUDA build of torch and CUDA_HOME set, rebuild with `{BUILD_HINT}`")
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        return True, ""

    def __repr__(self) -> str:
        return f"<saner_kernels native backend {self.NAME!r}>"


CPP = _NativeBackend("cpp", "cpu", (torch.float32, torch.float64, torch.bfloat16, torch.float16))
CUDA = _NativeBackend("cuda", "cuda", (torch.float32, torch.float64, torch.bfloat16, torch.float16))

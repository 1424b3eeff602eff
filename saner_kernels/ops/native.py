"""The native backend: the ``torch.ops.saner_kernels.*`` custom ops built from ``csrc/`` by ``setup.py``.

One implementation for CPU and CUDA tensors: the dispatcher routes each call to the vectorized C++ CPU
kernels (AVX2+FMA or the baseline ISA, OpenMP) or to the CUDA C++ kernels (built only against a CUDA build
of torch, with nvcc at hand). The registry (``ops/__init__.py``) offers it under the names users pass:
``"cpp"`` for CPU tensors, ``"cuda_cpp"`` for CUDA tensors.

The wrappers are thin: the names and Python signatures of ``reference.py`` (the contract, v3), the shared
argument checks (``checks.py``), then the op with ``UpdateHyper``'s and ``AverageHyper``'s fields passed flat
(the C++ front end checks again what reaches it). Importing
this module never fails because the extension is missing, stale or broken: ``is_available`` says why, with
the command that (re)builds it, and ``build_problem`` tells a stale or broken build (which
``backend="auto"`` warns about) from a missing one.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
from torch import Tensor

from .._source_hash import ABI_VERSION, source_hash
from . import checks
from .hyper import AverageHyper, GroupRule, UpdateHyper

BUILD_HINT = "pip install --no-build-isolation -e .  (or `pip install --no-build-isolation .`)"
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _stale_because(ext) -> list[str]:
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
    return problems


def _import_extension():
    """(the extension or None, why it cannot be used, whether it is built but unusable)."""
    try:
        ext = importlib.import_module("saner_kernels._C")  # not `from .. import _C`: that hides a missing module
    except ModuleNotFoundError as exc:
        if exc.name == "saner_kernels._C":
            return None, f"the native extension is not built: run `{BUILD_HINT}`", False
        return None, f"the native extension does not load ({exc}): rebuild with `{BUILD_HINT}`", True
    except Exception as exc:  # built against another torch / toolchain: undefined symbols, bad ELF and the like
        return None, f"the native extension does not load ({exc}); stale build? rebuild with `{BUILD_HINT}`", True
    problems = _stale_because(ext)
    if problems:
        return None, f"the native extension is stale ({'; '.join(problems)}): rebuild with `{BUILD_HINT}`", True
    return ext, "", False


# Imported once, with this module: a current extension registers torch.ops.saner_kernels.* here.
_EXT, _EXT_ERROR, _EXT_UNUSABLE = _import_extension()


def extension():
    """The loaded ``saner_kernels._C`` module; raises with the build command when it is missing or stale."""
    if _EXT is None:
        raise RuntimeError(_EXT_ERROR)
    return _EXT


def build_problem() -> str:
    """Why a built extension cannot be used (stale or broken), with the rebuild command; "" otherwise."""
    return _EXT_ERROR if _EXT_UNUSABLE else ""


def is_available(device) -> tuple[bool, str]:
    device = torch.device(device)
    if _EXT is None:
        return False, _EXT_ERROR
    if device.type == "cpu":
        return True, ""
    if device.type != "cuda":
        return False, f"the native ops have no kernels for {device.type} tensors"
    if not _EXT.WITH_CUDA:
        return False, (
            "the extension was built without its CUDA kernels (CPU-only torch or no nvcc at build time): "
            f"with a CUDA build of torch and CUDA_HOME set, rebuild with `{BUILD_HINT}`"
        )
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    return True, ""


def _average(avg: Optional[Tensor], avg_hyper: Optional[AverageHyper], commit: bool = False) -> dict:
    """The flat schema arguments of a checked average (none without one: the schema's defaults mean "no
    average")."""
    if avg is None:
        return {}
    flat = dict(avg=avg, dir_g=avg_hyper.dir_g, dir_avg=avg_hyper.dir_avg)
    if commit:  # update_ also commits avg <- keep * avg + take * g_sgd
        flat.update(avg_keep=avg_hyper.keep, avg_take=avg_hyper.take)
    return flat


def _rule(rule: Optional[GroupRule]) -> dict:
    """The flat schema arguments of a checked group rule (none without one: the schema's defaults mean "no rule")."""
    if rule is None:
        return {}
    return dict(
        has_rule=True,
        rule_regions=int(rule.regions),
        rule_bound=float(rule.bound),
        rule_in_sam=float(rule.in_sam),
        rule_in_sgd=float(rule.in_sgd),
        rule_out_sam=float(rule.out_sam),
        rule_out_sgd=float(rule.out_sgd),
    )


def grad_sq_norm(
    grad: Tensor,
    w: Optional[Tensor] = None,
    *,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> Tensor:
    checks.norm_args(DTYPES, grad, w, avg, avg_hyper)
    return torch.ops.saner_kernels.grad_sq_norm(grad, w, **_average(avg, avg_hyper))


def perturb_(
    w: Tensor,
    grad: Tensor,
    scale: Tensor,
    skip: Tensor,
    *,
    e: Optional[Tensor] = None,
    g_sgd: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> None:
    checks.perturb_args(DTYPES, w, grad, scale, skip, e, g_sgd, avg, avg_hyper)
    torch.ops.saner_kernels.perturb_(w, grad, scale, skip, e=e, g_sgd=g_sgd, **_average(avg, avg_hyper))


def update_(
    w: Tensor,
    g_sam: Tensor,
    g_sgd: Tensor,
    buf: Optional[Tensor],
    scale: Tensor,
    skip: Tensor,
    hyper: UpdateHyper,
    *,
    e: Optional[Tensor] = None,
    first_momentum_step: bool = False,
    zero_grads: bool = False,
    stats: Optional[Tensor] = None,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
    gsam_k: Optional[Tensor] = None,
    rule: Optional[GroupRule] = None,
) -> None:
    n_valid = checks.update_args(
        DTYPES, w, g_sam, g_sgd, buf, scale, skip, e, stats, n_valid, inv_scale, avg, avg_hyper, gsam_k
    )
    checks.group_rule(rule)
    torch.ops.saner_kernels.update_(
        w,
        g_sam,
        g_sgd,
        buf,
        scale,
        skip,
        lr=hyper.lr,
        momentum=hyper.momentum,
        dampening=hyper.dampening,
        weight_decay=hyper.weight_decay,
        alpha=hyper.alpha,
        eps=hyper.eps,
        nesterov=hyper.nesterov,
        e=e,
        first_momentum_step=first_momentum_step,
        zero_grads=zero_grads,
        stats=stats,
        n_valid=n_valid,
        inv_scale=inv_scale,
        gsam_k=gsam_k,
        gsam_alpha=hyper.gsam_alpha,
        **_average(avg, avg_hyper, commit=True),
        **_rule(rule),
    )


def restore_(
    w: Tensor,
    scale: Tensor,
    skip: Tensor,
    *,
    g_sgd: Optional[Tensor] = None,
    e: Optional[Tensor] = None,
    avg: Optional[Tensor] = None,
    avg_hyper: Optional[AverageHyper] = None,
) -> None:
    checks.restore_args(DTYPES, w, scale, skip, g_sgd, e, avg, avg_hyper)
    torch.ops.saner_kernels.restore_(w, scale, skip, g_sgd=g_sgd, e=e, **_average(avg, avg_hyper))


def gsam_dot_norm(g_sgd: Tensor, g_sam: Tensor, w: Optional[Tensor] = None) -> Tensor:
    checks.dot_norm_args(DTYPES, g_sgd, g_sam, w)
    return torch.ops.saner_kernels.gsam_dot_norm(g_sgd, g_sam, w)


def reweight_(
    g_sam: Tensor,
    g_sgd: Tensor,
    skip: Tensor,
    alpha: float,
    eps: float,
    *,
    stats: Optional[Tensor] = None,
    n_valid: Optional[int] = None,
    inv_scale: Optional[Tensor] = None,
    rule: Optional[GroupRule] = None,
) -> None:
    n_valid = checks.reweight_args(DTYPES, g_sam, g_sgd, skip, stats, n_valid, inv_scale)
    checks.group_rule(rule)
    torch.ops.saner_kernels.reweight_(
        g_sam, g_sgd, skip, alpha=alpha, eps=eps, stats=stats, n_valid=n_valid, inv_scale=inv_scale, **_rule(rule)
    )

"""SANER and SAM as ``torch.optim.Optimizer`` over flat parameter buckets.

The optimizer owns the param groups, the buckets and the per-parameter state; it hands flat tensors
and scalars to a backend chosen per bucket (see ``ops/__init__.py``) and never looks inside kernels.
Semantics: DESIGN.md section 1. Nothing in a step reads a device value on the host: the perturbation
scale and the non-finite skip flag stay on the device.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import required

from . import ops
from .buckets import FlatBucket

_NORM_EPS = 1e-12  # s = rho / (N + 1e-12)

_STEP_API_HELP = (
    "SANER/SAM need two gradients per step. Either\n"
    "  loss_fn(model(x)).backward(); opt.first_step(zero_grad=True)\n"
    "  loss_fn(model(x)).backward(); opt.second_step(zero_grad=True)\n"
    "or, after the first backward, opt.step(closure) with a closure that runs forward and backward "
    "(without zero_grad) and returns the loss, as in davda54/sam."
)


def _check_hyperparameters(group: dict) -> None:
    for name in ("lr", "momentum", "weight_decay", "rho", "eps", "alpha"):
        value = group[name]
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Invalid {name}: {value!r} (must be a non-negative number)")
    if not 0.0 <= group["dampening"] <= 1.0:
        raise ValueError(f"Invalid dampening: {group['dampening']!r} (must be in [0, 1])")
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    for p in group["params"]:
        if not p.is_floating_point():
            raise ValueError(f"SANER optimizes floating-point parameters only, got a {p.dtype} parameter")


class _NonFiniteWatch:
    """Counts steps skipped for a non-finite gradient norm without a host sync in the step.

    On CUDA the count is copied to pinned memory after each step and read at a later step once the
    copy's event has completed; on CPU it is read directly.
    """

    def __init__(self):
        self.count: Optional[Tensor] = None
        self._host: Optional[Tensor] = None
        self._event = None
        self._warned = False

    def add(self, skip: Tensor) -> None:
        if self.count is None:
            self.count = torch.zeros((), dtype=torch.int64, device=skip.device)
        self.count += skip
        if self.count.is_cuda:
            if self._host is None:
                self._host = torch.zeros((), dtype=torch.int64, pin_memory=True)
                self._event = torch.cuda.Event()
            self._host.copy_(self.count, non_blocking=True)
            self._event.record()

    def poll(self) -> None:
        """Warn once if a skip has been seen; never blocks."""
        if self._warned or self.count is None:
            return
        if self.count.is_cuda:
            if torch.cuda.is_current_stream_capturing() or not self._event.query():
                return
            seen = int(self._host)
        else:
            seen = int(self.count)
        if seen:
            self._warned = True
            warnings.warn(
                "SANER skipped a step because the first gradient's norm was not finite (inf/NaN "
                "gradients); weights and momentum were left unchanged. `optimizer.skipped_steps` counts "
                "such steps.", RuntimeWarning, stacklevel=3)

    def total(self) -> int:
        return 0 if self.count is None else int(self.count)


class SANER(torch.optim.Optimizer):
    """Sharpness-Aware Noise-Explicit Reweighting (arXiv 2411.17132) with an SGD-momentum base.

    Two gradients per step: ``first_step()`` after the gradient at ``w`` perturbs the weights to
    ``w + e``; ``second_step()`` after the gradient at ``w + e`` restores ``w``, scales the Group B
    components of the SAM gradient (``0 < g_SAM / g_SGD < 1``) by ``alpha`` and takes an SGD step.
    ``alpha = 1`` is SAM.

    Parameters are packed into flat buckets at the first step: ``p.data`` and ``p.grad`` become
    views into one buffer per (group, device, dtype). ``zero_grad()`` therefore zeroes gradients in
    place whatever ``set_to_none`` says (a ``None`` gradient would break the view).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = required,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        rho: float = 0.1,
        alpha: float = 0.5,
        adaptive: bool = False,
        eps: float = 1e-8,
        *,
        backend: str = "auto",
        track_groups: bool = False,
    ):
        ops.check_backend_name(backend)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, rho=rho, alpha=alpha, adaptive=adaptive, eps=eps)
        self.backend = backend
        self.track_groups = track_groups
        self._buckets: list[list[tuple[FlatBucket, object]]] = []
        self._bucket_keys: list[Optional[tuple]] = []
        self._scales: dict[tuple[int, int], Tensor] = {}  # (group index, bucket index) -> s on device
        self._perturbed = False
        self._nonfinite = _NonFiniteWatch()
        self._norm_finite: Optional[Tensor] = None  # device flag of the current step
        self._group_counts: Optional[tuple] = None  # (per-device A/B/C counts, padding, norm finite)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ torch.optim plumbing
    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        _check_hyperparameters(group)
        super().add_param_group(param_group)
        self._buckets.append([])
        self._bucket_keys.append(None)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # e.g. a torch.optim.SGD checkpoint has no rho/alpha/...
            for name, default in self.defaults.items():
                group.setdefault(name, default)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # Loaded momentum buffers are fresh tensors: copy them into the buckets and re-point the state.
        for buckets in self._buckets:
            for bucket, _ in buckets:
                if all(self._momentum_of(p) is None for p in bucket.params):
                    continue
                for p, view in zip(bucket.params, bucket.momentum()):
                    buf = self._momentum_of(p)
                    if buf is not None:
                        view.copy_(buf)
                        self.state[p]["momentum_buffer"] = view
                    else:
                        view.zero_()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero gradients. Bucketed gradients are zeroed in place whatever ``set_to_none`` says."""
        bucketed = set()
        for buckets in self._buckets:
            for bucket, _ in buckets:
                bucket.zero_grad()
                bucketed.update(id(p) for p in bucket.params)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or id(p) in bucketed:
                    continue
                if set_to_none:
                    p.grad = None
                else:  # torch.optim.Optimizer.zero_grad's in-place branch
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because the first gradient's norm was not finite (reads the device)."""
        return self._nonfinite.total()

    # ------------------------------------------------------------------ buckets
    def _check_grads(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(
                        "SANER does not support sparse gradients; use dense gradients "
                        "(e.g. nn.Embedding(..., sparse=False)) for parameters optimized by SANER/SAM.")

    def _sync_buckets(self) -> None:
        """(Re)build a group's buckets when its set of parameters with gradients changed or a
        parameter's storage was replaced (``model.to()``, ``p.data = ...``)."""
        for gi, group in enumerate(self.param_groups):
            active = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            key = tuple(id(p) for p in active)
            if key == self._bucket_keys[gi] and all(b.params_bound() for b, _ in self._buckets[gi]):
                continue
            self._release_group(gi)
            by_kind: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in active:
                by_kind[(p.device, p.dtype)].append(p)
            buckets = []
            for (device, dtype), params in by_kind.items():
                backend = ops.resolve_backend(self.backend, device, dtype)
                bucket = FlatBucket(params, [self._momentum_of(p) for p in params])
                if bucket.flat_momentum is not None:
                    for p, view in zip(params, bucket.momentum_views):
                        if self._momentum_of(p) is not None:
                            self.state[p]["momentum_buffer"] = view
                buckets.append((bucket, backend))
            self._buckets[gi] = buckets
            self._bucket_keys[gi] = key

    def _momentum_of(self, p: Tensor) -> Optional[Tensor]:
        # self.state is a defaultdict: look without creating empty entries (they would show in state_dict)
        return self.state[p].get("momentum_buffer") if p in self.state else None

    def _release_group(self, gi: int) -> None:
        for bucket, _ in self._buckets[gi]:
            bucket.release()
            for p in bucket.params:
                buf = self._momentum_of(p)
                if buf is not None:
                    self.state[p]["momentum_buffer"] = buf.clone()
        self._buckets[gi] = []
        self._bucket_keys[gi] = None

    def _all_buckets(self):
        for gi, group in enumerate(self.param_groups):
            for bi, (bucket, backend) in enumerate(self._buckets[gi]):
                yield gi, bi, group, bucket, backend

    # ------------------------------------------------------------------ the two steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the weights to ``w + e`` using the gradient at ``w`` (kept as g_sgd)."""
        if self._perturbed:
            raise RuntimeError("first_step() was called twice without second_step() in between. " + _STEP_API_HELP)
        self._check_grads()
        self._nonfinite.poll()
        self._sync_buckets()
        partials = []
        for gi, bi, group, bucket, backend in self._all_buckets():
            bucket.gather_grads()
            partials.append(backend.grad_sq_norm(bucket.flat_grad, bucket.flat_param if group["adaptive"] else None))
        self._scales = {}
        self._norm_finite = None
        if partials:
            home = partials[0].device
            dtype = torch.float64 if any(t.dtype == torch.float64 for t in partials) else torch.float32
            total = torch.stack([t.to(device=home, dtype=dtype, non_blocking=True) for t in partials]).sum()
            norm = total.sqrt()
            finite = torch.isfinite(norm)
            self._norm_finite = finite
            self._nonfinite.add(~finite)
            for gi, bi, group, bucket, backend in self._all_buckets():
                scale = torch.where(finite, group["rho"] / (norm + _NORM_EPS), torch.full_like(norm, float("nan")))
                scale = scale.to(device=bucket.device, non_blocking=True,
                                 dtype=torch.float64 if bucket.dtype == torch.float64 else torch.float32)
                self._scales[gi, bi] = scale
                backend.perturb_(bucket.flat_param, bucket.flat_grad, bucket.flat_g_sgd, scale,
                                 bucket.perturbation() if group["adaptive"] else None)
        self._perturbed = True
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w``, reweight Group B of the gradient at ``w + e`` by alpha, take the SGD step."""
        if not self._perturbed:
            raise RuntimeError("second_step() was called before first_step(). " + _STEP_API_HELP)
        self._check_grads()
        for _, _, _, bucket, _ in self._all_buckets():
            if not bucket.params_bound():
                raise RuntimeError("a parameter's storage was replaced between first_step() and second_step() "
                                   "(model.to(), p.data = ...); do that outside a SANER step.")
        counts: dict[torch.device, Tensor] = {}  # Group A, B, C counters, one per device
        for gi, bi, group, bucket, backend in self._all_buckets():
            bucket.gather_grads()
            stats = None
            if self.track_groups:
                stats = counts.setdefault(bucket.device, torch.zeros(3, dtype=torch.int64, device=bucket.device))
            self._update_bucket(group, bucket, backend, self._scales[gi, bi], stats)
        if self.track_groups:
            padding = sum(bucket.n_pad for bucket in self.buckets())  # counted as Group C by the kernels
            self._group_counts = (list(counts.values()), padding, self._norm_finite)
        self._perturbed = False
        self._opt_called = True  # what a torch LR scheduler checks: second_step() is the optimizer step
        self._nonfinite.poll()
        if zero_grad:
            self.zero_grad()

    def _update_bucket(self, group: dict, bucket: FlatBucket, backend, scale: Tensor, stats: Optional[Tensor]) -> None:
        has_momentum = group["momentum"] != 0
        initialized = [self._momentum_of(p) is not None for p in bucket.params] if has_momentum else []
        kwargs = dict(e=bucket.flat_e if group["adaptive"] else None, lr=group["lr"], momentum=group["momentum"],
                      dampening=group["dampening"], weight_decay=group["weight_decay"], alpha=group["alpha"],
                      eps=group["eps"], nesterov=group["nesterov"], stats=stats)
        buf = None
        if has_momentum:
            bucket.momentum()  # allocate on first use
            buf = bucket.flat_momentum
        if not has_momentum or all(initialized) or (not any(initialized)) or group["dampening"] == 0:
            # With zero dampening a zero buffer makes "later step" equal "first step" bit for bit.
            first = has_momentum and not any(initialized)
            backend.update_(bucket.flat_param, bucket.flat_grad, bucket.flat_g_sgd, buf, scale,
                            first_momentum_step=first, **kwargs)
        else:
            self._update_mixed_momentum(bucket, scale, initialized, kwargs)
        if has_momentum and not all(initialized):
            # A skipped first step must leave the state as it was (no momentum buffer): read the skip
            # flag here. It is the only host sync, and only on a parameter's first momentum step.
            if not bool(torch.isfinite(scale)):
                return
            for p, view in zip(bucket.params, bucket.momentum_views):
                self.state[p]["momentum_buffer"] = view

    def _update_mixed_momentum(self, bucket: FlatBucket, scale: Tensor, initialized: list, kwargs: dict) -> None:
        """Some params take their first momentum step while others do not, with dampening: rare
        (a layer unfrozen mid-training), so run the reference op per parameter slice."""
        from .ops import reference

        flat = dict(w=bucket.flat_param, g=bucket.flat_grad, g_sgd=bucket.flat_g_sgd, buf=bucket.flat_momentum,
                    e=kwargs.pop("e"))
        for offset, numel, first in zip(bucket.offsets, bucket.numels, initialized):
            sl = {k: (v[offset:offset + numel] if v is not None else None) for k, v in flat.items()}
            reference.update_(sl["w"], sl["g"], sl["g_sgd"], sl["buf"], scale, e=sl["e"],
                              first_momentum_step=not first, **kwargs)
        if kwargs["stats"] is not None:  # padding counts as Group C, as in the kernels
            kwargs["stats"][2] += bucket.n_pad

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One full SANER step with a closure (davda54/sam style).

        Call it after the first ``loss.backward()``; the closure re-evaluates the model (forward and
        backward, without zero_grad) at the perturbed weights and returns the loss.
        """
        if closure is None:
            raise RuntimeError("step() needs a closure. " + _STEP_API_HELP)
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        try:
            loss = closure()
        except BaseException:
            self._undo_perturbation()
            raise
        self.second_step()
        return loss

    @torch.no_grad()
    def _undo_perturbation(self) -> None:
        """Restore w after a failed closure, so an exception in it loses nothing."""
        for gi, bi, group, bucket, _ in self._all_buckets():
            scale = self._scales[gi, bi]
            perturbed = torch.isfinite(scale)  # a skipped first step changed nothing
            w = bucket.flat_param.float() if bucket.dtype in (torch.float16, torch.bfloat16) else bucket.flat_param
            if group["adaptive"]:
                e = bucket.flat_e.to(w.dtype)
            else:
                e = bucket.flat_g_sgd.to(w.dtype) * torch.where(perturbed, scale, 0.0)
            bucket.flat_param.copy_(torch.where(perturbed, w - e, w))
        self._perturbed = False

    # ------------------------------------------------------------------ diagnostics
    def group_fractions(self) -> dict[str, float]:
        """Fractions of Groups A, B, C among all gradient components of the last ``second_step``.

        A: ``g_SAM / g_SGD >= 1``; B: ``0 < ratio < 1`` (scaled by alpha); C: ``ratio <= 0``.
        NaN when the last step was skipped. Reads the device (a host sync): call it when you log.
        """
        if not self.track_groups:
            raise RuntimeError("group statistics are off: construct the optimizer with track_groups=True")
        if self._group_counts is None:
            raise RuntimeError("no second_step() has run yet, so there are no group statistics")
        per_device, padding, finite = self._group_counts
        nan = {"A": float("nan"), "B": float("nan"), "C": float("nan")}
        if finite is None or not bool(finite):  # no parameters, or the step was skipped
            return nan
        counts = sum(c.cpu() for c in per_device)
        counts[2] -= padding
        total = int(counts.sum())
        return {name: int(c) / total for name, c in zip("ABC", counts)} if total else nan

    def buckets(self) -> list[FlatBucket]:
        """The flat buckets (built at the first step), for inspection and benchmarks."""
        return [bucket for buckets in self._buckets for bucket, _ in buckets]

    def backends(self) -> list[str]:
        """The backend chosen for each bucket, in ``buckets()`` order."""
        return [backend.NAME for buckets in self._buckets for _, backend in buckets]


class SAM(SANER):
    """Sharpness-Aware Minimization with an SGD-momentum base (davda54/sam style): SANER with alpha = 1."""

    def __init__(self, params: Iterable, lr: float = required, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 5e-4, nesterov: bool = False, rho: float = 0.1, adaptive: bool = False,
                 eps: float = 1e-8, *, backend: str = "auto", track_groups: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, rho=rho, alpha=1.0, adaptive=adaptive, eps=eps, backend=backend,
                         track_groups=track_groups)

    def add_param_group(self, param_group: dict) -> None:
        if param_group.get("alpha", 1.0) != 1.0:
            raise ValueError("SAM has alpha fixed at 1; use SANER for alpha != 1")
        super().add_param_group(param_group)

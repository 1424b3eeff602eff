"""SANER and SAM as ``torch.optim.Optimizer`` over flat parameter buckets.

The optimizer owns the param groups, the buckets and the per-parameter state; it hands flat tensors
and scalars to a backend chosen per bucket (see ``ops/__init__.py``) and never looks inside kernels.
Semantics: docs/design.md, "Semantics". Nothing in a step reads a device value on the host: the perturbation
scale and the non-finite skip flag stay on the device.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import required

from . import ops, variants
from .amp import ScalerBridge, is_g_sgd_group, scaler_inputs
from .buckets import FlatBucket
from .distributed import DDP_MODES, ReplicaSync, check_not_sharded, sum_over_ranks_
from .ops.hyper import UpdateHyper, gsam_coefficient

_NORM_EPS = 1e-12  # s = rho / (N + 1e-12)
_MOMENTUM = "momentum_buffer"  # torch.optim.SGD's state key
# Per-parameter state kept in the buckets' flat buffers: momentum and the variants' gradient averages.
_FLAT_STATE_KEYS = (_MOMENTUM, *variants.AVERAGE_STATE_KEYS.values())

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
    """Counts skipped steps without a host sync in the step.

    On CUDA the count is copied to pinned memory after each step, on the count's own device's current
    stream, and read at a later step once that copy's event has completed; on CPU it is read directly.
    Nothing is recorded while a CUDA graph is being captured: a replay never re-records an event, and
    querying an event last recorded during capture is an error (CUDA error 907).
    """

    def __init__(self):
        self.count: Optional[Tensor] = None
        self._host: Optional[Tensor] = None
        self._event = None
        self._recorded = False
        self._warned = False

    def expect_skips(self) -> None:
        """A GradScaler steps this optimizer: skipped steps are its routine (scale backoff), not worth a warning."""
        self._warned = True

    def add(self, skip: Tensor) -> None:
        if self.count is None:
            self.count = torch.zeros((), dtype=torch.int64, device=skip.device)
        self.count += skip.to(torch.int64)
        if not self.count.is_cuda:
            return
        with torch.cuda.device(self.count.device):
            if torch.cuda.is_current_stream_capturing():
                return
            if self._host is None:
                self._host = torch.zeros((), dtype=torch.int64, pin_memory=True)
                self._event = torch.cuda.Event()
            stream = torch.cuda.current_stream(self.count.device)
            self._host.copy_(self.count, non_blocking=True)
            self._event.record(stream)
            self._recorded = True

    def poll(self) -> None:
        """Warn once if a skip has been seen; never blocks."""
        if self._warned or self.count is None:
            return
        if self.count.is_cuda:
            with torch.cuda.device(self.count.device):
                if not self._recorded or torch.cuda.is_current_stream_capturing() or not self._event.query():
                    return
            seen = int(self._host)
        else:
            seen = int(self.count)
        if seen:
            self._warned = True
            warnings.warn(
                "SANER skipped a step because the first gradient's norm was not finite (inf/NaN "
                "gradients); weights and momentum were left unchanged. `optimizer.skipped_steps` counts "
                "such steps.",
                RuntimeWarning,
                stacklevel=3,
            )

    def total(self) -> int:
        return 0 if self.count is None else int(self.count)


class _StepState:
    """What first_step hands second_step: the per-bucket scales, the step's one skip flag, and whether
    the gradient buffers were swapped."""

    def __init__(self, swapped: bool):
        self.swapped = swapped
        self.scales: dict[tuple[int, int], Tensor] = {}  # (group index, bucket index) -> s on the bucket's device
        self.norm: Optional[Tensor] = None  # the first gradient's (direction's) norm, for GSAM
        self._skip: Optional[Tensor] = None
        self._skip_by_device: dict[torch.device, Tensor] = {}

    @property
    def skip(self) -> Optional[Tensor]:
        """0-dim fp32 on the first bucket's device: nonzero = skip. None when there are no buckets."""
        return self._skip

    @skip.setter
    def skip(self, value: Tensor) -> None:
        self._skip = value
        self._skip_by_device = {}

    def skip_on(self, device: torch.device) -> Tensor:
        """The skip flag on ``device`` (one copy per device, made once per step)."""
        if device not in self._skip_by_device:
            self._skip_by_device[device] = self.skip.to(device, non_blocking=True)
        return self._skip_by_device[device]


def _runs(bucket: FlatBucket, flags: list) -> list[tuple[object, int, int]]:
    """(flag, start, stop) element ranges of the bucket's consecutive parameters sharing a flag; one range
    over the whole bucket (padding included) when all share it."""
    if all(f == flags[0] for f in flags):
        return [(flags[0], 0, bucket.n)]
    return list(_param_runs(bucket, flags))


def _param_runs(bucket: FlatBucket, flags: list) -> Iterable[tuple[object, int, int]]:
    start = 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            lo = bucket.offsets[start]
            yield flags[start], lo, bucket.offsets[i - 1] + bucket.numels[i - 1]
            start = i


def _part(t: Optional[Tensor], lo: int, hi: int) -> Optional[Tensor]:
    return t[lo:hi] if t is not None else None


def _sum_on_first_device(partials: list[Tensor]) -> Tensor:
    """The buckets' partial sums added on the first one's device, in fp64 when any of them is fp64."""
    home = partials[0].device
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in partials) else torch.float32
    return torch.stack([t.to(device=home, dtype=dtype, non_blocking=True) for t in partials]).sum(0)


class SANER(torch.optim.Optimizer):
    """Sharpness-Aware Noise-Explicit Reweighting (arXiv 2411.17132) with an SGD-momentum base.

    Two gradients per step: ``first_step()`` after the gradient at ``w`` perturbs the weights to
    ``w + e``; ``second_step()`` after the gradient at ``w + e`` restores ``w``, scales the Group B
    components of the SAM gradient (``0 < g_SAM / g_SGD < 1``) by ``alpha`` and takes an SGD step.
    ``alpha = 1`` is SAM. ``variant`` picks the member of the SAM family that makes the perturbation
    (``sam``, ``fsam``: Friendly-SAM, ``vasso``: VaSSO, ``gsam``: GSAM; ``saner_kernels/variants.py``);
    ``sigma``/``lmbda`` (fsam), ``theta`` (vasso) and ``gsam_alpha`` (gsam) default to the authors' values.

    Under DistributedDataParallel, ``ddp_mode="global"`` (the default) needs nothing: DDP syncs both
    gradients. ``ddp_mode="local"`` with ``ddp=ddp_model`` perturbs each replica with its own gradient and
    averages the reweighted gradients across ranks (docs/design.md, "Distributed"); the optimizer then
    switches DDP's own gradient sync off.

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
        variant: str = "sam",
        sigma: Optional[float] = None,
        lmbda: Optional[float] = None,
        theta: Optional[float] = None,
        gsam_alpha: Optional[float] = None,
        backend: str = "auto",
        track_groups: bool = False,
        ddp=None,
        ddp_mode: str = "global",
    ):
        ops.check_backend_name(backend)
        if ddp_mode not in DDP_MODES:
            raise ValueError(f"Invalid ddp_mode {ddp_mode!r}: expected 'global' or 'local'")
        if ddp_mode == "local" and ddp is None:
            raise ValueError(
                "ddp_mode='local' needs the DistributedDataParallel model: SANER(ddp_model.parameters(), ..., "
                "ddp=ddp_model, ddp_mode='local')"
            )
        variants.check_arguments(variant, dict(sigma=sigma, lmbda=lmbda, theta=theta, gsam_alpha=gsam_alpha))
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            rho=rho,
            alpha=alpha,
            adaptive=adaptive,
            eps=eps,
            variant=variant,
            sigma=sigma,
            lmbda=lmbda,
            theta=theta,
            gsam_alpha=gsam_alpha,
        )
        self.backend = backend
        self.track_groups = track_groups
        self._buckets: list[list[tuple[FlatBucket, object]]] = []
        self._bucket_keys: list[Optional[tuple]] = []
        self._step: Optional[_StepState] = None  # set by first_step, cleared by second_step
        self._nonfinite = _NonFiniteWatch()
        self._group_counts: Optional[tuple] = None  # (per-device A/B/C counts, the step's skip flag)
        self._scaler_bridge = ScalerBridge()  # g_SGD seen by a GradScaler between the two steps
        self.ddp_mode = ddp_mode
        self._ddp = ddp
        self._replicas: Optional[ReplicaSync] = None
        super().__init__(params, defaults)
        if ddp_mode == "local":  # last: a rejected construction leaves the DDP model as it was
            self._replicas = ReplicaSync(ddp)

    # GradScaler.step(opt) hands this optimizer ``grad_scale`` and ``found_inf`` and calls ``step()``, which
    # completes the step begun by first_step(); the unscaling happens inside the fused update.
    _step_supports_amp_scaling = True

    # ------------------------------------------------------------------ torch.optim plumbing
    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        explicit = set(group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        _check_hyperparameters(group)
        check_not_sharded(group["params"])
        variants.resolve_group(group, explicit)
        if self.ddp_mode == "local" and group["variant"] == "gsam":
            raise ValueError("ddp_mode='local' supports variant 'sam', 'fsam' and 'vasso', not 'gsam'")
        others = [g["variant"] == "gsam" for g in self.param_groups if not is_g_sgd_group(g)]
        if others and any(others) != (group["variant"] == "gsam"):
            raise ValueError(
                "GSAM decomposes the whole second gradient against the whole first one: variant='gsam' must be "
                "the variant of every param group or of none"
            )
        for name in ("variant", *variants.ALL_HYPERPARAMETERS):
            param_group[name] = group[name]
        super().add_param_group(param_group)
        self._buckets.append([])
        self._bucket_keys.append(None)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # e.g. a torch.optim.SGD checkpoint has no rho/alpha/variant...
            if is_g_sgd_group(group):
                continue
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            variants.resolve_group(group, explicit=set())

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # Loaded state tensors are fresh ones: copy them into the buckets and re-point the state.
        for buckets in self._buckets:
            for bucket, _ in buckets:
                for key in _FLAT_STATE_KEYS:
                    loaded = [self._state_of(p, key) for p in bucket.params]
                    if all(t is None for t in loaded) and bucket.flat_state(key) is None:
                        continue
                    for p, view, t in zip(bucket.params, bucket.state_views(key), loaded):
                        if t is not None:
                            view.copy_(t)
                            self.state[p][key] = view
                        else:
                            view.zero_()

    def state_dict(self) -> dict:
        """torch's layout; the g_SGD group a GradScaler sees during a step is not part of it."""
        bridge_group = self._scaler_bridge.group
        if bridge_group is None:
            return super().state_dict()
        self._scaler_bridge.withdraw(self.param_groups)
        try:
            return super().state_dict()
        finally:
            self._scaler_bridge.group = bridge_group
            self.param_groups.append(bridge_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero gradients. Bucketed gradients are zeroed in place whatever ``set_to_none`` says."""
        bucketed = set()
        for buckets in self._buckets:
            for bucket, _ in buckets:
                bucket.zero_grad()
                bucketed.update(id(p) for p in bucket.params)
        for group in self.param_groups:
            if is_g_sgd_group(group):  # g_SGD between the two steps: not the user's gradients
                continue
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
        """Steps skipped for a non-finite gradient: the first one's norm, or an overflow GradScaler found in
        either pass (reads the device)."""
        return self._nonfinite.total()

    # ------------------------------------------------------------------ buckets
    def _check_grads(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(
                        "SANER does not support sparse gradients; use dense gradients "
                        "(e.g. nn.Embedding(..., sparse=False)) for parameters optimized by SANER/SAM."
                    )

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
                bucket = FlatBucket(params, {key: [self._state_of(p, key) for p in params] for key in _FLAT_STATE_KEYS})
                for key in bucket.state_keys():
                    for p, view in zip(params, bucket.state_views(key)):
                        if self._state_of(p, key) is not None:
                            self.state[p][key] = view
                buckets.append((bucket, backend))
            self._buckets[gi] = buckets
            self._bucket_keys[gi] = key

    def _state_of(self, p: Tensor, key: str) -> Optional[Tensor]:
        # self.state is a defaultdict: look without creating empty entries (they would show in state_dict)
        return self.state[p].get(key) if p in self.state else None

    def _release_group(self, gi: int) -> None:
        for bucket, _ in self._buckets[gi]:
            bucket.release()
            for p in bucket.params:
                for key in _FLAT_STATE_KEYS:
                    t = self._state_of(p, key)
                    if t is not None:
                        self.state[p][key] = t.clone()
        self._buckets[gi] = []
        self._bucket_keys[gi] = None

    def _all_buckets(self):
        for gi, group in enumerate(self.param_groups):
            for bi, (bucket, backend) in enumerate(self._buckets[gi]):
                yield gi, bi, group, bucket, backend

    def _started(self, bucket: FlatBucket, key: Optional[str]) -> list[bool]:
        """Per parameter: has the state ``key`` (True for every parameter when there is no key)."""
        return [key is None or self._state_of(p, key) is not None for p in bucket.params]

    def _average_runs(self, group: dict, bucket: FlatBucket) -> list[tuple[int, int, dict]]:
        """(start, stop, the ops' avg/avg_hyper keywords): one range for the bucket, or one per run of
        parameters with and without an average yet (a parameter's first step with one is plain SAM)."""
        key = variants.average_key(group)
        if key is None:
            return [(0, bucket.n, {})]
        bucket.state_views(key)  # allocated zero at the first step
        avg = bucket.flat_state(key)
        return [
            (lo, hi, dict(avg=avg[lo:hi], avg_hyper=variants.average_hyper(group, started)))
            for started, lo, hi in _runs(bucket, self._started(bucket, key))
        ]

    # ------------------------------------------------------------------ the two steps
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the weights to ``w + e`` using the gradient at ``w`` (kept as g_sgd).

        ``zero_grad=True`` swaps each bucket's two gradient buffers instead of copying g (docs/design.md,
        "Gradient buffers"): ``p.grad`` becomes a new, zero tensor; a reference to the old ``p.grad``
        sees g_SGD until the second step.
        """
        if self._step is not None:
            raise RuntimeError("first_step() was called twice without second_step() in between. " + _STEP_API_HELP)
        if self._replicas is not None:
            self._replicas.check_unsynced()
        self._check_grads()
        self._nonfinite.poll()
        self._sync_buckets()
        partials = []
        for _, _, group, bucket, backend in self._all_buckets():
            bucket.gather_grads()
            w = bucket.flat_param if group["adaptive"] else None
            for lo, hi, average in self._average_runs(group, bucket):
                partials.append(backend.grad_sq_norm(bucket.flat_grad[lo:hi], _part(w, lo, hi), **average))
        step = _StepState(swapped=zero_grad)
        if partials:
            norm = _sum_on_first_device(partials).sqrt()
            step.norm = norm
            skip = (~torch.isfinite(norm)).float()
            if self._replicas is not None:  # every rank skips when one does
                self._replicas.agree_skip_(skip)
            step.skip = skip
            finite = skip == 0
            for gi, bi, group, bucket, backend in self._all_buckets():
                scale = torch.where(finite, group["rho"] / (norm + _NORM_EPS), torch.zeros_like(norm))
                scale = scale.to(
                    device=bucket.device,
                    non_blocking=True,
                    dtype=torch.float64 if bucket.dtype == torch.float64 else torch.float32,
                )
                skip = step.skip_on(bucket.device)
                step.scales[gi, bi] = scale
                e = bucket.perturbation() if group["adaptive"] else None
                if zero_grad:
                    bucket.zero_spare()  # a no-op unless the last update left it dirty
                if self._replicas is not None:  # local mode restores w exactly (ranks must stay bit-identical)
                    bucket.weight_copy().copy_(bucket.flat_param)
                g_sgd = None if zero_grad else bucket.flat_g_sgd  # else the buffers are swapped below
                for lo, hi, average in self._average_runs(group, bucket):
                    backend.perturb_(
                        bucket.flat_param[lo:hi],
                        bucket.flat_grad[lo:hi],
                        scale,
                        skip,
                        e=_part(e, lo, hi),
                        g_sgd=_part(g_sgd, lo, hi),
                        **average,
                    )
                if zero_grad:
                    bucket.swap_grad_buffers()
                bucket.spare_is_zero = False  # flat_g_sgd holds g_SGD now
        self._step = step
        if zero_grad:
            self._zero_unbucketed_grads()
        carriers = [bucket.g_sgd_carrier() for bucket in self.buckets()]
        if carriers:
            self._scaler_bridge.expose(self.param_groups, carriers)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w``, reweight Group B of the gradient at ``w + e`` by alpha, take the SGD step."""
        step = self._step
        if step is None:
            raise RuntimeError("second_step() was called before first_step(). " + _STEP_API_HELP)
        self._scaler_bridge.withdraw(self.param_groups)
        if self._replicas is not None:
            self._replicas.check_unsynced()
        self._check_grads()
        for _, _, _, bucket, _ in self._all_buckets():
            if not bucket.params_bound():
                raise RuntimeError(
                    "a parameter's storage was replaced between first_step() and second_step() "
                    "(model.to(), p.data = ...); do that outside a SANER step."
                )
        grad_scale, found_inf = scaler_inputs(self)
        if found_inf is not None and any(variants.average_key(g) for g in self.param_groups):
            self._undo_perturbation()
            raise RuntimeError(
                "variant='fsam' and 'vasso' keep an average of past gradients, which a GradScaler's scaled "
                "gradients (their scale changes between steps) would corrupt: use bf16 autocast (no scaler) "
                "or variant='sam'/'gsam' with fp16. The weights were restored and nothing was stepped."
            )
        if found_inf is not None:  # GradScaler is stepping us: its overflow check covered both passes
            skip = torch.maximum(step.skip, (found_inf.to(step.skip.device) != 0).float())
            if self._replicas is not None:  # each rank's scaler saw only its own gradients
                self._replicas.agree_skip_(skip)
            step.skip = skip
            self._nonfinite.expect_skips()
        if step.skip is not None:
            self._nonfinite.add(step.skip)
        # Scaled gradients are unscaled inside the update by GradScaler's own 1/scale (computed as it does).
        inv_grad_scale = grad_scale.double().reciprocal().float() if grad_scale is not None else None
        counts: dict[torch.device, Tensor] = {}  # Group A, B, C counters, one per device
        for *_, bucket, _ in self._all_buckets():
            bucket.gather_grads()
        gsam_k = self._gsam_coefficient(step, found_inf is not None)
        for gi, bi, group, bucket, backend in self._all_buckets():
            stats = None
            if self.track_groups:
                stats = counts.setdefault(bucket.device, torch.zeros(3, dtype=torch.int64, device=bucket.device))
            scale = step.scales[gi, bi]
            inv_scale = inv_grad_scale.to(bucket.device) if inv_grad_scale is not None else None
            if found_inf is not None:  # after scaler.unscale_(opt) g_SGD is unscaled: recompute e = g_SGD * s
                scale = scale / self._scaler_bridge.applied_factor(bucket.device).to(scale.dtype)
            k = gsam_k.to(device=bucket.device, dtype=scale.dtype) if gsam_k is not None else None
            skip = step.skip_on(bucket.device)
            if self._replicas is not None:
                self._local_update_bucket(group, bucket, backend, skip, stats, zero_grad, inv_scale)
            else:
                self._update_bucket(group, bucket, backend, scale, skip, stats, zero_grad, inv_scale, k)
            if zero_grad:
                bucket.spare_is_zero = True  # the update zeroed both gradient buffers
        if self.track_groups:
            self._group_counts = (list(counts.values()), step.skip)
        self._step = None
        self._opt_called = True  # what a torch LR scheduler checks: second_step() is the optimizer step
        self._nonfinite.poll()
        if zero_grad:
            self._zero_unbucketed_grads()

    def _local_update_bucket(
        self,
        group: dict,
        bucket: FlatBucket,
        backend,
        skip: Tensor,
        stats: Optional[Tensor],
        zero_grads: bool,
        inv_scale: Optional[Tensor],
    ) -> None:
        """Local mode: restore w exactly, reweight this rank's g_SAM against its own g_SGD, average the
        reweighted gradients over the ranks (one all-reduce), then the SGD step on every rank alike (the
        update with alpha 1 and nothing left to restore: scale 0)."""
        bucket.flat_param.copy_(bucket.weight_copy())
        backend.reweight_(
            bucket.flat_grad,
            bucket.flat_g_sgd,
            skip,
            float(group["alpha"]),
            float(group["eps"]),
            stats=stats,
            n_valid=bucket.n_valid,
            inv_scale=inv_scale,
        )
        self._replicas.average_(bucket.flat_grad)
        dtype = torch.float64 if bucket.dtype == torch.float64 else torch.float32
        no_restore = torch.zeros((), dtype=dtype, device=bucket.device)
        stepped = dict(group, alpha=1.0, adaptive=False)
        self._update_bucket(stepped, bucket, backend, no_restore, skip, None, zero_grads, None, None)

    def _gsam_coefficient(self, step: _StepState, scaler_active: bool) -> Optional[Tensor]:
        """GSAM's k (``ops/hyper.py``, ``gsam_coefficient``) from one reduction pass over every bucket, at
        w + e (before the update restores w); None unless the groups run GSAM."""
        buckets = list(self._all_buckets())
        if not buckets or buckets[0][2]["variant"] != "gsam":
            return None
        partials = [
            backend.gsam_dot_norm(bucket.flat_g_sgd, bucket.flat_grad, bucket.flat_param if group["adaptive"] else None)
            for _, _, group, bucket, backend in buckets
        ]
        dot_norm = _sum_on_first_device(partials)
        n1 = step.norm
        if scaler_active:  # n1 was taken on the scaled g_SGD; both gradients now carry the factor applied since
            n1 = n1 * self._scaler_bridge.applied_factor(n1.device).to(n1.dtype)
        return gsam_coefficient(dot_norm, n1)

    def _update_bucket(
        self,
        group: dict,
        bucket: FlatBucket,
        backend,
        scale: Tensor,
        skip: Tensor,
        stats: Optional[Tensor],
        zero_grads: bool,
        inv_scale: Optional[Tensor],
        gsam_k: Optional[Tensor],
    ) -> None:
        hyper = UpdateHyper.from_group(group)
        has_momentum = hyper.momentum != 0
        momentum_started = self._started(bucket, _MOMENTUM if has_momentum else None)
        buf = None
        if has_momentum:
            bucket.state_views(_MOMENTUM)  # allocated zero on first use
            buf = bucket.flat_state(_MOMENTUM)
        avg_key = variants.average_key(group)
        avg_started = self._started(bucket, avg_key)
        avg = None
        if avg_key is not None:
            bucket.state_views(avg_key)
            avg = bucket.flat_state(avg_key)
        e = bucket.flat_e if group["adaptive"] else None
        tensors = (bucket.flat_param, bucket.flat_grad, bucket.flat_g_sgd, buf)
        # Parameters whose first momentum step comes with others' later one need their own update only with
        # dampening (with none, a zero buffer makes "later step" equal "first step" bit for bit): rare (a
        # layer unfrozen mid-training). So do parameters with and without a gradient average yet. Then one
        # update per run of parameters in the same state, through the bucket's own backend; a run's update
        # leaves out the bucket's padding (it is zero and stays zero).
        momentum_split = has_momentum and hyper.dampening != 0 and any(momentum_started)
        flags = [(m if momentum_split else None, a) for m, a in zip(momentum_started, avg_started)]
        runs = _runs(bucket, flags)
        for (m_started, a_started), lo, hi in runs:
            first_momentum_step = has_momentum and (not m_started if momentum_split else not any(momentum_started))
            backend.update_(
                *[_part(t, lo, hi) for t in tensors],
                scale,
                skip,
                hyper,
                e=_part(e, lo, hi),
                first_momentum_step=first_momentum_step,
                zero_grads=zero_grads,
                stats=stats,
                n_valid=bucket.n_valid if len(runs) == 1 else hi - lo,
                inv_scale=inv_scale,
                **({} if gsam_k is None else dict(gsam_k=gsam_k)),
                **({} if avg is None else dict(avg=avg[lo:hi], avg_hyper=variants.average_hyper(group, a_started))),
            )
        if not all(momentum_started) or not all(avg_started):
            # A skipped first step must leave the state as it was (no momentum buffer, no average): read the
            # skip flag here. It is the only host sync, and only on a parameter's first step with such state.
            if bool(skip):
                return
            for key in (_MOMENTUM if has_momentum else None, avg_key):
                if key is not None:
                    for p, view in zip(bucket.params, bucket.state_views(key)):
                        self.state[p][key] = view

    def _zero_unbucketed_grads(self) -> None:
        """Zero-size parameters are not bucketed; zero_grad=True zeroes their grads too."""
        bucketed = {id(p) for bucket in self.buckets() for p in bucket.params}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) not in bucketed:
                    p.grad.zero_()

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One full SANER step with a closure (davda54/sam style), or the second half of a step.

        With a closure: call it after the first ``loss.backward()``; the closure re-evaluates the model
        (forward and backward, without zero_grad) at the perturbed weights and returns the loss.
        Without one, after ``first_step()``: ``second_step(zero_grad=True)``. This is what
        ``torch.amp.GradScaler.step(opt)`` calls, handing over its scale and ``found_inf``.
        """
        if closure is None:
            if self._step is not None:  # GradScaler.step(opt), or a plain step() after first_step()
                self.second_step(zero_grad=True)
                return None
            raise RuntimeError("step() needs a closure, or a first_step() before it. " + _STEP_API_HELP)
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
        """Restore w (and g_SGD in ``p.grad``) after a failed closure, so an exception in it loses nothing."""
        step = self._step
        self._scaler_bridge.withdraw(self.param_groups)
        for gi, bi, group, bucket, backend in self._all_buckets():
            if self._replicas is not None:  # local mode kept an exact copy
                bucket.flat_param.copy_(bucket.weight_copy())
            else:
                e = bucket.flat_e if group["adaptive"] else None
                for lo, hi, average in self._average_runs(group, bucket):
                    backend.restore_(
                        bucket.flat_param[lo:hi],
                        step.scales[gi, bi],
                        step.skip_on(bucket.device),
                        g_sgd=bucket.flat_g_sgd[lo:hi],
                        e=_part(e, lo, hi),
                        **average,
                    )
            if step.swapped:
                bucket.swap_grad_buffers()  # p.grad holds g_SGD again; the other buffer has the closure's partial grads
                bucket.spare_is_zero = False
        self._step = None

    # ------------------------------------------------------------------ diagnostics
    def group_fractions(self, all_ranks: bool = False) -> dict[str, float]:
        """Fractions of Groups A, B, C among all gradient components of the last ``second_step``.

        A: ``g_SAM / g_SGD >= 1``; B: ``0 < ratio < 1`` (scaled by alpha); C: ``ratio <= 0``.
        NaN when the last step was skipped. Reads the device (a host sync): call it when you log.
        ``all_ranks``: over every rank's components (an all-reduce over the DDP model's process group, or
        the default group; every rank must call it). In global mode the ranks see the same gradients, so
        the fractions are those of one rank.
        """
        if not self.track_groups:
            raise RuntimeError("group statistics are off: construct the optimizer with track_groups=True")
        if self._group_counts is None:
            raise RuntimeError("no second_step() has run yet, so there are no group statistics")
        per_device, skip = self._group_counts
        nan = {"A": float("nan"), "B": float("nan"), "C": float("nan")}
        if skip is None or bool(skip):  # no parameters, or the step was skipped
            return nan
        counts = sum(c.to(per_device[0].device) for c in per_device)
        if all_ranks:
            sum_over_ranks_(counts, self._ddp.process_group if self._ddp is not None else None)
        counts = counts.cpu()
        total = int(counts.sum())
        return {name: int(c) / total for name, c in zip("ABC", counts)} if total else nan

    def buckets(self) -> list[FlatBucket]:
        """The flat buckets (built at the first step), for inspection and benchmarks."""
        return [bucket for buckets in self._buckets for bucket, _ in buckets]

    def backends(self) -> list[str]:
        """The backend chosen for each bucket, in ``buckets()`` order."""
        return [backend.NAME for buckets in self._buckets for _, backend in buckets]


class SAM(SANER):
    """Sharpness-Aware Minimization with an SGD-momentum base (davda54/sam style): SANER with alpha = 1.

    ``variant`` as for SANER: ``fsam`` is Friendly-SAM, ``vasso`` VaSSO, ``gsam`` GSAM, each as its paper has it.
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
        adaptive: bool = False,
        eps: float = 1e-8,
        *,
        variant: str = "sam",
        sigma: Optional[float] = None,
        lmbda: Optional[float] = None,
        theta: Optional[float] = None,
        gsam_alpha: Optional[float] = None,
        backend: str = "auto",
        track_groups: bool = False,
        ddp=None,
        ddp_mode: str = "global",
    ):
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            rho=rho,
            alpha=1.0,
            adaptive=adaptive,
            eps=eps,
            variant=variant,
            sigma=sigma,
            lmbda=lmbda,
            theta=theta,
            gsam_alpha=gsam_alpha,
            backend=backend,
            track_groups=track_groups,
            ddp=ddp,
            ddp_mode=ddp_mode,
        )

    def add_param_group(self, param_group: dict) -> None:
        if param_group.get("alpha", 1.0) != 1.0:
            raise ValueError("SAM has alpha fixed at 1; use SANER for alpha != 1")
        super().add_param_group(param_group)

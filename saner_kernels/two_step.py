"""The two-step algorithm as functions over an explicit step state (docs/design.md, "Semantics").

``first_step`` perturbs every bucket to ``w + e`` and returns a ``StepState``; ``second_step`` takes it,
restores ``w``, reweights Group B and takes the base optimizer's update; ``undo_perturbation`` restores ``w``
when the step cannot complete. The optimizer class (``optimizer.py``) owns the torch.optim surface and the
collaborators (buckets, GradScaler bridge, replica sync, skip counter) and calls these.

The update is one seam, ``update_bucket``: today the fused SGD-momentum update (restore, reweight, weight
decay, momentum and the weight update in one pass). A base optimizer other than SGD plugs in there as
"restore + reweight into ``p.grad``, then the base optimizer's own step".

Nothing here reads a device value on the host, except once on a parameter's first step with new state
(``commit_first_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from . import group_rules, gsam, variants
from .amp import Unscaling
from .bucket_set import MOMENTUM, BucketSet, Entry, part, runs, sum_on_first_device
from .ops.hyper import UpdateHyper
from .replicas import ReplicaSync

NORM_EPS = 1e-12  # s = rho / (N + 1e-12)


@dataclass
class StepState:
    """What ``first_step`` hands ``second_step``: the buckets it perturbed (in order), their scales
    ``s = rho / (N + 1e-12)``, the first gradient's (direction's) norm, the step's one skip flag and whether
    the gradient buffers were swapped."""

    entries: list[Entry]
    swapped: bool
    scales: list[Tensor] = field(default_factory=list)
    norm: Optional[Tensor] = None
    skip: Optional[Tensor] = None  # 0-dim fp32 on the first bucket's device: nonzero = skip; None without buckets
    clip_coef: Optional[Tensor] = None  # set by the optimizer's clip_grad_norm_: scales the update, not the mask
    _skip_by_device: dict = field(default_factory=dict)

    def set_skip(self, skip: Tensor) -> None:
        self.skip = skip
        self._skip_by_device = {}

    def skip_on(self, device: torch.device) -> Tensor:
        """The skip flag on ``device`` (one copy per device, made once per step)."""
        if device not in self._skip_by_device:
            self._skip_by_device[device] = self.skip.to(device, non_blocking=True)
        return self._skip_by_device[device]


class PendingStep:
    """The step ``first_step`` began, in an object of its own: a wrapper that copies the optimizer's
    ``__dict__`` (PyTorch Lightning's ``LightningOptimizer``) shares it with the optimizer."""

    def __init__(self):
        self.state: Optional[StepState] = None


def _compute_dtype(entry: Entry) -> torch.dtype:
    return torch.float64 if entry.bucket.dtype == torch.float64 else torch.float32


def first_step(
    entries: list[Entry], buckets: BucketSet, *, zero_grad: bool, replicas: Optional[ReplicaSync]
) -> StepState:
    """Perturb every bucket to ``w + e`` with the gradient at ``w`` (kept as g_SGD). ``zero_grad`` swaps each
    bucket's two gradient buffers instead of copying g (docs/design.md, "Gradient buffers")."""
    partials = []
    for entry in entries:
        entry.bucket.gather_grads()
        w = entry.bucket.flat_param if entry.group["adaptive"] else None
        for run, average in buckets.average_runs(entry):
            partials.append(entry.backend.grad_sq_norm(part(entry.bucket.flat_grad, run), part(w, run), **average))
    step = StepState(entries, swapped=zero_grad)
    if not partials:
        return step
    norm = sum_on_first_device(partials).sqrt()
    step.norm = norm
    skip = (~torch.isfinite(norm)).float()
    if replicas is not None:  # every rank skips when one does
        replicas.agree_skip_(skip)
    step.set_skip(skip)
    finite = skip == 0
    for entry in entries:
        group, bucket, backend = entry
        scale = torch.where(finite, group["rho"] / (norm + NORM_EPS), torch.zeros_like(norm))
        scale = scale.to(device=bucket.device, non_blocking=True, dtype=_compute_dtype(entry))
        step.scales.append(scale)
        e = bucket.perturbation() if group["adaptive"] else None
        if zero_grad:
            bucket.zero_spare()  # a no-op unless the last update left it dirty
        if replicas is not None:  # local mode restores w exactly (ranks must stay bit-identical)
            bucket.weight_copy().copy_(bucket.flat_param)
        g_sgd = None if zero_grad else bucket.flat_g_sgd  # else the buffers are swapped below
        for run, average in buckets.average_runs(entry):
            backend.perturb_(
                part(bucket.flat_param, run),
                part(bucket.flat_grad, run),
                scale,
                step.skip_on(bucket.device),
                e=part(e, run),
                g_sgd=part(g_sgd, run),
                **average,
            )
        if zero_grad:
            bucket.swap_grad_buffers()
        bucket.spare_is_zero = False  # flat_g_sgd holds g_SGD now
    return step


def fold_scaler_skip(step: StepState, scaling: Optional[Unscaling], replicas: Optional[ReplicaSync]) -> None:
    """A GradScaler's overflow (found in either pass: it checks g_SGD too) skips the step."""
    if scaling is None or step.skip is None:
        return
    skip = torch.maximum(step.skip, (scaling.found_inf.to(step.skip.device) != 0).float())
    if replicas is not None:  # each rank's scaler saw only its own gradients
        replicas.agree_skip_(skip)
    step.set_skip(skip)


def second_step(
    step: StepState,
    buckets: BucketSet,
    *,
    zero_grad: bool,
    scaling: Optional[Unscaling],
    replicas: Optional[ReplicaSync],
    count_groups: bool,
    fused_sgd: bool,
) -> list[Tensor]:
    """Restore ``w``, reweight Group B of the gradient at ``w + e`` and update every bucket (``fused_sgd``), or
    leave the reweighted gradient in ``p.grad`` for the base optimizer's own step. Returns the Group A, B, C
    counters, one per device (empty unless ``count_groups``)."""
    counts: dict[torch.device, Tensor] = {}
    for entry in step.entries:
        entry.bucket.gather_grads()
    k = gsam.gsam_k(step.entries, step.norm, scaling)
    for entry, scale in zip(step.entries, step.scales):
        bucket = entry.bucket
        stats = None
        if count_groups:
            stats = counts.setdefault(bucket.device, torch.zeros(3, dtype=torch.int64, device=bucket.device))
        inv_scale = update_factor(step, scaling, bucket.device)
        if scaling is not None:  # after scaler.unscale_(opt) g_SGD is unscaled: recompute e = g_SGD * s
            scale = scale / scaling.applied_factor(bucket.device).to(scale.dtype)
        skip = step.skip_on(bucket.device)
        gsam_k = k.to(device=bucket.device, dtype=scale.dtype) if k is not None else None
        if replicas is not None:
            _local_update(
                entry,
                buckets,
                replicas,
                skip=skip,
                stats=stats,
                zero_grads=zero_grad,
                inv_scale=inv_scale,
                fused_sgd=fused_sgd,
            )
        else:
            inputs = dict(scale=scale, skip=skip, stats=stats, inv_scale=inv_scale, gsam_k=gsam_k)
            if fused_sgd:
                update_bucket(entry, buckets, zero_grads=zero_grad, **inputs)
            else:
                reweight_into_grad(entry, buckets, **inputs)
        if zero_grad and fused_sgd:
            bucket.spare_is_zero = True  # the update zeroed both gradient buffers
    return list(counts.values())


def update_factor(step: StepState, scaling: Optional[Unscaling], device: torch.device) -> Optional[Tensor]:
    """What the update multiplies both gradients by: GradScaler's ``1/scale`` and the clip coefficient. A
    factor common to g_SAM and g_SGD leaves their ratio, so the Group B mask, unchanged (docs/design.md,
    "Gradient clipping")."""
    inv_scale = scaling.inv_scale_on(device) if scaling is not None else None
    if step.clip_coef is None:
        return inv_scale
    clip = step.clip_coef.to(device=device, dtype=torch.float32)
    return clip if inv_scale is None else inv_scale * clip


def update_bucket(
    entry: Entry,
    buckets: BucketSet,
    *,
    scale: Tensor,
    skip: Tensor,
    stats: Optional[Tensor],
    zero_grads: bool,
    inv_scale: Optional[Tensor],
    gsam_k: Optional[Tensor],
    direction: Optional[Tensor] = None,
) -> None:
    """The fused SGD-momentum update of one bucket: restore, reweight, weight decay, momentum, step. With
    ``direction`` (a flat buffer), the update in its "direction" setting instead: ``w`` restored and the
    reweighted gradient written there (``reweight_into_grad``)."""
    group, bucket, backend = entry
    hyper = UpdateHyper.from_group(group) if direction is None else _direction_hyper(group)
    has_momentum = direction is None and hyper.momentum != 0
    momentum_key = MOMENTUM if has_momentum else None
    momentum_started = buckets.started(bucket, momentum_key)
    buf = buckets.flat_state(bucket, MOMENTUM) if has_momentum else direction
    avg_key = variants.average_key(group)
    avg_started = buckets.started(bucket, avg_key)
    avg = buckets.flat_state(bucket, avg_key) if avg_key is not None else None
    e = bucket.flat_e if group["adaptive"] else None
    # Parameters whose first momentum step comes with others' later one need their own update only with
    # dampening (with none, a zero buffer makes "later step" equal "first step" bit for bit): rare (a layer
    # unfrozen mid-training). So do parameters with and without a gradient average yet. Then one update per
    # run of parameters in the same state; a run's update leaves out the bucket's padding (zero, stays zero).
    momentum_split = has_momentum and hyper.dampening != 0 and any(momentum_started)
    flags = [(m if momentum_split else None, a) for m, a in zip(momentum_started, avg_started)]
    bucket_runs = runs(bucket, flags)
    for run in bucket_runs:
        m_started, a_started = run.flag
        first_momentum_step = direction is not None or (
            has_momentum and (not m_started if momentum_split else not any(momentum_started))
        )
        optional = _optional_switches(group, gsam_k)
        if avg is not None:
            optional.update(avg=part(avg, run), avg_hyper=variants.average_hyper(group, a_started))
        backend.update_(
            part(bucket.flat_param, run),
            part(bucket.flat_grad, run),
            part(bucket.flat_g_sgd, run),
            part(buf, run),
            scale,
            skip,
            hyper,
            e=part(e, run),
            first_momentum_step=first_momentum_step,
            zero_grads=zero_grads,
            stats=stats,
            n_valid=bucket.n_valid if len(bucket_runs) == 1 else run.hi - run.lo,
            inv_scale=inv_scale,
            **optional,
        )
    if not all(momentum_started) or not all(avg_started):
        commit_first_state(buckets, bucket, skip, (momentum_key, avg_key))


def reweight_into_grad(
    entry: Entry,
    buckets: BucketSet,
    *,
    scale: Tensor,
    skip: Tensor,
    stats: Optional[Tensor],
    inv_scale: Optional[Tensor],
    gsam_k: Optional[Tensor],
) -> None:
    """For a base optimizer other than SGD: restore ``w`` and leave the reweighted (unscaled, GSAM-decomposed)
    gradient in ``p.grad``; the averages are committed as by the fused update. This is the contract's
    ``update_`` with the "direction" hyperparameters (docs/design.md, "Base optimizers"): lr 0, momentum 1
    and a fresh buffer make the buffer the direction ``d`` and leave ``w`` restored. The buffer is a scratch
    one, copied into the gradient buffer (kernels take their tensors as non-aliasing)."""
    bucket = entry.bucket
    direction = bucket.scratch()
    inputs = dict(scale=scale, skip=skip, stats=stats, inv_scale=inv_scale, gsam_k=gsam_k)
    update_bucket(entry, buckets, zero_grads=False, direction=direction, **inputs)
    # In place (no temporary the size of the bucket); a skipped step leaves p.grad as it was.
    torch.where(skip != 0, bucket.flat_grad, direction, out=bucket.flat_grad)


def _optional_switches(group: dict, gsam_k: Optional[Tensor]) -> dict:
    """The update's optional switches a group turns on: GSAM's coefficient, a group rule other than SANER's."""
    optional = {}
    if gsam_k is not None:
        optional["gsam_k"] = gsam_k
    rule = group_rules.rule_of(group)
    if rule is not None:
        optional["rule"] = rule
    return optional


def _direction_hyper(group: dict) -> UpdateHyper:
    """``update_``'s hyperparameters that make its momentum buffer the reweighted direction and its weight
    update a pure restore (lr 0: ``w + e - e - 0 * d``)."""
    gsam_alpha = float(group["gsam_alpha"]) if group["variant"] == "gsam" else 0.0
    return UpdateHyper(
        lr=0.0, momentum=1.0, alpha=float(group["alpha"]), eps=float(group["ratio_eps"]), gsam_alpha=gsam_alpha
    )


def commit_first_state(buckets: BucketSet, bucket, skip: Tensor, keys: tuple) -> None:
    """A parameter's first step with a state key gives it that state, unless the step was skipped (a skipped
    step leaves the state as it was: no momentum buffer, no average). Reading the skip flag is the only host
    sync, and only on such a first step."""
    if not bool(skip):
        buckets.commit_state(bucket, keys)


def _local_update(
    entry: Entry,
    buckets: BucketSet,
    replicas: ReplicaSync,
    *,
    skip: Tensor,
    stats: Optional[Tensor],
    zero_grads: bool,
    inv_scale: Optional[Tensor],
    fused_sgd: bool,
) -> None:
    """Local mode: restore w exactly, reweight this rank's g_SAM against its own g_SGD, average the reweighted
    gradients over the ranks (one all-reduce), then the SGD step on every rank alike (the update with alpha 1
    and nothing left to restore: scale 0), or leave the average in ``p.grad`` for another base optimizer."""
    group, bucket, backend = entry
    bucket.flat_param.copy_(bucket.weight_copy())
    rule = group_rules.rule_of(group)
    backend.reweight_(
        bucket.flat_grad,
        bucket.flat_g_sgd,
        skip,
        float(group["alpha"]),
        float(group["ratio_eps"]),
        stats=stats,
        n_valid=bucket.n_valid,
        inv_scale=inv_scale,
        **({} if rule is None else dict(rule=rule)),
    )
    replicas.average_(bucket.flat_grad)
    if not fused_sgd:
        return
    no_restore = torch.zeros((), dtype=_compute_dtype(entry), device=bucket.device)
    reweighted = Entry(dict(group, alpha=1.0, adaptive=False, rule="saner", group="B"), bucket, backend)
    update_bucket(
        reweighted,
        buckets,
        scale=no_restore,
        skip=skip,
        stats=None,
        zero_grads=zero_grads,
        inv_scale=None,
        gsam_k=None,
    )


def undo_perturbation(step: StepState, buckets: BucketSet, replicas: Optional[ReplicaSync]) -> None:
    """Restore w (and g_SGD in ``p.grad``) when the step cannot complete, through each bucket's own backend
    (``restore_``: ``w + e - e``, exactly as the update would restore it)."""
    for entry, scale in zip(step.entries, step.scales):
        group, bucket, backend = entry
        if replicas is not None:  # local mode kept an exact copy
            bucket.flat_param.copy_(bucket.weight_copy())
        else:
            e = bucket.flat_e if group["adaptive"] else None
            for run, average in buckets.average_runs(entry):
                backend.restore_(
                    part(bucket.flat_param, run),
                    scale,
                    step.skip_on(bucket.device),
                    g_sgd=part(bucket.flat_g_sgd, run),
                    e=part(e, run),
                    **average,
                )
        if step.swapped:
            bucket.swap_grad_buffers()  # p.grad holds g_SGD again; the other buffer has the closure's partial grads
            bucket.spare_is_zero = False

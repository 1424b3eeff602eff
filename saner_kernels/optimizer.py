"""SANER and SAM as ``torch.optim.Optimizer``: the torch.optim surface only.

The class owns the param groups, the per-parameter state and its collaborators: the flat buckets
(``bucket_set.py``), the two-step algorithm (``two_step.py``), the GradScaler bridge (``amp.py``), the
replica sync of DDP local mode (``replicas.py``) and the skip counter (``skip_counter.py``). Semantics:
docs/design.md, "Semantics". Nothing in a step reads a device value on the host.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional, Union

import torch
from torch import Tensor

from . import base_optimizer as base_optimizer_module
from . import clipping, ops, two_step, variants
from .amp import AVERAGES_REFUSE_SCALER, ScalerBridge, is_g_sgd_group, unscaling
from .bucket_set import FLAT_STATE_KEYS, BucketSet, check_sparse, without_first_grad, zero_unbucketed_grads
from .checkpoints import check_loadable, merged_state_dict, split_state_dict
from .closures import SCALER_WITHOUT_FIRST_STEP, STEP_API_HELP, BackwardWatch, check_convention
from .closures import resolve as resolve_convention
from .group_stats import GroupStats
from .hyperparameters import check_base, check_numbers, check_options, resolve_group
from .replicas import ReplicaSync
from .skip_counter import SkipCounter


class SANER(torch.optim.Optimizer):
    """Sharpness-Aware Noise-Explicit Reweighting (arXiv 2411.17132) over a base optimizer.

    ``SANER(params, base_optimizer=torch.optim.SGD, rho=0.05, adaptive=False, alpha=0.0, **kwargs)`` as
    davda54/sam's ``SAM`` and the SANER authors' class take it: ``kwargs`` are the base optimizer's arguments
    (its own defaults apply) and SANER's keywords (``group``, ``rule``, ``ratio_eps``, ``variant`` and its
    hyperparameters, ``backend``, ``track_groups``, ``ddp``/``ddp_mode``, ``closure``: docs/usage.md).
    ``first_step()`` after the gradient at ``w`` perturbs the weights to ``w + e``; ``second_step()`` after
    the gradient at ``w + e`` restores ``w``, scales the Group B components of g_SAM (``0 < g_SAM / g_SGD <
    1``) by ``alpha`` and steps the base (``torch.optim.SGD``: one fused kernel). ``alpha = 1`` is SAM.
    ``step(closure)`` takes davda54's and torch's closures (docs/design.md, "Closures").

    Parameters are packed into flat buckets at the first step: ``p.data`` and ``p.grad`` become views into
    one buffer per (group, device, dtype); ``zero_grad()`` zeroes gradients in place whatever
    ``set_to_none`` says (a ``None`` gradient would break the view).
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer=None,
        rho: float = 0.05,
        adaptive: bool = False,
        alpha: float = 0.0,
        *,
        group: str = "B",
        rule: str = "saner",
        ratio_eps: float = 1e-8,
        variant: str = "sam",
        sigma: Optional[float] = None,
        lmbda: Optional[float] = None,
        theta: Optional[float] = None,
        gsam_alpha: Optional[float] = None,
        backend: str = "auto",
        track_groups: Union[bool, str] = False,
        ddp=None,
        ddp_mode: str = "global",
        closure: str = "auto",
        **kwargs,
    ):
        ops.check_backend_name(backend)
        check_convention(closure)
        check_options(track_groups=track_groups, ddp=ddp, ddp_mode=ddp_mode)
        variant_hypers = dict(sigma=sigma, lmbda=lmbda, theta=theta, gsam_alpha=gsam_alpha)
        variants.check_arguments(variant, variant_hypers)
        defaults = dict(rho=rho, adaptive=adaptive, alpha=alpha, group=group, rule=rule, ratio_eps=ratio_eps)
        defaults.update(variant=variant, **variant_hypers)
        self.backend = backend
        self.track_groups = track_groups
        self.closure = closure
        self.ddp_mode = ddp_mode
        self._ddp = ddp
        self._replicas: Optional[ReplicaSync] = None
        self._pending = two_step.PendingStep()  # set by first_step, cleared by second_step
        self._skips = SkipCounter()
        self._group_stats = GroupStats()
        self._scaler_bridge = ScalerBridge()  # g_SGD seen by a GradScaler between the two steps
        self._buckets = BucketSet(backend)
        self._backwards = BackwardWatch()
        super().__init__(params, defaults)
        # As in davda54/sam: the base is built over our groups; both share them, and the state.
        self.base_optimizer = base_optimizer_module.build(base_optimizer, self.param_groups, kwargs, defaults)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._fused_sgd = base_optimizer_module.is_fused_sgd(self.base_optimizer)
        if self._fused_sgd:  # never stepped: its state is ours (momentum_buffer, torch.optim.SGD's layout)
            self.base_optimizer.state = self.state
        for group in self.param_groups:
            check_base(group, self._fused_sgd)
        self._buckets.state = self.state
        if ddp_mode == "local":  # last: a rejected construction leaves the DDP model as it was
            self._replicas = ReplicaSync(ddp)

    # GradScaler.step(opt) hands this optimizer ``grad_scale`` and ``found_inf`` and calls ``step()``, which
    # completes the step begun by first_step(); the unscaling happens inside the fused update.
    _step_supports_amp_scaling = True

    # ------------------------------------------------------------------ torch.optim plumbing
    def _resolved_group(self, param_group: dict, explicit: set, others: list) -> dict:
        """``param_group`` with defaults filled in and validated (a copy: a refusal changes nothing)."""
        fused_sgd = self._fused_sgd if "base_optimizer" in self.__dict__ else None  # None: the base is not built yet
        return resolve_group(param_group, self.defaults, explicit, others, ddp_mode=self.ddp_mode, fused_sgd=fused_sgd)

    def add_param_group(self, param_group: dict) -> None:
        group = self._resolved_group(param_group, set(param_group), self._user_groups())
        for name in ("variant", *variants.ALL_HYPERPARAMETERS):
            param_group[name] = group[name]
        if "base_optimizer" in self.__dict__:  # after construction: the base fills in its own defaults
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)
        self._backwards.watch(param_group["params"])
        self._buckets.add_group()

    def _resolved_loaded_group(self, saved: dict, params: list, others: list) -> dict:
        """A checkpoint's group as ``__setstate__`` will make it (defaults filled in), validated."""
        return self._resolved_group(dict(self.defaults, **dict(saved, params=params)), set(), others)

    def _user_groups(self) -> list[dict]:
        return [g for g in self.param_groups if not is_g_sgd_group(g)]

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # load_state_dict comes through here with a new ``self.state``
        if "_buckets" in self.__dict__:
            self._buckets.state = self.state
        for group in self._user_groups():  # e.g. a torch.optim.SGD checkpoint has no rho/alpha/variant...
            if "ratio_eps" not in group and "eps" in group and "betas" not in group:  # saved before ratio_eps
                group["ratio_eps"] = group.pop("eps")
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            variants.resolve_group(group, explicit=set())
        if "base_optimizer" in self.__dict__:
            self.base_optimizer.param_groups = self.param_groups
            if self._fused_sgd:
                self.base_optimizer.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``, after checking the whole checkpoint against this optimizer: a refused
        load changes nothing (docs/design.md, "Bad input")."""
        check_loadable(self._user_groups(), state_dict, self._resolved_loaded_group)
        own, base = split_state_dict(state_dict, FLAT_STATE_KEYS)
        super().load_state_dict(own)
        self._buckets.copy_loaded_state()
        if not self._fused_sgd:
            self.base_optimizer.load_state_dict(base)  # its own rules (e.g. where Adam's step lives)
            self.base_optimizer.param_groups = self.param_groups

    def state_dict(self) -> dict:
        """torch's layout, the base optimizer's per-parameter state beside SANER's; the g_SGD group a GradScaler
        sees during a step is not part of it."""
        bridge_group = self._scaler_bridge.group
        self._scaler_bridge.withdraw(self.param_groups)
        try:
            own = super().state_dict()
        finally:
            if bridge_group is not None:
                self._scaler_bridge.group = bridge_group
                self.param_groups.append(bridge_group)
        return merged_state_dict(without_first_grad(own), None if self._fused_sgd else self.base_optimizer.state_dict())

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero gradients. Bucketed gradients are zeroed in place whatever ``set_to_none`` says."""
        self._buckets.zero_grad()
        zero_unbucketed_grads(self._user_groups(), self._buckets.bucketed_ids(), set_to_none=set_to_none)
        self._backwards.reset()

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient: the first one's norm, or an overflow GradScaler found in
        either pass (reads the device)."""
        return self._skips.total()

    # ------------------------------------------------------------------ the two steps
    def _check_step_inputs(self) -> None:
        """Everything a step refuses, checked before it changes anything."""
        if self._replicas is not None:
            self._replicas.check_unsynced()
        check_sparse(self.param_groups)
        for group in self._user_groups():  # a scheduler or a user may have written a bad value since
            check_numbers(group, self._fused_sgd)
            variants.resolve_group(group, explicit=set())

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the weights to ``w + e`` using the gradient at ``w`` (kept as g_sgd).

        ``zero_grad=True`` swaps each bucket's two gradient buffers instead of copying g (docs/design.md,
        "Gradient buffers"): ``p.grad`` becomes a new, zero tensor; a reference to the old ``p.grad``
        sees g_SGD until the second step.
        """
        if self._pending.state is not None:
            raise RuntimeError("first_step() was called twice without second_step() in between. " + STEP_API_HELP)
        self._check_step_inputs()
        self._skips.poll()
        self._buckets.sync(self.param_groups)
        entries = self._buckets.entries(self.param_groups)
        self._pending.state = two_step.first_step(entries, self._buckets, zero_grad=zero_grad, replicas=self._replicas)
        if zero_grad:
            zero_unbucketed_grads(self.param_groups, self._buckets.bucketed_ids())
        carriers = [bucket.g_sgd_carrier() for bucket in self._buckets.buckets()]
        if carriers:
            self._scaler_bridge.expose(self.param_groups, carriers)
        self._buckets.expose_first_grads()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w``, reweight Group B of the gradient at ``w + e`` by alpha, take the SGD step."""
        step = self._pending.state
        if step is None:
            raise RuntimeError("second_step() was called before first_step(). " + STEP_API_HELP)
        self._scaler_bridge.withdraw(self.param_groups)
        self._check_step_inputs()
        self._buckets.check_bound()
        scaling = unscaling(self, self._scaler_bridge)
        if scaling is not None and any(variants.average_key(g) for g in self._user_groups()):
            self._undo_perturbation()
            raise RuntimeError(AVERAGES_REFUSE_SCALER)
        two_step.fold_scaler_skip(step, scaling, self._replicas)
        if scaling is not None:
            self._skips.expect_skips()
        if step.skip is not None:
            self._skips.add(step.skip)
        if self.track_groups == "per_parameter":  # read the parameters' gradients as the update will
            for entry in step.entries:
                entry.bucket.gather_grads()
            self._group_stats.record_per_parameter(
                step.entries, partial(two_step.update_factor, step, scaling), step.skip
            )
        counts = two_step.second_step(
            step,
            self._buckets,
            zero_grad=zero_grad,
            scaling=scaling,
            replicas=self._replicas,
            count_groups=self.track_groups,
            fused_sgd=self._fused_sgd,
        )
        if not self._fused_sgd and step.entries:
            base_optimizer_module.step_unless_skipped(self.base_optimizer, step.skip)
            if zero_grad:
                self._buckets.zero_grad()
        if self.track_groups:
            self._group_stats.record(counts, step.skip)
        self._pending.state = None
        self._buckets.withdraw_first_grads()
        # What a torch LR scheduler checks, on this optimizer or on its base: second_step() is the step.
        self._opt_called = self.base_optimizer._opt_called = True
        self._skips.poll()
        self._backwards.reset()
        if zero_grad:
            zero_unbucketed_grads(self.param_groups, self._buckets.bucketed_ids())

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One full step with a closure, or the second half of a step begun by ``first_step()``.

        With a closure, either convention (docs/design.md, "Closures"): davda54's (after your first
        ``loss.backward()``, the closure runs forward and backward at ``w + e``) or torch's/Lightning's (the
        closure runs forward and backward at the current weights; it is called at ``w`` and at ``w + e``).
        Returns the closure's loss at ``w`` where the optimizer computed it, else the one at ``w + e``.
        Without a closure, after ``first_step()``: ``second_step(zero_grad=True)``; this is what
        ``torch.amp.GradScaler.step(opt)`` calls, handing over its scale and ``found_inf``.
        """
        if self._pending.state is not None:  # GradScaler.step(opt), or step() after first_step()
            loss = None if closure is None else torch.enable_grad()(closure)()  # e.g. Lightning's hooks-only closure
            self.second_step(zero_grad=True)
            return loss
        if closure is None:
            if getattr(self, "found_inf", None) is not None:
                raise RuntimeError(SCALER_WITHOUT_FIRST_STEP)
            raise RuntimeError("step() needs a closure, or a first_step() before it. " + STEP_API_HELP)
        convention = resolve_convention(self.closure, closure, self._backwards.seen)
        closure = torch.enable_grad()(closure)
        loss_at_w = closure() if convention == "both_passes" else None
        self.first_step(zero_grad=True)
        # GradScaler refuses closures, so no scaler needs g_SGD; what the closure (e.g. Lightning's clipping) reads
        # of param_groups must be the user's groups only.
        self._scaler_bridge.withdraw(self.param_groups)
        try:
            loss = closure()
        except BaseException:
            self._undo_perturbation()
            raise
        self.second_step()
        return loss if loss_at_w is None else loss_at_w

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Clip the update by the norm of the gradients in ``p.grad``, as ``torch.nn.utils.clip_grad_norm_`` does,
        returning that total norm. Between the second backward and ``second_step``, the clip coefficient
        scales g_SAM and g_SGD alike inside the update, so the Group B mask is that of the unclipped gradients
        (docs/design.md, "Gradient clipping"); no pass over the gradients but the norm's. Before
        ``first_step`` it only returns the norm: the first gradient sets the perturbation, which is scale-free.
        With a GradScaler, call ``scaler.unscale_(optimizer)`` first, as for torch's clip."""
        bucketed = self._buckets.bucketed_ids()
        grads = [b.flat_grad[: b.n_valid] for b in self._buckets.buckets()]
        grads += [
            p.grad for g in self._user_groups() for p in g["params"] if p.grad is not None and id(p) not in bucketed
        ]
        total, coef = clipping.norm_and_coefficient(grads, max_norm, norm_type)
        if self._pending.state is not None:
            clipping.check_variants(self._user_groups())
            self._pending.state.clip_coef = coef
        return total

    @torch.no_grad()
    def _undo_perturbation(self) -> None:
        """Restore w (and g_SGD in ``p.grad``) after a failed closure, so an exception in it loses nothing."""
        self._scaler_bridge.withdraw(self.param_groups)
        two_step.undo_perturbation(self._pending.state, self._buckets, self._replicas)
        self._pending.state = None
        self._buckets.withdraw_first_grads()

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
        return self._group_stats.fractions(all_ranks, self._ddp.process_group if self._ddp is not None else None)

    def parameter_group_fractions(self) -> list[dict[str, float]]:
        """Per parameter (in ``param_groups`` order), the fractions of Groups A, B, C of the last step, for the
        paper's per-layer analysis. Needs ``track_groups="per_parameter"`` (an extra pass over both gradients in
        each step, on the device). Reads the device: call it when you log."""
        if self.track_groups != "per_parameter":
            raise RuntimeError("per-parameter statistics are off: construct with track_groups='per_parameter'")
        params = [p for g in self._user_groups() for p in g["params"]]
        return self._group_stats.parameter_fractions(params)

    def set_alpha(self, alpha: float) -> None:
        """Every param group's alpha (what the SANER authors' classes keep as ``self.alpha``); acts on the next
        step. An LR-scheduler-like schedule: ``AlphaScheduler``."""
        for group in self._user_groups():
            group["alpha"] = alpha

    def buckets(self) -> list:
        """The flat buckets (built at the first step), for inspection and benchmarks."""
        return self._buckets.buckets()

    def backends(self) -> list[str]:
        """The backend chosen for each bucket, in ``buckets()`` order."""
        return [backend.NAME for backend in self._buckets.backends()]


class SAM(SANER):
    """Sharpness-Aware Minimization (davda54/sam): ``SAM(params, base_optimizer=torch.optim.SGD, rho=0.05,
    adaptive=False, **kwargs)``, SANER with alpha fixed at 1. ``kwargs``: the base optimizer's arguments and
    SANER's own keywords (``variant``: ``fsam`` is Friendly-SAM, ``vasso`` VaSSO, ``gsam`` GSAM)."""

    def __init__(self, params: Iterable, base_optimizer=None, rho: float = 0.05, adaptive: bool = False, **kwargs):
        if "alpha" in kwargs:
            raise TypeError("SAM has alpha fixed at 1; use SANER for alpha != 1")
        super().__init__(params, base_optimizer, rho, adaptive, alpha=1.0, **kwargs)

    def add_param_group(self, param_group: dict) -> None:
        if param_group.get("alpha", 1.0) != 1.0:
            raise ValueError("SAM has alpha fixed at 1; use SANER for alpha != 1")
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        for group in state_dict.get("param_groups", []):
            if group.get("alpha", 1.0) != 1.0:
                raise ValueError(
                    f"this checkpoint is a SANER's (alpha={group['alpha']!r}); SAM has alpha fixed at 1: load it "
                    "into saner_kernels.SANER. Nothing was loaded."
                )
        super().load_state_dict(state_dict)

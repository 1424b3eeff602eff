"""The optimizer's flat buckets and the per-parameter state that lives in them (docs/design.md, "Flat buckets").

A ``BucketSet`` keeps, per param group, one ``FlatBucket`` per (device, dtype) and the backend chosen for
it. It (re)builds them when a group's parameters change, re-points ``optimizer.state[p][key]`` at the
buckets' flat state buffers (so ``state_dict()`` is torch's per-parameter layout while kernels see one
vector), gives parameters their own storage back on release, and splits a bucket into runs of
consecutive parameters whose state differs (a parameter joining late has no momentum or average yet).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, NamedTuple, Optional

import torch
from torch import Tensor

from . import ops, variants
from .buckets import FlatBucket

MOMENTUM = "momentum_buffer"  # torch.optim.SGD's state key
FIRST_GRAD = "first_grad"  # the SANER authors' name for g_SGD in the optimizer state
# Per-parameter state kept in the buckets' flat buffers: momentum and the variants' gradient averages.
FLAT_STATE_KEYS = (MOMENTUM, *variants.AVERAGE_STATE_KEYS.values())


class Entry(NamedTuple):
    """One bucket of one param group, with the group's hyperparameters and the bucket's backend."""

    group: dict
    bucket: FlatBucket
    backend: object


class Run(NamedTuple):
    """Elements ``[lo, hi)`` of a bucket whose parameters share ``flag``."""

    flag: object
    lo: int
    hi: int


def runs(bucket: FlatBucket, flags: list) -> list[Run]:
    """Runs of consecutive parameters sharing a flag; one run over the whole bucket (padding included) when
    all share it."""
    if all(f == flags[0] for f in flags):
        return [Run(flags[0], 0, bucket.n)]
    out, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start]:
            out.append(Run(flags[start], bucket.offsets[start], bucket.offsets[i - 1] + bucket.numels[i - 1]))
            start = i
    return out


def part(t: Optional[Tensor], run: Run) -> Optional[Tensor]:
    return t[run.lo : run.hi] if t is not None else None


class BucketSet:
    """Per param group: its buckets and their backends. ``state`` is the optimizer's ``self.state`` (set by
    the optimizer once torch.optim made it)."""

    def __init__(self, backend_name: str):
        self.state: Optional[defaultdict] = None
        self.backend_name = backend_name
        self._groups: list[list[tuple[FlatBucket, object]]] = []
        self._keys: list[Optional[tuple]] = []  # the ids of the parameters each group's buckets hold

    def add_group(self) -> None:
        self._groups.append([])
        self._keys.append(None)

    def entries(self, param_groups: list) -> list[Entry]:
        """Every bucket, in group order. Groups past the bucketed ones (a GradScaler's g_SGD group) have none."""
        return [Entry(group, b, be) for group, buckets in zip(param_groups, self._groups) for b, be in buckets]

    def buckets(self) -> list[FlatBucket]:
        return [bucket for buckets in self._groups for bucket, _ in buckets]

    def backends(self) -> list[object]:
        return [backend for buckets in self._groups for _, backend in buckets]

    def bucketed_ids(self) -> set[int]:
        return {id(p) for bucket in self.buckets() for p in bucket.params}

    # ------------------------------------------------------------------ lifecycle
    def sync(self, param_groups: list) -> None:
        """(Re)build a group's buckets when its set of parameters with gradients changed or a parameter's
        storage was replaced (``model.to()``, ``p.data = ...``)."""
        for gi, buckets in enumerate(self._groups):
            active = [p for p in param_groups[gi]["params"] if p.grad is not None and p.numel() > 0]
            key = tuple(id(p) for p in active)
            if key == self._keys[gi] and all(b.params_bound() for b, _ in buckets):
                continue
            self.release_group(gi)
            by_kind: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in active:
                by_kind[(p.device, p.dtype)].append(p)
            built = []
            for (device, dtype), params in by_kind.items():
                backend = ops.resolve_backend(self.backend_name, device, dtype)
                bucket = FlatBucket(params, {k: [self.state_of(p, k) for p in params] for k in FLAT_STATE_KEYS})
                for k in bucket.state_keys():
                    self._point_state_at_views(bucket, k, only_existing=True)
                built.append((bucket, backend))
            self._groups[gi] = built
            self._keys[gi] = key

    def release_group(self, gi: int) -> None:
        """Parameters and their flat state get their own storage again."""
        for bucket, _ in self._groups[gi]:
            bucket.release()
            for p in bucket.params:
                for k in FLAT_STATE_KEYS:
                    t = self.state_of(p, k)
                    if t is not None:
                        self.state[p][k] = t.clone()
        self._groups[gi] = []
        self._keys[gi] = None

    def zero_grad(self) -> None:
        for bucket in self.buckets():
            bucket.zero_grad()

    def check_bound(self) -> None:
        """Refuse a second step whose parameters' storage was replaced since the first."""
        if not all(bucket.params_bound() for bucket in self.buckets()):
            raise RuntimeError(
                "a parameter's storage was replaced between first_step() and second_step() "
                "(model.to(), p.data = ...); do that outside a SANER step."
            )

    # ------------------------------------------------------------------ per-parameter state
    def state_of(self, p: Tensor, key: str) -> Optional[Tensor]:
        # self.state is a defaultdict: look without creating empty entries (they would show in state_dict)
        return self.state[p].get(key) if p in self.state else None

    def started(self, bucket: FlatBucket, key: Optional[str]) -> list[bool]:
        """Per parameter: has the state ``key`` (True for every parameter when there is no key)."""
        return [key is None or self.state_of(p, key) is not None for p in bucket.params]

    def flat_state(self, bucket: FlatBucket, key: str) -> Tensor:
        """The bucket's flat buffer for ``key``, allocated zero on first use."""
        bucket.state_views(key)
        return bucket.flat_state(key)

    def commit_state(self, bucket: FlatBucket, keys: Iterable[Optional[str]]) -> None:
        """After a parameter's first step with the state ``key``: it now has that state (a view)."""
        for key in keys:
            if key is not None:
                self._point_state_at_views(bucket, key, only_existing=False)

    def _point_state_at_views(self, bucket: FlatBucket, key: str, only_existing: bool) -> None:
        for p, view in zip(bucket.params, bucket.state_views(key)):
            if not only_existing or self.state_of(p, key) is not None:
                self.state[p][key] = view

    def copy_loaded_state(self) -> None:
        """After ``load_state_dict``: the loaded tensors are fresh ones; copy them into the buckets and
        re-point the state at the views."""
        for bucket in self.buckets():
            for key in FLAT_STATE_KEYS:
                loaded = [self.state_of(p, key) for p in bucket.params]
                if all(t is None for t in loaded) and bucket.flat_state(key) is None:
                    continue
                for p, view, t in zip(bucket.params, bucket.state_views(key), loaded):
                    if t is not None:
                        view.copy_(t)
                        self.state[p][key] = view
                    else:
                        view.zero_()

    # ------------------------------------------------------------------ g_SGD for analysis code
    def expose_first_grads(self) -> None:
        """``state[p]["first_grad"]``: a view of g_SGD (no copy) between the two steps, where the SANER authors'
        statistics read it. Never in ``state_dict()`` (the optimizer leaves it out)."""
        for bucket in self.buckets():
            for p, view in zip(bucket.params, bucket.g_sgd_views()):
                self.state[p][FIRST_GRAD] = view

    def withdraw_first_grads(self) -> None:
        for bucket in self.buckets():
            for p in bucket.params:
                if p in self.state and self.state[p].pop(FIRST_GRAD, None) is not None and not self.state[p]:
                    del self.state[p]  # no empty entries in state_dict

    def average_runs(self, entry: Entry) -> list[tuple[Run, dict]]:
        """Runs of parameters with and without a gradient average yet (a parameter's first step with one is
        plain SAM), each with the ops' ``avg``/``avg_hyper`` keywords; one run and no keywords without an
        average."""
        group, bucket = entry.group, entry.bucket
        key = variants.average_key(group)
        if key is None:
            return [(Run(None, 0, bucket.n), {})]
        avg = self.flat_state(bucket, key)
        return [
            (run, dict(avg=part(avg, run), avg_hyper=variants.average_hyper(group, run.flag)))
            for run in runs(bucket, self.started(bucket, key))
        ]


def check_sparse(param_groups: list) -> None:
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    "SANER does not support sparse gradients; use dense gradients "
                    "(e.g. nn.Embedding(..., sparse=False)) for parameters optimized by SANER/SAM."
                )


def zero_unbucketed_grads(param_groups: list, bucketed: set[int], set_to_none: bool = False) -> None:
    """Zero the gradients the buckets do not hold (zero-size parameters, or all before the first step), as
    ``torch.optim.Optimizer.zero_grad`` does."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is None or id(p) in bucketed:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()


def without_first_grad(state_dict: dict) -> dict:
    """``state_dict`` without the ``first_grad`` views (and without entries they alone made)."""
    state = {i: {k: v for k, v in e.items() if k != FIRST_GRAD} for i, e in state_dict["state"].items()}
    return dict(state_dict, state={i: e for i, e in state.items() if e})


def sum_on_first_device(partials: list[Tensor]) -> Tensor:
    """Partial sums added on the first one's device, in fp64 when any of them is fp64."""
    home = partials[0].device
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in partials) else torch.float32
    return torch.stack([t.to(device=home, dtype=dtype, non_blocking=True) for t in partials]).sum(0)

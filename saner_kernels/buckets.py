"""Flat parameter buckets: one contiguous buffer per (param group, device, dtype).

A bucket owns flat 1-D buffers for the weights, two gradient buffers, the per-parameter optimizer state
that lives in flat buffers (the momentum buffer; Friendly-SAM's and VaSSO's gradient averages), and
(adaptive SAM only) the perturbation ``e``. Each parameter's ``.data`` and ``.grad`` become views into
the weight buffer and the current gradient buffer, keeping the parameter's own strides (a
channels_last conv stays channels_last), so kernels see one long aligned vector while the model sees
its usual tensors. The buffers are padded with zeros to a multiple of ``ALIGN`` elements; padding is
never written by anyone, so it stays zero.

The two gradient buffers swap roles at ``first_step(zero_grad=True)`` (docs/design.md, "Gradient
buffers"): the one holding g_SGD becomes ``flat_g_sgd`` and every ``p.grad`` is re-pointed at the other
one (``flat_grad``), which is zero. That saves copying g into g_sgd.

Kernels know nothing of buckets; the optimizer knows nothing of kernels: it hands ``bucket.flat_*``
tensors to whichever backend it chose.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

ALIGN = 128  # elements; kernels may rely on it (128-bit vector loads, block sizes dividing n)


def padded_length(n: int, align: int = ALIGN) -> int:
    return max(align, (n + align - 1) // align * align)


def _dense_strides(t: Tensor) -> tuple[int, ...]:
    """``t``'s strides when it is dense and non-overlapping (any dim order), else contiguous ones."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), -d))
    expected = 1
    for d in order:
        if t.size(d) != 1 and t.stride(d) != expected:
            return torch.empty(t.shape, device="meta").stride()
        expected *= t.size(d)
    return t.stride()


class FlatBucket:
    """Parameters of one group on one device with one dtype, packed into flat buffers."""

    def __init__(self, params: Sequence[Tensor], state: Mapping[str, Sequence[Optional[Tensor]]]):
        """``state``: per state key (e.g. ``"momentum_buffer"``), each parameter's current tensor or None.
        A key with any tensor gets a flat buffer now (zeros where a parameter has none)."""
        if not params:
            raise ValueError("a FlatBucket needs at least one parameter")
        self.params = list(params)
        self.device = params[0].device
        self.dtype = params[0].dtype
        self.numels = [p.numel() for p in params]
        self.offsets = []
        offset = 0
        for n in self.numels:
            self.offsets.append(offset)
            offset += n
        self.n_valid = offset
        self.n = padded_length(offset)
        self.n_pad = self.n - self.n_valid

        def zeros() -> Tensor:
            return torch.zeros(self.n, dtype=self.dtype, device=self.device)

        self.flat_param = zeros()
        self._grad_buffers = (zeros(), zeros())
        self._current = 0  # which of the two gradient buffers the parameters' .grad views point into
        self.spare_is_zero = True  # flat_g_sgd holds only zeros: it can become the gradient buffer as is
        self._carriers: list[Optional[Tensor]] = [None, None]
        self._state: dict[str, tuple[Tensor, list[Tensor]]] = {}  # key -> (flat buffer, per-parameter views)
        self.flat_e: Optional[Tensor] = None
        self._weight_copy: Optional[Tensor] = None
        self._scratch: Optional[Tensor] = None
        self.strides = [_dense_strides(p) for p in params]
        self.param_views = [self._view(self.flat_param, i) for i in range(len(params))]
        self._grad_views = tuple([self._view(buffer, i) for i in range(len(params))] for buffer in self._grad_buffers)

        with torch.no_grad():
            for p, view in zip(self.params, self.param_views):
                view.copy_(p.data)
                p.data = view
            for p, view in zip(self.params, self.grad_views):
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
            for key, tensors in state.items():
                if any(t is not None for t in tensors):
                    for view, t in zip(self.state_views(key), tensors):
                        if t is not None:
                            view.copy_(t)

    def _view(self, flat: Tensor, i: int) -> Tensor:
        p = self.params[i]
        return flat.as_strided(p.shape, self.strides[i], self.offsets[i])

    # ------------------------------------------------------------------ the two gradient buffers
    @property
    def flat_grad(self) -> Tensor:
        """The buffer the parameters' ``.grad`` views point into."""
        return self._grad_buffers[self._current]

    @property
    def flat_g_sgd(self) -> Tensor:
        """The other gradient buffer: g_SGD during a step, zero (or stale) otherwise."""
        return self._grad_buffers[1 - self._current]

    @property
    def grad_views(self) -> list[Tensor]:
        return self._grad_views[self._current]

    def g_sgd_views(self) -> list[Tensor]:
        """Per-parameter views of ``flat_g_sgd``, shaped like the parameters."""
        return self._grad_views[1 - self._current]

    def swap_grad_buffers(self) -> None:
        """``flat_grad`` becomes ``flat_g_sgd`` and every ``p.grad`` a view of the other buffer."""
        self._current = 1 - self._current
        with torch.no_grad():
            for p, view in zip(self.params, self.grad_views):
                p.grad = view

    def g_sgd_carrier(self) -> Tensor:
        """A tensor whose ``.grad`` is the valid part of ``flat_g_sgd`` (no copy): what a GradScaler is shown
        so that it checks and unscales g_SGD too (saner_kernels/amp.py)."""
        i = 1 - self._current
        if self._carriers[i] is None:
            g_sgd = self._grad_buffers[i][: self.n_valid]
            carrier = g_sgd.detach()  # a leaf that shares the buffer: no memory of its own
            carrier.grad = g_sgd
            self._carriers[i] = carrier
        return self._carriers[i]

    # ------------------------------------------------------------------ state buffers
    def state_views(self, key: str) -> list[Tensor]:
        """Per-parameter views of the flat buffer for the state ``key`` (allocated zero on first use)."""
        if key not in self._state:
            flat = torch.zeros(self.n, dtype=self.dtype, device=self.device)
            self._state[key] = (flat, [self._view(flat, i) for i in range(len(self.params))])
        return self._state[key][1]

    def flat_state(self, key: str) -> Optional[Tensor]:
        """The flat buffer for the state ``key``, or None before its first use."""
        return self._state[key][0] if key in self._state else None

    def state_keys(self) -> list[str]:
        return list(self._state)

    def weight_copy(self) -> Tensor:
        """Flat buffer for an exact copy of the weights (distributed local mode restores from it)."""
        if self._weight_copy is None:
            self._weight_copy = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        return self._weight_copy

    def scratch(self) -> Tensor:
        """A flat buffer for an op's output that no other buffer may alias (allocated on first use)."""
        if self._scratch is None:
            self._scratch = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        return self._scratch

    def perturbation(self) -> Tensor:
        """Flat buffer for the adaptive perturbation ``e`` (w*w*g*s cannot be recomputed from w + e)."""
        if self.flat_e is None:
            self.flat_e = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        return self.flat_e

    # ------------------------------------------------------------------ binding checks
    def params_bound(self) -> bool:
        """False when something replaced a parameter's storage (``model.to()``, ``p.data = ...``)."""
        return all(p.data_ptr() == v.data_ptr() for p, v in zip(self.params, self.param_views))

    def gather_grads(self) -> None:
        """Make every ``p.grad`` the bucket view again, copying in a grad that stopped being one.

        A grad that is ``None`` (``set_to_none``) counts as zero.
        """
        with torch.no_grad():
            for p, view in zip(self.params, self.grad_views):
                grad = p.grad
                if grad is view:
                    continue
                if grad is None:
                    view.zero_()
                elif grad.data_ptr() != view.data_ptr() or grad.stride() != view.stride():
                    view.copy_(grad)
                p.grad = view

    def zero_grad(self) -> None:
        self.flat_grad.zero_()

    def zero_spare(self) -> None:
        """Zero ``flat_g_sgd`` unless it is known to be zero (a separate pass, needed only when the last
        update did not zero it: ``second_step(zero_grad=False)`` or a copying ``first_step``)."""
        if not self.spare_is_zero:
            self.flat_g_sgd.zero_()
            self.spare_is_zero = True

    def release(self) -> None:
        """Give every parameter (and its momentum state) its own storage again."""
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.data = p.data.clone()
                if p.grad is self.grad_views[i]:
                    p.grad = p.grad.clone()

    def __repr__(self) -> str:
        return (
            f"FlatBucket({len(self.params)} params, {self.n_valid} elements padded to {self.n}, "
            f"{self.dtype}, {self.device})"
        )

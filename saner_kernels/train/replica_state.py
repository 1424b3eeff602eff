"""The optimizer state each rank owns in local mode, for the checkpoint.

In ``--ddp-mode local`` the weights, the momentum and every other optimizer state are the same on every rank,
but the SAM family's gradient averages (``fsam_average``, ``vasso_ema``: per-parameter state in torch's layout)
are made from each rank's own first gradient, so each rank has its own. The checkpoint holds rank 0's
``optimizer.state_dict()`` and, beside it, every rank's averages (gathered like the random states); on resume
each rank puts its own averages into the state dict before loading it.
"""

from __future__ import annotations

import torch

from ..variants import AVERAGE_STATE_KEYS

OWN_KEYS = frozenset(AVERAGE_STATE_KEYS.values())


def own_state(optimizer_state: dict) -> dict:
    """{parameter index: {key: tensor on the CPU}} of this rank's own entries of ``optimizer.state_dict()``."""
    own = {}
    for index, state in optimizer_state["state"].items():
        mine = {k: v.detach().cpu() for k, v in state.items() if k in OWN_KEYS and isinstance(v, torch.Tensor)}
        if mine:
            own[index] = mine
    return own


def with_own_state(optimizer_state: dict, own: dict) -> dict:
    """``optimizer_state`` (rank 0's) with this rank's own entries put back; the input is not changed."""
    state = {index: dict(entries) for index, entries in optimizer_state["state"].items()}
    for index, entries in own.items():
        state.setdefault(index, {}).update(entries)
    return {**optimizer_state, "state": state}

"""The optimizer's ``state_dict``: checked before it is loaded (docs/design.md, "Bad input"), and SANER's
per-parameter state merged with a base optimizer's (docs/design.md, "Base optimizers").

torch's ``Optimizer.load_state_dict`` checks the number of groups and of parameters per group, then replaces
the state; it does not compare a state tensor's shape with its parameter's, so momentum saved from another
model is accepted (broadcast, or failing only at the first step). Everything here runs before anything is
loaded, so a refused checkpoint leaves the optimizer exactly as it was.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional

from torch import Tensor

from .bucket_set import FLAT_STATE_KEYS


def check_loadable(param_groups: list, state_dict: dict, resolve: Callable[[dict, list, list], dict]) -> None:
    """Refuse ``state_dict`` unless it fits ``param_groups``: same groups and parameter counts, every
    per-parameter state tensor of its parameter's shape and a floating dtype, every group's hyperparameters
    valid (``resolve(saved_group, params, groups_resolved_so_far)`` validates one). Warn when a group's
    variant differs: the checkpoint's hyperparameters win, as in torch."""
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(
            "not an optimizer state_dict (expected a dict with 'state' and 'param_groups'): pass "
            "optimizer.state_dict() as saved, not a model's state_dict"
        )
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} parameter groups, this optimizer {len(param_groups)}: was it "
            "saved from an optimizer built the same way?"
        )
    resolved = []
    for gi, (group, saved) in enumerate(zip(param_groups, saved_groups)):
        params = group["params"]
        if len(saved["params"]) != len(params):
            raise ValueError(
                f"group {gi} of the checkpoint has {len(saved['params'])} parameters, this optimizer's "
                f"{len(params)}: was it saved from another model?"
            )
        for pi, (p, index) in enumerate(zip(params, saved["params"])):
            for key, value in saved_state.get(index, {}).items():
                # SANER's own per-parameter state, and a base optimizer's tensors of more than one element
                # (Adam's exp_avg; its 0-dim "step" has no shape to compare)
                if key in FLAT_STATE_KEYS or (isinstance(value, Tensor) and value.dim() > 0):
                    _check_state_tensor(gi, pi, p, key, value)
        resolved.append(resolve(saved, params, resolved))
        if saved.get("variant", group["variant"]) != group["variant"]:
            warnings.warn(
                f"group {gi}: the checkpoint's variant is {saved['variant']!r}, this optimizer's {group['variant']!r}; "
                "the checkpoint's variant and hyperparameters are loaded (as torch loads every hyperparameter)",
                UserWarning,
                stacklevel=3,
            )


def _check_state_tensor(gi: int, pi: int, p: Tensor, key: str, value) -> None:
    where = f"parameter {pi} of group {gi} (shape {tuple(p.shape)})"
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"the checkpoint's {key!r} for {where} is not a floating-point tensor: {type(value).__name__}")
    if value.shape != p.shape:
        raise ValueError(
            f"the checkpoint's {key!r} for {where} has shape {tuple(value.shape)}: the checkpoint was saved from "
            "another model (or another parameter order). Nothing was loaded."
        )


def merged_state_dict(own: dict, base: Optional[dict]) -> dict:
    """SANER's state_dict with the base optimizer's per-parameter state added (both index parameters in the
    order of the param groups they share; their keys do not overlap); ``own`` itself without a base state."""
    if base is None:
        return own
    state = {i: dict(entry) for i, entry in own["state"].items()}
    for i, entry in base["state"].items():
        state.setdefault(i, {}).update(entry)
    return {"state": state, "param_groups": own["param_groups"]}


def split_state_dict(state_dict: dict, own_keys: Iterable[str]) -> tuple[dict, dict]:
    """The inverse of ``merged_state_dict``: (SANER's state_dict, the base optimizer's)."""
    own_keys = set(own_keys)
    own = {i: {k: v for k, v in e.items() if k in own_keys} for i, e in state_dict["state"].items()}
    base = {i: {k: v for k, v in e.items() if k not in own_keys} for i, e in state_dict["state"].items()}
    groups = state_dict["param_groups"]
    return (
        {"state": {i: e for i, e in own.items() if e}, "param_groups": groups},
        {"state": {i: e for i, e in base.items() if e}, "param_groups": groups},
    )

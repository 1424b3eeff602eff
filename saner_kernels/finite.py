"""One check for every hyperparameter the optimizer reads: a finite Python number (docs/design.md, "Bad
input"). A leaf module: the validators of groups and of variants both use it."""

from __future__ import annotations

import math

from torch import Tensor


def check_number(name: str, value) -> None:
    if isinstance(value, Tensor) or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a Python number)")
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid {name}: {value!r} (must be finite): a non-finite {name} would make every weight NaN in one "
            "step. If an LR or alpha schedule wrote it, check the schedule's inputs."
        )

"""Parameter-shape sets for the optimizer microbenchmarks, taken from real module definitions.

``SHAPE_SETS`` names what ``--models`` accepts: the CIFAR models of ``saner_kernels/train/models.py``
(``wrn-28-10``: 36,479,194 params in 80 tensors, ``wrn-16-8``, ``resnet18``, or any ``wrn-D-K``)
and ``bucket``, one large synthetic tensor (``--bucket-numel``, 2**26 by default on CUDA, 2**24
on CPU) that shows the kernels' streaming rate without per-tensor overheads.
"""

from __future__ import annotations

from typing import Optional

import torch

from saner_kernels.train.models import build_model

DEFAULT_MODELS = ("wrn-28-10", "wrn-16-8", "resnet18", "bucket")
BUCKET_NUMEL = {"cuda": 1 << 26, "cpu": 1 << 24}


def param_shapes(name: str, bucket_numel: Optional[int] = None, device: str = "cpu") -> list[torch.Size]:
    """Shapes of the parameters of model ``name`` (built on the meta device: no memory used)."""
    if name == "bucket":
        n = bucket_numel or BUCKET_NUMEL.get(torch.device(device).type, 1 << 24)
        return [torch.Size([n])]
    with torch.device("meta"):
        model = build_model(name, num_classes=10)
    return [p.shape for p in model.parameters()]


def describe(shapes: list[torch.Size]) -> tuple[int, int]:
    """(number of elements, number of tensors)."""
    return sum(s.numel() for s in shapes), len(shapes)


def make_params(
    shapes: list[torch.Size], device, dtype=torch.float32, seed: int = 0, grad_scale: float = 1e-3
) -> list[torch.nn.Parameter]:
    """Fresh parameters with random weights and random gradients already in ``.grad``.

    Every optimizer under test gets its own set (SANER rebinds ``p.data``/``p.grad`` into flat
    buckets), all built from the same seed so every row starts from the same numbers.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: fast for 36M params
    params = []
    for shape in shapes:
        w = torch.randn(shape, generator=gen, dtype=torch.float32, device=device)
        g = torch.randn(shape, generator=gen, dtype=torch.float32, device=device).mul_(grad_scale)
        p = torch.nn.Parameter(w.to(dtype=dtype))
        p.grad = g.to(dtype=dtype)
        params.append(p)
    return params


def make_gradients(
    shapes: list[torch.Size], device, dtype=torch.float32, seed: int = 1, grad_scale: float = 1e-3
) -> list[list[torch.Tensor]]:
    """The two gradients of a step, one list per backward pass, written into ``.grad`` before each phase.

    The second is the first times a factor in [-1, 2), so every SANER group (ratio >= 1, in (0, 1), <= 0)
    occurs, as it does between the gradients at ``w`` and at ``w + e``.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    first, second = [], []
    for shape in shapes:
        g = torch.randn(shape, generator=gen, dtype=torch.float32, device=device).mul_(grad_scale)
        factor = torch.rand(shape, generator=gen, dtype=torch.float32, device=device).mul_(3).sub_(1)
        first.append(g.to(dtype=dtype))
        second.append((g * factor).to(dtype=dtype))
    return [first, second]

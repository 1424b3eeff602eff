"""The memory-bandwidth probe behind the "% of probe" column: the best of STREAM-style in-place kernels.

Why in place: an out-of-place kernel (STREAM's copy ``c = a``) moves 2 or 3 streams per element depending on
whether the CPU reads each destination line before writing it (write-allocate, read-for-ownership) or
streams it out with non-temporal stores, and a GPU does neither; counting 2 made the old copy probe read
below fused SGD on the CPU (so "% of copy" exceeded 100). An in-place kernel writes only lines it has just
read, so its traffic is exact on every device: the same read-modify-write pattern as the optimizer kernels.
We take the best of three with 2, 3 and 4 streams, because the attainable rate depends on the mix (on a CPU
with few cores, on how many lines each core keeps in flight):

- scale ``a *= -1``            reads a, writes a:        8 B/elem
- axpy  ``a += s * b``         reads a, b, writes a:    12 B/elem
- fma   ``a += s * b * c``     reads a, b, c, writes a: 16 B/elem

A row above 100% is then a measured fact, not a counting error: its arrays fit in the cache (small shape sets)
or its mix of streams runs faster than any of the three. The copy's rate is recorded too, counted both ways,
for comparison with older results.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .measure import free_memory, median_call_ms

KERNELS: dict[str, tuple[Callable[..., object], int]] = {
    # name: (kernel on three equal-length arrays, exact bytes moved per fp32 element)
    "scale": (lambda a, b, c: a.mul_(-1.0), 8),  # -1: no drift towards denormals over many calls
    "axpy": (lambda a, b, c: a.add_(b, alpha=1e-3), 12),
    "fma": (lambda a, b, c: a.addcmul_(b, c, value=1e-3), 16),
}


def default_numel(device: torch.device) -> int:
    """Arrays well beyond the last-level cache: 3 GiB in all on a GPU, 384 MiB on a CPU."""
    return (1 << 28) if device.type == "cuda" else (1 << 25)


def _rates(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, device: torch.device, quick: bool) -> dict:
    n = a.numel()
    result: dict = {"numel": n, "kernels": {}}
    for name, (kernel, bytes_per_elem) in KERNELS.items():
        ms = median_call_ms(lambda: kernel(a, b, c), device, quick)  # noqa: B023 - called right here
        result["kernels"][name] = round(bytes_per_elem * n / (ms * 1e-3) / 1e9, 2)
    ms = median_call_ms(lambda: c.copy_(a), device, quick)
    result["copy_gbs_2_streams"] = round(8 * n / (ms * 1e-3) / 1e9, 2)
    result["copy_gbs_3_streams"] = round(12 * n / (ms * 1e-3) / 1e9, 2)
    result["best_kernel"] = max(result["kernels"], key=result["kernels"].get)
    result["best_gbs"] = result["kernels"][result["best_kernel"]]
    return result


def bandwidth_probe(device: torch.device, numel: Optional[int] = None, quick: bool = False) -> dict:
    """GB/s of each kernel, the best of them (``best_gbs``, ``best_kernel``) and the copy for reference."""
    numel = numel or default_numel(device)
    result = _rates(*(torch.rand(numel, device=device) for _ in range(3)), device, quick)
    free_memory(device)
    return result

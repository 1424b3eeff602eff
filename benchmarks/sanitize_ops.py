"""Every kernel-contract op of the chosen backends on awkward inputs, for ``compute-sanitizer --tool memcheck``.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \\
        python -m benchmarks.sanitize_ops --device cuda          # backends triton and cuda_cpp (GPU machine)
    python -m benchmarks.sanitize_ops --device cpu               # reference and cpp: the same logic, no GPU

Calls ``grad_sq_norm``, ``perturb_``, ``update_`` and ``restore_`` (contract v2, ``saner_kernels/ops/
reference.py``) with every optional tensor (``e``, ``g_sgd``, ``buf``, ``stats``, ``inv_scale``) present and
absent, skipped and not, on lengths 1, 1003 and 65573 (not multiples of the bucket's 128-element padding, nor
of any vector width), as fresh tensors and as unaligned views ``buffer[1:]``, in every storage dtype the
backend lists (fp64 for ``cuda_cpp``/``cpp``).

Memory errors show up three ways: memcheck (GPU; run without the caching allocator so that each tensor is
its own allocation and a read past its end is out of bounds), a canary element before every unaligned view
(and, on the CPU, after every tensor) that must not change, and the contract's cheap invariants: finite
results, ``zero_grads`` leaves both gradients zero, the group counters add up to ``n_valid`` (0 when
skipped). Exit status 0 when every call passed. Values are not compared with the reference: the contract
tests do that.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from saner_kernels.ops import backend_status, resolve_backend
from saner_kernels.ops.hyper import UpdateHyper

LENGTHS = (1, 1003, 65573)
DEFAULT_BACKENDS = {"cuda": ("triton", "cuda_cpp"), "cpu": ("reference", "cpp")}
ALL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
CANARY = 7.0  # exact in every dtype


@dataclass
class Layout:
    """Where a case's tensors sit in their allocation."""

    offset: int  # 0: a fresh tensor; 1: the unaligned view buffer[1:]
    tail_canary: bool  # one canary after the tensor (CPU: nothing else would see a write past the end)

    @property
    def name(self) -> str:
        return "view[1:]" if self.offset else "fresh"


class Case:
    """The tensors of one (backend, dtype, length, layout) case, each in a canary-guarded allocation."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device, layout: Layout, seed: int):
        self.n, self.dtype, self.device, self.layout = n, dtype, device, layout
        self._buffers: list[tuple[str, torch.Tensor]] = []
        gen = torch.Generator(device="cpu").manual_seed(seed)
        g = torch.randn(n, generator=gen) * 1e-3
        self.w = self._guarded("w", torch.randn(n, generator=gen))
        self.g = self._guarded("g", g)
        self.g_sgd = self._guarded("g_sgd", g * (torch.rand(n, generator=gen) * 3 - 1))  # every group occurs
        self.buf = self._guarded("buf", torch.randn(n, generator=gen) * 1e-3)
        self.e = self._guarded("e", torch.randn(n, generator=gen) * 1e-4)
        scale_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.scale = torch.tensor(0.1 / (float(g.norm()) + 1e-12), dtype=scale_dtype, device=device)

    def _guarded(self, name: str, values: torch.Tensor) -> torch.Tensor:
        lead, tail = self.layout.offset, int(self.layout.tail_canary)
        buffer = torch.full((lead + self.n + tail,), CANARY, dtype=self.dtype, device=self.device)
        view = buffer[lead : lead + self.n]
        view.copy_(values)
        self._buffers.append((name, buffer))
        return view

    def regrad(self, seed: int) -> None:
        """Fresh gradients (an earlier update may have zeroed them)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        g = torch.randn(self.n, generator=gen) * 1e-3
        self.g.copy_(g)
        self.g_sgd.copy_(g * (torch.rand(self.n, generator=gen) * 3 - 1))

    def problems(self) -> list[str]:
        """Changed canaries and non-finite values."""
        out = []
        lead, tail = self.layout.offset, int(self.layout.tail_canary)
        for name, buffer in self._buffers:
            guards = torch.cat([buffer[:lead], buffer[lead + self.n :][:tail]])
            if guards.numel() and not bool((guards == CANARY).all()):
                out.append(f"{name}: canary overwritten")
            if not bool(torch.isfinite(buffer[lead : lead + self.n]).all()):
                out.append(f"{name}: non-finite values")
        return out


def flag(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def calls(backend, case: Case) -> list[tuple[str, Callable[[], Optional[str]]]]:
    """(description, call) for every op and option; a call returns a broken invariant, or None."""
    c, dev = case, case.device
    hyper = UpdateHyper(lr=0.1, momentum=0.9, weight_decay=5e-4, alpha=0.5)
    sam_no_momentum = UpdateHyper(lr=0.1, weight_decay=5e-4, alpha=1.0)
    n_valid = max(1, c.n - 3)  # the padded tail of a bucket is not counted

    def norm(w=None):
        def run():
            result = backend.grad_sq_norm(c.g, w)
            return None if result.dim() == 0 and bool(torch.isfinite(result)) else f"norm is {result}"

        return run

    def perturb(skip, **kw):
        return lambda: backend.perturb_(c.w, c.g, c.scale, flag(skip, dev), **kw)

    def update(skip, h, buf, *, zero_grads, stats, **kw):
        def run():
            counts = torch.zeros(3, dtype=torch.int64, device=dev) if stats else None
            backend.update_(
                c.w,
                c.g,
                c.g_sgd,
                buf,
                c.scale,
                flag(skip, dev),
                h,
                zero_grads=zero_grads,
                stats=counts,
                n_valid=n_valid if stats else None,
                **kw,
            )
            if zero_grads and not (bool((c.g == 0).all()) and bool((c.g_sgd == 0).all())):
                return "zero_grads left a nonzero gradient"
            if counts is not None and int(counts.sum()) != (0 if skip else n_valid):
                return f"group counts {counts.tolist()} do not add up to {0 if skip else n_valid}"
            return None

        return run

    def restore(**kw):
        return lambda: backend.restore_(c.w, c.scale, flag(0.0, dev), **kw)

    return [
        ("grad_sq_norm(g)", norm()),
        ("grad_sq_norm(g, w)", norm(c.w)),
        ("perturb_", perturb(0.0)),
        ("perturb_(g_sgd=)", perturb(0.0, g_sgd=c.g_sgd)),
        ("perturb_(e=)", perturb(0.0, e=c.e)),
        ("perturb_(g_sgd=, skip)", perturb(1.0, g_sgd=c.g_sgd)),
        (
            "update_(nesterov)",
            update(
                0.0, UpdateHyper(lr=0.1, momentum=0.9, alpha=0.5, nesterov=True), c.buf, zero_grads=False, stats=False
            ),
        ),
        (
            "update_(e=, stats, zero_grads, first momentum step)",
            update(0.0, hyper, c.buf, zero_grads=True, stats=True, e=c.e, first_momentum_step=True),
        ),
        ("update_(inv_scale=)", update(0.0, hyper, c.buf, zero_grads=False, stats=False, inv_scale=flag(1 / 64, dev))),
        ("update_(no momentum, alpha 1, zero_grads)", update(0.0, sam_no_momentum, None, zero_grads=True, stats=False)),
        ("update_(skip, stats, zero_grads)", update(1.0, hyper, c.buf, zero_grads=True, stats=True)),
        ("restore_(g_sgd=)", restore(g_sgd=c.g_sgd)),
        ("restore_(e=)", restore(e=c.e)),
    ]


def run_case(backend, case: Case) -> tuple[int, list[str]]:
    """(number of calls, what failed)."""
    failures = []
    todo = calls(backend, case)
    for i, (what, call) in enumerate(todo):
        if i and "update_" in what:
            case.regrad(seed=i)  # the previous update may have zeroed the gradients
        try:
            broken = call()
        except Exception as exc:  # a rejected or crashing call is a failure: these inputs are all valid
            broken = f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if case.device.type == "cuda":
            torch.cuda.synchronize()  # an asynchronous fault belongs to this call
        problems = ([broken] if broken else []) + case.problems()
        failures += [f"{what}: {p}" for p in problems]
    return len(todo), failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sanitize_ops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backends", nargs="+", default=None, help="default: triton cuda_cpp (GPU), reference cpp (CPU)")
    ap.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    layouts = [Layout(0, device.type == "cpu"), Layout(1, device.type == "cpu")]
    failed, n_calls = [], 0
    for name in args.backends or DEFAULT_BACKENDS[device.type]:
        status = backend_status(name, device)
        if not status:
            failed.append(f"{name}: not available on {device.type}: {status.reason}")
            print(f"{name:9s} NOT AVAILABLE: {status.reason}", flush=True)
            continue
        for dtype in ALL_DTYPES:
            try:
                backend = resolve_backend(name, device, dtype)
            except RuntimeError:  # the backend does not take this dtype
                continue
            for layout in layouts:
                here = []
                for n in args.lengths:
                    case = Case(n, dtype, device, layout, seed=n)
                    done, problems = run_case(backend, case)
                    n_calls += done
                    here += [f"{name} {dtype} n={n} {layout.name}: {p}" for p in problems]
                print(
                    f"{name:9s} {str(dtype):15s} {layout.name:9s} n={args.lengths}: "
                    f"{'ok' if not here else f'{len(here)} FAILED'}",
                    flush=True,
                )
                failed += here
    for line in failed:
        print("FAIL", line)
    print(f"{n_calls} calls, {len(failed)} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

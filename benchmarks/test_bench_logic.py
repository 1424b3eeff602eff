"""The benchmark's measuring logic, without timing anything: what each phase reads, what is refilled
where, the alternation order, the byte floors, the probe's in-place premise, the sanitizer's canaries."""

from __future__ import annotations

import torch

import saner_kernels
from benchmarks import bandwidth, rows, sanitize_ops
from benchmarks.measure import StepUnderTest, interleaved, median_ratio, spread_pct
from benchmarks.shapes import make_gradients, make_params
from saner_kernels.ops import reference

SHAPES = [torch.Size([7, 5]), torch.Size([13]), torch.Size([3, 4, 2, 2])]
CPU = torch.device("cpu")


def _saner(params):
    return saner_kernels.SANER(params, rho=0.1, alpha=0.5, backend="reference", **rows.HP)


def test_a_refilled_step_is_the_training_loop_step():
    """StepUnderTest writes gradient k where phase k reads it, also after the buckets swap their buffers."""
    grads = make_gradients(SHAPES, CPU)
    timed_params, loop_params = make_params(SHAPES, CPU), make_params(SHAPES, CPU)
    step = StepUnderTest(timed_params, rows.saner_phases(_saner(timed_params)), CPU)
    loop = _saner(loop_params)
    for _ in range(3):
        step.run(grads)
        for k, phase in enumerate((loop.first_step, loop.second_step)):
            for p, g in zip(loop_params, grads[k]):
                p.grad.copy_(g)
            phase(zero_grad=True)
    for a, b in zip(timed_params, loop_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not a.grad.any()  # zero_grad=True was part of the timed step


def test_the_sgd_step_zeroes_its_gradients_in_place():
    params = make_params(SHAPES, CPU)
    grads_before = [p.grad for p in params]
    StepUnderTest(params, rows.sgd_phases(rows.anchor_spec().build(params)), CPU).run(make_gradients(SHAPES, CPU))
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads_before))


class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, grads):
        self.log.append(self.name)
        return {"a": 2.0, "b": 1.0}[self.name]


def test_interleaving_alternates_the_order_of_each_pair():
    log = []
    times_a, times_b = interleaved(
        _Recorder("a", log), _Recorder("b", log), [], reps=4, min_reps=4, max_seconds=1e9, warmup=0
    )
    assert "".join(log) == "abbaabba"
    assert len(times_a) == len(times_b) == 4
    assert median_ratio(times_a, times_b) == 2.0
    assert spread_pct([1.0, 2.0, 3.0, 4.0, 5.0]) == 100 * (4 - 2) / 3


def test_floors_and_one_headline_row():
    specs = rows.row_specs(CPU)
    runnable = [s for s in specs if not s.skip]
    assert rows.SANER_BYTES / rows.SGD_BYTES == 2.0 and rows.SANER_ADAMW_BYTES / rows.ADAMW_BYTES == 2.5
    for s in runnable:
        variant = next((v for v in rows.VARIANT_BYTES if s.optimizer.endswith(f" {v}")), None)
        expected = rows.SGD_BYTES if s.optimizer.startswith("SGD") else rows.SANER_BYTES
        if "AdamW" in s.optimizer:  # against fused AdamW: 80 / 32 = 2.5 (rows.py)
            expected = rows.SANER_ADAMW_BYTES if s.optimizer.startswith("SANER") else rows.ADAMW_BYTES
        assert s.bytes_per_elem == (rows.VARIANT_BYTES[variant] if variant else expected), s.label
    assert {s.optimizer for s in runnable} >= {f"SANER a={rows.ALPHA} {v}" for v in ("fsam", "vasso", "gsam")}
    headline = [s for s in runnable if s.headline]
    assert len(headline) == 1 and headline[0].backend == rows.best_backend(CPU)
    assert headline[0].optimizer == f"SANER a={rows.ALPHA}"


def test_the_probe_kernels_write_only_their_first_array():
    """The premise of their exact byte counts: every written line is one that was read."""
    a, b, c = (torch.rand(1000) for _ in range(3))
    b0, c0 = b.clone(), c.clone()
    for name, (kernel, bytes_per_elem) in bandwidth.KERNELS.items():
        a0 = a.clone()
        kernel(a, b, c)
        assert not torch.equal(a, a0), name
        assert torch.equal(b, b0) and torch.equal(c, c0), name
        assert bytes_per_elem % 4 == 0 and bytes_per_elem >= 8


def test_the_sanitizer_passes_the_reference():
    assert sanitize_ops.main(["--device", "cpu", "--backends", "reference", "--lengths", "1", "5"]) == 0


class _WritesPastTheEnd:
    """The reference, except that ``perturb_`` also writes one element after ``w`` (and one before a view)."""

    NAME, DTYPES = "broken", reference.DTYPES
    grad_sq_norm = staticmethod(reference.grad_sq_norm)
    update_ = staticmethod(reference.update_)
    restore_ = staticmethod(reference.restore_)

    @staticmethod
    def perturb_(w, g, scale, skip, **kw):
        reference.perturb_(w, g, scale, skip, **kw)
        whole = w.as_strided((w.untyped_storage().nbytes() // w.element_size(),), (1,), 0)
        whole[w.storage_offset() + w.numel()] += 1
        if w.storage_offset():
            whole[w.storage_offset() - 1] += 1


def test_the_sanitizer_sees_writes_outside_a_tensor():
    for offset in (0, 1):
        case = sanitize_ops.Case(5, torch.float32, CPU, sanitize_ops.Layout(offset, tail_canary=True), seed=0)
        _, failures = sanitize_ops.run_case(_WritesPastTheEnd, case)
        assert "perturb_: w: canary overwritten" in failures

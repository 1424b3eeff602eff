"""The compiled Triton kernels on CUDA tensors: the interpreter tests' comparisons, no host syncs, and a
full SANER step captured in a CUDA graph. Marked ``gpu``; skipped where CUDA is missing."""
from __future__ import annotations

import pytest
import torch

from saner_kernels.ops import reference

from contract_cases import (DTYPES, LENGTHS, SWITCHES, assert_same_step, assert_step_skipped, make_bucket_tensors,
                            run_step)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def triton_ops():
    from saner_kernels.ops import triton as ops

    assert ops.is_available(torch.device("cuda")) == (True, "")
    return ops


def _id(sw: dict) -> str:
    return "-".join(k for k, v in sw.items() if v is True) + f"-a{sw['alpha']}"


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS + (1 << 22,))
def test_grad_sq_norm_cuda(triton_ops, n, dtype, adaptive):
    t = make_bucket_tensors(n, dtype, seed=n, device="cuda")
    w = t["w"] if adaptive else None
    got = triton_ops.grad_sq_norm(t["g"], w)
    x = t["g"].double() * (t["w"].double().abs() if adaptive else 1.0)
    torch.testing.assert_close(got.double(), torch.dot(x, x), rtol=1e-6, atol=0.0)
    assert torch.equal(got, triton_ops.grad_sq_norm(t["g"], w)), "two runs differ"


@pytest.mark.parametrize("switches", SWITCHES, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
def test_step_cuda(triton_ops, n, dtype, switches):
    t = make_bucket_tensors(n, dtype, seed=7, device="cuda", pad=n // 8)
    got = run_step(triton_ops, t, **switches)
    assert_same_step(got, run_step(reference, t, **switches), dtype)
    again = run_step(triton_ops, t, **switches)
    assert all(torch.equal(got[k], again[k]) for k in got), "two runs differ"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_scale_cuda(triton_ops, bad):
    t = make_bucket_tensors(65536, device="cuda")
    assert_step_skipped(run_step(triton_ops, t, scale=torch.tensor(bad, device="cuda"), **SWITCHES[-1]), t)


def test_no_host_sync(triton_ops):
    t = make_bucket_tensors(65536, device="cuda")
    scale = torch.tensor(0.01, device="cuda")
    run_step(triton_ops, t, scale=scale, **SWITCHES[-1])  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        triton_ops.grad_sq_norm(t["g"], t["w"])
        run_step(triton_ops, t, scale=scale, **SWITCHES[-1])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_full_step(triton_ops):
    """first_step + second_step (with both forward/backward passes) captured once, then replayed."""
    from saner_kernels import SANER
    from toy_models import batches, conv_net, loss_fn, twin

    model = conv_net().cuda()
    eager = twin(model)
    data = [(x.cuda(), y.cuda()) for x, y in batches("conv", 8)]
    hyper = dict(lr=0.05, alpha=0.5, track_groups=True, backend="triton")
    opt, opt_eager = SANER(model.parameters(), **hyper), SANER(eager.parameters(), **hyper)

    def step(m, o, batch):
        loss_fn(m, batch).backward()
        o.first_step(zero_grad=True)
        loss_fn(m, batch).backward()
        o.second_step(zero_grad=True)

    # Warm up on a side stream (buckets, momentum buffers, compiled kernels), past the first momentum step.
    static_x, static_y = data[0][0].clone(), data[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for batch in data[:2]:
            static_x.copy_(batch[0])
            static_y.copy_(batch[1])
            step(model, opt, (static_x, static_y))
    torch.cuda.current_stream().wait_stream(side)
    for batch in data[:2]:
        step(eager, opt_eager, batch)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(model, opt, (static_x, static_y))
    # Capture does not run the work: replay it for every remaining batch, stepping the twin eagerly.
    for batch in data[2:]:
        static_x.copy_(batch[0])
        static_y.copy_(batch[1])
        graph.replay()
        step(eager, opt_eager, batch)
    torch.cuda.synchronize()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert opt.group_fractions() == pytest.approx(opt_eager.group_fractions(), abs=0.03)

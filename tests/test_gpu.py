"""What the contract matrix (test_contract.py) cannot check, on CUDA devices: no host sync in a full
optimizer step, a full SANER step captured in a CUDA graph (on the current device and on another one),
and the Triton norm beyond 2**31 elements. Marked ``gpu``; skipped where CUDA is missing."""

from __future__ import annotations

import warnings

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL

from saner_kernels.ops import backend_status

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA_BACKENDS = ["triton", "cuda_cpp"]


def _require(backend: str, device: str = "cuda") -> None:
    status = backend_status(backend, device)
    if not status:
        pytest.skip(f"backend {backend!r} cannot run here: {status.reason}")


def _device(index: int) -> torch.device:
    if torch.cuda.device_count() <= index:
        pytest.skip(f"needs {index + 1} CUDA devices")
    return torch.device("cuda", index)


def _step(model, opt, batch, zero_grad: bool = True) -> None:
    from toy_models import loss_fn

    loss_fn(model, batch).backward()
    opt.first_step(zero_grad=zero_grad)
    if not zero_grad:
        opt.zero_grad()  # g_SGD was copied; the second gradient starts from zero (davda54/sam style)
    loss_fn(model, batch).backward()
    opt.second_step(zero_grad=True)


# --------------------------------------------------------------------------- no host sync
@pytest.mark.parametrize("zero_grad", [True, False], ids=["swap", "copy"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_no_host_sync_in_a_step(backend, zero_grad):
    """A whole step (norm, perturbation, update, group counts, the non-finite watch) never syncs."""
    from toy_models import batches, mlp

    from saner_kernels import SANER

    _require(backend)
    model = mlp().cuda()
    data = [(x.cuda(), y.cuda()) for x, y in batches("mlp", 4)]
    opt = SANER(model.parameters(), lr=0.05, alpha=0.5, weight_decay=5e-4, track_groups=True, backend=backend)
    # Past the first momentum step (its skip check is the one documented host sync), kernels compiled.
    for batch in data[:2]:
        _step(model, opt, batch, zero_grad)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in data[2:]:
            _step(model, opt, batch, zero_grad)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(opt.backends()) == {backend}


# --------------------------------------------------------------------------- CUDA graphs
def _graph_setup(device: torch.device, backend: str, n_batches: int):
    from toy_models import batches, conv_net, twin

    from saner_kernels import SANER

    model = conv_net().to(device)
    eager = twin(model)
    data = [(x.to(device), y.to(device)) for x, y in batches("conv", n_batches)]
    hyper = dict(lr=0.05, alpha=0.5, weight_decay=5e-4, track_groups=True, backend=backend)
    return model, eager, data, SANER(model.parameters(), **hyper), SANER(eager.parameters(), **hyper)


def _warm_up_and_capture(model, opt, data, device: torch.device) -> tuple[torch.cuda.CUDAGraph, tuple]:
    """Two eager steps on a side stream of ``device`` (buckets, momentum buffers, compiled kernels), then one
    step captured; returns the graph and its static batch. Capture does not run the work."""
    static = (data[0][0].clone(), data[0][1].clone())
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for x, y in data[:2]:
            static[0].copy_(x)
            static[1].copy_(y)
            _step(model, opt, static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(device), torch.cuda.graph(graph, stream=side):
        _step(model, opt, static)
    return graph, static


def _assert_same_models(model, eager) -> None:
    from toy_models import max_rel_err

    assert max_rel_err(model, eager) < OPTIMIZER_RTOL["kernel"]


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_graph_full_step(backend):
    """first_step + second_step (with both forward/backward passes) captured once, replayed per batch."""
    _require(backend)
    device = torch.device("cuda", torch.cuda.current_device())
    model, eager, data, opt, opt_eager = _graph_setup(device, backend, 8)
    graph, static = _warm_up_and_capture(model, opt, data, device)
    for batch in data[:2]:
        _step(eager, opt_eager, batch)
    for x, y in data[2:]:
        static[0].copy_(x)
        static[1].copy_(y)
        graph.replay()
        _step(eager, opt_eager, (x, y))
    torch.cuda.synchronize()
    _assert_same_models(model, eager)
    assert opt.group_fractions() == pytest.approx(opt_eager.group_fractions(), abs=0.03)


@pytest.mark.parametrize("index", [0, 1], ids=["current-device", "other-device"])
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_capture_replay_then_eager_step(backend, index):
    """Capture a step, replay it, then step eagerly, with the model on cuda:``index`` while the current
    device is cuda:0. The non-finite watch must neither record during capture nor record on the wrong
    device's stream: the eager steps after the replay work, count a skipped step, and warn once."""
    _require(backend)
    device = _device(index)
    with torch.cuda.device(0):
        model, eager, data, opt, opt_eager = _graph_setup(device, backend, 6)
        graph, static = _warm_up_and_capture(model, opt, data, device)
        for batch in data[:2]:
            _step(eager, opt_eager, batch)
        static[0].copy_(data[2][0])
        static[1].copy_(data[2][1])
        graph.replay()
        _step(eager, opt_eager, data[2])
        for batch in data[3:5]:  # eager steps after the replay, the current device still cuda:0
            _step(model, opt, batch)
            _step(eager, opt_eager, batch)
        torch.cuda.synchronize(device)
        _assert_same_models(model, eager)
        assert opt.skipped_steps == 0

        # A non-finite first gradient on an eager step after the replay: skipped, counted, then warned.
        from toy_models import loss_fn

        before = [p.detach().clone() for p in model.parameters()]
        with pytest.warns(RuntimeWarning, match="skipped a step"):
            loss_fn(model, data[5]).backward()
            next(model.parameters()).grad.view(-1)[0] = float("inf")
            opt.first_step(zero_grad=True)
            loss_fn(model, data[5]).backward()
            opt.second_step(zero_grad=True)
            torch.cuda.synchronize(device)
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "a skipped step wrote"
            assert opt.skipped_steps == 1
            _step(model, opt, data[0])  # the watch has seen the count by now (it never blocks to see it)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _step(model, opt, data[1])
        assert not [w for w in caught if "skipped a step" in str(w.message)], "warned twice"
        torch.cuda.synchronize(device)
        assert opt.skipped_steps == 1


# --------------------------------------------------------------------------- the Triton norm beyond int32
@pytest.mark.parametrize("n", [(1 << 22) + 5, (1 << 24) + 3])
def test_triton_norm_second_stage(n):
    """Enough blocks for several iterations of the norm's second stage (the interpreter tests see one)."""
    _require("triton")
    from saner_kernels.ops import triton as ops

    gen = torch.Generator(device="cuda").manual_seed(n)
    g = torch.randn(n, device="cuda", generator=gen)
    got = ops.grad_sq_norm(g)
    assert torch.equal(got, ops.grad_sq_norm(g)), "two runs differ"
    torch.testing.assert_close(got.double(), torch.dot(g.double(), g.double()), rtol=1e-6, atol=0.0)


def _fp64_sq_norm(g: torch.Tensor, w=None, chunk: int = 1 << 28) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=g.device)
    for lo in range(0, g.numel(), chunk):
        x = g[lo : lo + chunk].double()
        if w is not None:
            x = x * w[lo : lo + chunk].double().abs()
        total += torch.dot(x, x)
    return total


@pytest.mark.parametrize(
    "dtype, adaptive",
    [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, False), (torch.float32, False)],
    ids=["bf16", "bf16-adaptive", "fp16", "fp32"],
)
def test_triton_norm_beyond_int32(dtype, adaptive):
    """2**31 + 1000 elements (int64 offsets): deterministic (the fixed-order second stage) and within 1e-5 of
    an fp64 sum. bf16: 4 GB per tensor, fp32: 8.6 GB."""
    _require("triton")
    from saner_kernels.ops import triton as ops

    n = (1 << 31) + 1000
    gen = torch.Generator(device="cuda").manual_seed(0)
    g = torch.randn(n, device="cuda", dtype=dtype, generator=gen)
    w = torch.randn(n, device="cuda", dtype=dtype, generator=gen) if adaptive else None
    first = ops.grad_sq_norm(g, w)
    second = ops.grad_sq_norm(g, w)
    assert torch.equal(first, second), "two runs differ"
    torch.testing.assert_close(first.double(), _fp64_sq_norm(g, w), rtol=1e-5, atol=0.0)

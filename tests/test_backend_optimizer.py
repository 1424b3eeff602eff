"""The whole optimizer on each kernel backend against ``backend="reference"``: one test over
backend x dtype x configuration x step API, a few training steps of a small conv net, within the dtype's
tolerance.

The configurations: every hyperparameter switch, the SAM family (contract v3) and the SAM class; the step
APIs: both gradient-buffer paths (swapping ``first_step(zero_grad=True)``, copying ``zero_grad=False``) and
``step(closure)``. Per backend, a pairwise-covering subset of dtype x configuration x API runs by default
(every configuration on every dtype and through every API), the rest with ``-m exhaustive``
(``contract_cases.pairwise``). The backends:
- ``cpp-cpu``: the C++ CPU op, built before pytest runs (a missing build fails here);
- ``triton-interpreter``: Triton on CPU tensors, marked ``interpreter`` (its own pytest process,
  tests/conftest.py);
- ``cuda_cpp-cuda``, ``triton-cuda``: marked ``gpu``, skipped without CUDA.
The op-level comparisons are test_contract.py's.
"""

from __future__ import annotations

import pytest
import torch
from contract_cases import OPTIMIZER_RTOL, pairwise
from toy_models import MODELS, batches, loss_fn, max_rel_err, twin

from saner_kernels import SAM, SANER
from saner_kernels.ops import native

N_STEPS = 5
# (backend, device, test id, marks, the parameter dtypes it runs)
BACKENDS = [
    ("cpp", "cpu", "cpp-cpu", (), (torch.float32, torch.bfloat16, torch.float64)),
    # fp32 only: the interpreter truncates bf16 stores (contract_cases.expected_ops), so its bf16 trajectories
    # drift from the reference's rounded ones by far more than a rounding unit
    ("triton", "cpu", "triton-interpreter", (pytest.mark.interpreter,), (torch.float32,)),
    ("cuda_cpp", "cuda", "cuda_cpp-cuda", (pytest.mark.gpu,), (torch.float32, torch.bfloat16, torch.float64)),
    ("triton", "cuda", "triton-cuda", (pytest.mark.gpu,), (torch.float32, torch.bfloat16)),
]
# Per parameter dtype: rtol for the weights (relative to each parameter's largest entry) and, elementwise with
# atol, for momentum, averages and BatchNorm statistics (a conv bias before BatchNorm gets round-off
# gradients: atol); the fraction of elements whose group may differ (those biases' round-off signs follow
# the last bits of the norm).
TOLERANCES = {
    torch.float32: dict(rtol=OPTIMIZER_RTOL["kernel"], atol=1e-6),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.bfloat16: dict(rtol=2**-6, atol=1e-3),
}
GROUP_FRACTION_TOL = 0.03

# The paper's CIFAR settings, spelled out (the constructor's defaults are the base optimizer's).
PAPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1)
# id -> (optimizer class, its keyword arguments)
CONFIGS = {
    "saner": (SANER, dict(PAPER, alpha=0.5)),
    "alpha1": (SANER, dict(PAPER, alpha=1.0)),
    "adaptive": (SANER, dict(PAPER, alpha=0.5, adaptive=True, rho=0.5)),
    "nesterov": (SANER, dict(PAPER, alpha=0.5, nesterov=True)),
    "no_momentum-no_weight_decay": (SANER, dict(PAPER, alpha=0.5, momentum=0.0, weight_decay=0.0)),
    "dampening-alpha0.3": (SANER, dict(PAPER, dampening=0.2, alpha=0.3)),
    "fsam": (SANER, dict(PAPER, alpha=0.5, variant="fsam")),
    "vasso-adaptive": (SANER, dict(PAPER, alpha=0.5, variant="vasso", adaptive=True, rho=0.5)),
    "gsam": (SANER, dict(PAPER, alpha=0.5, variant="gsam")),
    "gsam-adaptive-alpha1": (SANER, dict(PAPER, variant="gsam", adaptive=True, rho=0.5, alpha=1.0)),
    "sam_class-adaptive": (SAM, dict(PAPER, adaptive=True)),
}
STEP_APIS = ("swap", "copy", "closure")


def pytest_generate_tests(metafunc):
    if metafunc.function is not test_optimizer_matches_reference_backend:
        return
    params = []
    for backend, device, backend_id, marks, dtypes in BACKENDS:
        names, rows = pairwise(dtype=dtypes, config=tuple(CONFIGS), api=STEP_APIS)
        params += [
            pytest.param(backend, device, *row.values, id=f"{backend_id}-{row.id}", marks=(*marks, *row.marks))
            for row in rows
        ]
    metafunc.parametrize(("backend", "device", *names), params)


def train(model, opt, data, api: str) -> None:
    for batch in data:
        loss_fn(model, batch).backward()
        if api == "closure":
            opt.step(lambda batch=batch: loss_fn(model, batch).backward())
            opt.zero_grad()
            continue
        opt.first_step(zero_grad=api == "swap")
        if api == "copy":
            opt.zero_grad()  # g_SGD was copied; the second gradient starts from zero
        loss_fn(model, batch).backward()
        opt.second_step(zero_grad=True)


def test_optimizer_matches_reference_backend(backend, device, dtype, config, api):
    optimizer_class, kwargs = CONFIGS[config]
    if backend == "cpp":
        ok, reason = native.is_available(torch.device("cpu"))
        assert ok, f"the native ops must be available on CPU (make builds them first): {reason}"
    base = MODELS["conv"](dtype=dtype, seed=3).to(device)
    data = [(x.to(device), y.to(device)) for x, y in batches("conv", N_STEPS, dtype=dtype, seed=4)]
    runs = {}
    for name in (backend, "reference"):
        model = twin(base)
        opt = optimizer_class(model.parameters(), backend=name, track_groups=True, **kwargs)
        train(model, opt, data, api)
        assert opt.backends() == [name] * len(opt.buckets())
        runs[name] = (model, opt)
    (model, opt), (ref_model, ref_opt) = runs[backend], runs["reference"]
    tol = TOLERANCES[dtype]
    assert max_rel_err(model, ref_model) <= tol["rtol"]
    for got, expected in zip(model.buffers(), ref_model.buffers()):
        torch.testing.assert_close(got.double(), expected.double(), **tol)
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert state.keys() == ref_state.keys()
    for index, entries in state.items():
        assert entries.keys() == ref_state[index].keys()
        for key, value in entries.items():
            message = f"state {index} {key}"
            torch.testing.assert_close(
                value.double(), ref_state[index][key].double(), **tol, msg=lambda m, what=message: f"{what}: {m}"
            )
    fractions, ref_fractions = opt.group_fractions(), ref_opt.group_fractions()
    assert all(abs(fractions[g] - ref_fractions[g]) <= GROUP_FRACTION_TOL for g in "ABC"), (fractions, ref_fractions)


def test_auto_picks_cpp_on_cpu():
    model = MODELS["mlp"](seed=5)
    opt = SANER(model.parameters(), lr=0.1)
    train(model, opt, batches("mlp", 1, seed=6), "swap")
    assert set(opt.backends()) == {"cpp"}

"""Checks that the benchmark's inputs and peers are what the table says they are (no timing here)."""

from __future__ import annotations

import pytest
import torch

import saner_kernels
from benchmarks import peers
from benchmarks.shapes import describe, make_gradients, param_shapes


@pytest.mark.parametrize(
    "name, numel, tensors",
    [
        ("wrn-28-10", 36_479_194, 80),
        ("wrn-16-8", 10_961_370, 44),
        ("resnet18", 11_173_962, 62),
    ],
)
def test_published_parameter_counts(name, numel, tensors):
    assert describe(param_shapes(name)) == (numel, tensors)


def test_bucket_shape():
    assert param_shapes("bucket", bucket_numel=1000) == [torch.Size([1000])]


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (13,), (3, 4, 2, 2), (129,)]
    w = [torch.randn(s, generator=gen) for s in shapes]
    g1 = [torch.randn(s, generator=gen) for s in shapes]
    # second gradient: same sign and smaller, larger, or flipped, so all three groups occur
    g2 = [g * (torch.rand(g.shape, generator=gen) * 3 - 1) for g in g1]
    return w, g1, g2


def _run(make_opt, steps=3):
    w, g1, g2 = _inputs()
    params = [torch.nn.Parameter(t.clone()) for t in w]
    opt = make_opt(params)
    for _ in range(steps):
        for p, g in zip(params, g1):
            p.grad = g.clone()
        opt.first_step(zero_grad=False)
        for p, g in zip(params, g2):
            p.grad.copy_(g)
        opt.second_step(zero_grad=False)
    return [p.detach().clone() for p in params]


HP = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_paper_loop_alpha_one_is_the_sam_loop():
    a = _run(lambda ps: peers.PaperSANERLoop(ps, rho=0.1, alpha=1.0, **HP))
    b = _run(lambda ps: peers.SAMLoop(ps, rho=0.1, **HP))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_paper_loop_counts_groups():
    w, g1, g2 = _inputs()
    params = [torch.nn.Parameter(t.clone()) for t in w]
    opt = peers.PaperSANERLoop(params, rho=0.1, alpha=0.5, **HP)
    for p, g in zip(params, g1):
        p.grad = g.clone()
    opt.first_step()
    for p, g in zip(params, g2):
        p.grad.copy_(g)
    opt.second_step()
    assert sum(opt.group_counts) == sum(t.numel() for t in w)
    assert all(c > 0 for c in opt.group_counts)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_peers_match_the_package_reference(alpha):
    ours = _run(lambda ps: peers.PaperSANERLoop(ps, rho=0.1, alpha=alpha, **HP))
    ref = _run(lambda ps: saner_kernels.SANER(ps, rho=0.1, alpha=alpha, backend="reference", **HP))
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_the_two_gradients_put_components_in_every_group():
    from saner_kernels.ops.reference import group_masks

    first, second = make_gradients([torch.Size([4096])], "cpu")
    mask_a, mask_b = group_masks(second[0], first[0], eps=1e-8)
    mask_c = ~(mask_a | mask_b)
    assert mask_a.any() and mask_b.any() and mask_c.any()

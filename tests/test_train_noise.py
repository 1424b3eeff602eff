"""Label noise of saner-train: exact counts, maps, determinism."""

import pytest
import torch

from saner_kernels.train.noise import (
    CIFAR10_ASYM,
    asym_map,
    asymmetric,
    instance_dependent,
    make_noisy_labels,
    symmetric,
)

torch.set_num_threads(1)


def _labels(n_per_class=50, k=10):
    g = torch.Generator().manual_seed(123)
    y = torch.arange(k).repeat_interleave(n_per_class)
    return y[torch.randperm(y.numel(), generator=g)]


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8, 0.37])
@pytest.mark.parametrize("k", [10, 100])
def test_symmetric_exact_count_and_other_class(rate, k):
    y = _labels(13, k)
    noisy = symmetric(y, k, rate, seed=3)
    changed = noisy != y
    assert int(changed.sum()) == int(rate * y.numel())  # exactly, never a flip to the same class
    assert noisy.min() >= 0 and noisy.max() < k


def test_symmetric_uniform_over_other_classes():
    y = torch.zeros(20000, dtype=torch.long)
    noisy = symmetric(y, 10, 0.9, seed=0)
    counts = torch.bincount(noisy[noisy != 0], minlength=10)
    assert counts[0] == 0
    expected = 18000 / 9
    assert ((counts[1:].float() - expected).abs() < 0.1 * expected).all()


def test_asym_cifar10_map_and_counts():
    y = _labels(40, 10)
    rate = 0.4
    noisy = make_noisy_labels(y, 10, "asym", rate, seed=1, dataset="cifar10")
    assert CIFAR10_ASYM == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for c in range(10):
        members = y == c
        flipped = members & (noisy != y)
        if c in CIFAR10_ASYM:
            assert int(flipped.sum()) == int(rate * int(members.sum()))
            assert (noisy[flipped] == CIFAR10_ASYM[c]).all()
        else:
            assert int(flipped.sum()) == 0
    assert int((noisy != y).sum()) == 5 * int(rate * 40)


def test_asym_cifar100_block_default_and_cyclic():
    block = asym_map("cifar100", 100)
    assert block[0] == 1 and block[3] == 4 and block[4] == 0 and block[9] == 5 and block[99] == 95
    assert all(v // 5 == c // 5 and v != c for c, v in block.items())
    cyclic = asym_map("cifar100", 100, "cyclic")
    assert cyclic[4] == 5 and cyclic[99] == 0 and cyclic[17] == 18
    y = _labels(7, 100)
    for variant, mapping in (("block", block), ("cyclic", cyclic)):
        noisy = make_noisy_labels(y, 100, "asym", 0.3, seed=2, dataset="cifar100", asym100=variant)
        changed = noisy != y
        assert int(changed.sum()) == 100 * int(0.3 * 7)
        assert all(int(n) == mapping[int(t)] for n, t in zip(noisy[changed], y[changed]))
    default = make_noisy_labels(y, 100, "asym", 0.3, seed=2, dataset="cifar100")
    assert torch.equal(default, asymmetric(y, block, 0.3, 2))


def test_asym_needs_cifar():
    with pytest.raises(ValueError, match="cifar10 and cifar100"):
        make_noisy_labels(_labels(), 10, "asym", 0.4, seed=0, dataset="digits")


def test_idn_rate_determinism_and_dependence_on_features():
    k, n, d = 10, 4000, 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    a = instance_dependent(x, y, k, 0.4, seed=5)
    b = instance_dependent(x, y, k, 0.4, seed=5)
    assert torch.equal(a, b)
    rate = float((a != y).float().mean())
    assert abs(rate - 0.4) < 0.03, rate
    assert not torch.equal(a, instance_dependent(x, y, k, 0.4, seed=6))
    assert not torch.equal(a, instance_dependent(x.flip(1), y, k, 0.4, seed=5))  # features matter
    assert torch.equal(instance_dependent(x, y, k, 0.0, seed=5), y)


@pytest.mark.parametrize(
    "noise,kw",
    [
        ("sym", {}),
        ("asym", {"dataset": "cifar10"}),
        ("idn", {"features": torch.randn(500, 12, generator=torch.Generator().manual_seed(1))}),
    ],
)
def test_same_seed_same_labels_other_seed_other_labels(noise, kw):
    y = _labels(50, 10)
    a = make_noisy_labels(y, 10, noise, 0.4, seed=11, **kw)
    assert torch.equal(a, make_noisy_labels(y, 10, noise, 0.4, seed=11, **kw))
    assert not torch.equal(a, make_noisy_labels(y, 10, noise, 0.4, seed=12, **kw))
    assert torch.equal(y, _labels(50, 10))  # input untouched


def test_none_and_bad_rate():
    y = _labels()
    assert torch.equal(make_noisy_labels(y, 10, "none", 0.4, seed=0), y)
    with pytest.raises(ValueError):
        make_noisy_labels(y, 10, "sym", 1.5, seed=0)
    with pytest.raises(ValueError):
        make_noisy_labels(y, 10, "pairflip", 0.4, seed=0)

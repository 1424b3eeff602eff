"""Label noise, fixed by a seed and kept per sample (``noisy != true`` marks the corrupted samples).

Noise types
-----------
``sym``    symmetric: exactly ``int(rate * N)`` samples, chosen uniformly without replacement, get a new
           label drawn uniformly from the *other* ``K - 1`` classes.
``asym``   class-dependent flips. CIFAR-10 (Patrini et al. 2017): truck->automobile, bird->airplane,
           deer->horse, cat<->dog. CIFAR-100: ``block`` (default, Patrini et al. 2017) maps each class to
           the next one within its block of 5 consecutive classes (4->0, 9->5, ...); ``cyclic`` is the
           SANER paper code's ``(y + 1) mod 100``. In every source class exactly ``int(rate * n_c)``
           samples (chosen uniformly) are flipped, so the realised overall rate is below ``rate`` for
           CIFAR-10 (only 5 of 10 classes are sources).
``idn``    instance-dependent noise of Xia et al., NeurIPS 2020, "Part-dependent Label Noise: Towards
           Instance-dependent Label Noise" (the ``get_instance_noisy_label`` generator of their code,
           used as "IDN" by most later papers): per sample a flip rate ``q_i ~ TruncNormal(rate, 0.1^2,
           [0, 1])``; a random projection ``W ~ N(0, 1)`` of shape ``(K, D, K)``; scores
           ``p = x_i @ W[y_i]`` with ``p[y_i] = -inf``; the label is drawn from
           ``q_i * softmax(p) + (1 - q_i) * onehot(y_i)``. ``x_i`` is the normalised flattened image.
           The count is random (expected ``rate * N``); the realised rate is reported.

All randomness comes from one ``torch.Generator`` seeded with ``seed`` on the CPU, so the noisy labels
depend only on (labels, features for idn, noise type, rate, seed), never on the device or global RNG.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NOISE_TYPES = ("none", "sym", "asym", "idn")
CIFAR10_ASYM = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck->automobile, bird->airplane, deer->horse, cat<->dog
CIFAR100_ASYM_VARIANTS = ("block", "cyclic")
CIFAR100_ASYM_DEFAULT = "block"
IDN_STD = 0.1


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def symmetric(labels: Tensor, num_classes: int, rate: float, seed: int) -> Tensor:
    labels = labels.cpu().long()
    n = labels.numel()
    g = _gen(seed)
    count = int(rate * n)
    idx = torch.randperm(n, generator=g)[:count]
    # uniform over the other K-1 classes: offset in [1, K-1] added modulo K
    offset = torch.randint(1, num_classes, (count,), generator=g)
    noisy = labels.clone()
    noisy[idx] = (labels[idx] + offset) % num_classes
    return noisy


def asym_map(dataset: str, num_classes: int, variant: str = CIFAR100_ASYM_DEFAULT) -> dict[int, int]:
    if dataset == "cifar10":
        return dict(CIFAR10_ASYM)
    if dataset == "cifar100":
        if variant == "block":
            return {c: (c // 5) * 5 + (c % 5 + 1) % 5 for c in range(num_classes)}
        if variant == "cyclic":
            return {c: (c + 1) % num_classes for c in range(num_classes)}
        raise ValueError(f"unknown CIFAR-100 asymmetric variant {variant!r}; choose one of {CIFAR100_ASYM_VARIANTS}")
    raise ValueError(f"asymmetric noise is defined for cifar10 and cifar100, not {dataset!r}; use --noise sym or idn")


def asymmetric(labels: Tensor, mapping: dict[int, int], rate: float, seed: int) -> Tensor:
    labels = labels.cpu().long()
    g = _gen(seed)
    noisy = labels.clone()
    for src in sorted(mapping):
        members = torch.nonzero(labels == src).flatten()
        count = int(rate * members.numel())
        chosen = members[torch.randperm(members.numel(), generator=g)[:count]]
        noisy[chosen] = mapping[src]
    return noisy


def _trunc_normal(n: int, mean: float, std: float, lo: float, hi: float, g: torch.Generator) -> Tensor:
    """Inverse-CDF sampling of a normal truncated to [lo, hi] (float64)."""
    ndtr = torch.special.ndtr
    a = ndtr(torch.tensor((lo - mean) / std, dtype=torch.float64))
    b = ndtr(torch.tensor((hi - mean) / std, dtype=torch.float64))
    u = a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)
    u = u.clamp(1e-12, 1 - 1e-12)
    return (mean + std * torch.special.ndtri(u)).clamp(lo, hi)


def instance_dependent(
    features: Tensor, labels: Tensor, num_classes: int, rate: float, seed: int, std: float = IDN_STD
) -> Tensor:
    labels = labels.cpu().long()
    x = features.detach().cpu().reshape(labels.numel(), -1).double()
    n, d = x.shape
    g = _gen(seed)
    q = _trunc_normal(n, rate, std, 0.0, 1.0, g) if rate > 0 else torch.zeros(n, dtype=torch.float64)
    w = torch.randn(num_classes, d, num_classes, generator=g, dtype=torch.float64)
    scores = torch.empty(n, num_classes, dtype=torch.float64)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel():
            scores[idx] = x[idx] @ w[c]
    scores[torch.arange(n), labels] = -math.inf
    p = q[:, None] * torch.softmax(scores, dim=1)
    p[torch.arange(n), labels] += 1 - q
    return torch.multinomial(p.clamp_min(0), 1, generator=g).flatten()


def make_noisy_labels(
    labels: Tensor,
    num_classes: int,
    noise: str,
    rate: float,
    seed: int,
    *,
    dataset: str = "",
    features: Tensor | None = None,
    asym100: str = CIFAR100_ASYM_DEFAULT,
) -> Tensor:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if noise == "none" or rate == 0.0:
        return labels.cpu().long().clone()
    if noise == "sym":
        return symmetric(labels, num_classes, rate, seed)
    if noise == "asym":
        return asymmetric(labels, asym_map(dataset, num_classes, asym100), rate, seed)
    if noise == "idn":
        if features is None:
            raise ValueError("instance-dependent noise needs the features")
        return instance_dependent(features, labels, num_classes, rate, seed)
    raise ValueError(f"unknown noise type {noise!r}; choose one of {NOISE_TYPES}")

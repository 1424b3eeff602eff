"""Model definitions whose parameter shapes the benchmarks use (CIFAR-style, 32x32 inputs).

These are the standard architectures the SAM/SANER papers train on, written here so the benchmark
does not depend on the training package:

- Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation basic blocks, no conv biases,
  as in davda54/sam's ``example/model/wide_res_net.py``: WRN-28-10 has 36,479,194 parameters
  in 80 tensors for 10 classes.
- ResNet-18, CIFAR variant (3x3 stem, no max-pool; Kuang Liu's ``pytorch-cifar``): 11,173,962
  parameters in 62 tensors for 10 classes.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class _WideBasic(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        layers, in_planes = [], widths[0]
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                layers.append(_WideBasic(in_planes, widths[i + 1], stride if j == 0 else 1, dropout))
                in_planes = widths[i + 1]
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for s in (stride, 1):
                layers.append(_BasicBlock(in_planes, planes, s))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """``wrn-D-K`` (any valid depth/width) or ``resnet18``: the training package's definition
    (``saner_kernels.train.models``) when it is importable, else the identical one here."""
    try:
        from saner_kernels.train.models import build_model as project_build
    except Exception:
        project_build = None
    if project_build is not None:
        try:
            return project_build(name, num_classes)
        except Exception:
            pass
    return build_local_model(name, num_classes)


def build_local_model(name: str, num_classes: int = 10) -> nn.Module:
    """The definitions of this file (same shapes as the training package's, checked by a test)."""
    key = name.lower()
    if key.startswith("wrn-"):
        try:
            depth, widen = (int(x) for x in key[4:].split("-"))
        except ValueError:
            raise ValueError(f"model {name!r}: expected wrn-DEPTH-WIDTH, e.g. wrn-28-10") from None
        return WideResNet(depth, widen, num_classes)
    if key in ("resnet18", "resnet-18"):
        return ResNet18(num_classes)
    raise ValueError(f"unknown model {name!r}; use wrn-D-K (e.g. wrn-28-10, wrn-16-8) or resnet18")

"""Models: Wide-ResNets (Zagoruyko & Komodakis 2016), CIFAR-style ResNet-18/34 (He et al. 2016, the
3x3-stem variant used for 32x32 inputs), CIFAR-style DenseNet-121 (Huang et al. 2017), the ImageNet-style
ResNet-50 and ResNet-18 for 224-pixel inputs (Mini-WebVision), and a small conv net for the 8x8 digits.

Names: ``wrn28-10``, ``wrn40-2``, ``wrn16-8`` (any ``wrnD-K`` with (D-4) divisible by 6), ``resnet18``,
``resnet34``, ``densenet121``, ``resnet50``, ``resnet18-imagenet``, ``smallcnn``.

Mini-WebVision model: ResNet-50, not the InceptionResNetV2 of the SANER paper's Table 2. ResNet-50 is the
common choice for Mini-WebVision in the noisy-label literature and one of the authors' own options
(``resnet50_webvision``); it has 2.2x fewer parameters (25.6M vs 55.8M), so each of SAM's two passes is
cheaper; and it is torchvision's well-known architecture, whose published parameter count the tests check
(the paper's other Mini-WebVision model, the authors' ``resnet18_webvision``, is ``resnet18-imagenet``).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS = (
    "smallcnn",
    "wrn28-10",
    "wrn40-2",
    "wrn16-8",
    "resnet18",
    "resnet34",
    "densenet121",
    "resnet50",
    "resnet18-imagenet",
)


class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3, 1x1 conv shortcut on shape change."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for _i, (w, s) in enumerate(zip(widths[1:], (1, 2, 2))):
            for j in range(n):
                layers.append(WideBasic(cin, w, s if j == 0 else 1, dropout))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.blocks(self.conv(x))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, projection shortcut on shape change (torchvision's
    ResNet v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """``stem="cifar"``: one 3x3 conv, no downsampling (32-64 pixel inputs). ``stem="imagenet"``: 7x7 stride-2
    conv and 3x3 stride-2 max-pool (224-pixel inputs), as torchvision's resnet18/50."""

    def __init__(
        self, blocks: list[int], num_classes: int, in_channels: int = 3, block=BasicBlock, stem: str = "cifar"
    ):
        super().__init__()
        expansion = getattr(block, "expansion", 1)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for w, n, s in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            for j in range(n):
                layers.append(block(cin, w, s if j == 0 else 1))
                cin = w * expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.layers(self.pool(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4 x growth)-BN-ReLU-conv3x3 (growth), output concatenated to the input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 halving the channels, 2x2 average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for CIFAR-sized inputs (the variant of the SANER authors' code): a 3x3 stem conv with
    2 x growth channels and no pooling, dense blocks joined by compression-0.5 transitions."""

    def __init__(self, blocks: list[int], growth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        layers = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers.append(Transition(c, c // 2))
                c //= 2
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SmallCNN(nn.Module):
    """Three 3x3 conv-BN-ReLU layers, one 2x2 max-pool, global average pool, linear head (for 8x8 digits)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(4 * w, num_classes)
        _init(self)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def build_model(name: str, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.0) -> nn.Module:
    name = name.lower()
    m = re.fullmatch(r"wrn-?(\d+)-(\d+)", name)
    if m:
        return WideResNet(int(m.group(1)), int(m.group(2)), num_classes, in_channels, dropout)
    if name == "resnet18":
        return ResNet([2, 2, 2, 2], num_classes, in_channels)
    if name == "resnet34":
        return ResNet([3, 4, 6, 3], num_classes, in_channels)
    if name == "densenet121":
        return DenseNet([6, 12, 24, 16], 32, num_classes, in_channels)
    if name == "resnet50":  # the Mini-WebVision model (see the module doc for why not InceptionResNetV2)
        return ResNet([3, 4, 6, 3], num_classes, in_channels, block=Bottleneck, stem="imagenet")
    if name == "resnet18-imagenet":
        return ResNet([2, 2, 2, 2], num_classes, in_channels, stem="imagenet")
    if name == "smallcnn":
        return SmallCNN(num_classes, in_channels, width)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS} (or any wrnD-K)")

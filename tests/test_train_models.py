"""saner-train models: parameter counts against the published figures, output shapes at the input sizes they are
used with."""

import pytest
import torch

from saner_kernels.train.models import build_model

torch.set_num_threads(1)

# torchvision's published ImageNet (1000-class) figures: resnet18 11,689,512, resnet50 25,557,032,
# densenet121 7,978,856 (pytorch.org/vision/stable/models).
TORCHVISION_DENSENET121 = 7_978_856
# The CIFAR DenseNet-121 (3x3 stem with 64 channels, no norm0/max-pool, 10 classes; 6.96M as usually quoted) is
# torchvision's minus its 7x7 stem conv (3*64*49) and norm0 (2*64), plus the 3x3 stem (3*64*9), with a 10-class
# head (1024*10 + 10) instead of the 1000-class one (1024*1000 + 1000).
CIFAR_DENSENET121 = (
    TORCHVISION_DENSENET121 - 3 * 64 * 49 - 2 * 64 + 3 * 64 * 9 - (1024 * 1000 + 1000) + (1024 * 10 + 10)
)

PUBLISHED = [
    ("resnet50", 1000, 25_557_032),  # torchvision resnet50: the Mini-WebVision model
    ("resnet18-imagenet", 1000, 11_689_512),  # torchvision resnet18: the authors' resnet18_webvision
    ("densenet121", 10, CIFAR_DENSENET121),  # = 6,956,298
    ("resnet18", 10, 11_173_962),  # CIFAR ResNet-18 (3x3 stem), 11.17M as quoted for CIFAR-10
    ("resnet34", 10, 21_282_122),  # CIFAR ResNet-34, 21.28M
]
# Zagoruyko & Komodakis 2016, Table 1 (in millions, one decimal): WRN-28-10 36.5M, WRN-40-2 2.2M
PUBLISHED_MILLIONS = [("wrn28-10", 10, 36.5), ("wrn40-2", 10, 2.2)]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,classes,expected", PUBLISHED)
def test_parameter_counts_match_published(name, classes, expected):
    assert n_params(build_model(name, classes)) == expected


@pytest.mark.parametrize("name,classes,millions", PUBLISHED_MILLIONS)
def test_wide_resnet_parameter_counts(name, classes, millions):
    assert round(n_params(build_model(name, classes)) / 1e6, 1) == millions


def test_densenet121_value():
    assert CIFAR_DENSENET121 == 6_956_298


@pytest.mark.parametrize(
    "name,size", [("densenet121", 32), ("densenet121", 64), ("resnet50", 64), ("resnet18-imagenet", 224)]
)
def test_forward_shapes(name, size):
    model = build_model(name, 50).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 50)


def test_cifar_resnet_unchanged_by_the_imagenet_stem():
    """The CIFAR ResNet keeps its state-dict names (checkpoints written before the ImageNet stem still load)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    keys = list(model.state_dict())
    assert keys[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"] and not any(k.startswith("pool") for k in keys)
    assert model.conv1.weight.shape == (64, 3, 3, 3)

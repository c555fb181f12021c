"""ResNet-w against an independent oracle: torchvision's own ResNet rebuilt as DESIGN.md says."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from ptmz.errors import ConfigError
from ptmz.models import build_model


def torchvision_width_resnet(block, layers, width, in_channels, classes) -> nn.Module:
    """torchvision's ResNet with planes w, 2w, 4w, 8w and the CIFAR stem."""
    net = TorchvisionResNet(block, layers, num_classes=classes)
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, 2 * width, layers[1], stride=2)
    net.layer3 = net._make_layer(block, 4 * width, layers[2], stride=2)
    net.layer4 = net._make_layer(block, 8 * width, layers[3], stride=2)
    net.fc = nn.Linear(8 * width * block.expansion, classes)
    return net


@pytest.mark.parametrize(
    "name, block, layers, width, channels, classes",
    [
        ("resnet18", BasicBlock, [2, 2, 2, 2], 4, 3, 10),
        ("resnet34", BasicBlock, [3, 4, 6, 3], 2, 1, 7),
        ("resnet50", Bottleneck, [3, 4, 6, 3], 2, 3, 100),
    ],
)
def test_loads_torchvision_state_dict_strictly_and_gives_same_logits(
    name, block, layers, width, channels, classes
):
    torch.manual_seed(0)
    oracle = torchvision_width_resnet(block, layers, width, channels, classes)
    x = torch.randn(4, channels, 16, 16)
    oracle.train()
    oracle(x)  # move BN running statistics away from their initial values
    ours = build_model(name, width, channels, classes)
    assert list(ours.state_dict()) == list(oracle.state_dict())
    ours.load_state_dict(oracle.state_dict(), strict=True)
    for mode in (False, True):
        oracle.train(mode)
        ours.train(mode)
        with torch.no_grad():
            assert torch.equal(ours(x), oracle(x))


def test_published_init():
    torch.manual_seed(0)
    net = build_model("resnet18", 8, 3, 10)
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            fan_in = module.weight[0].numel()
            bound = math.sqrt(6 / fan_in)  # kaiming_uniform_, a=0, fan_in, leaky_relu gain
            w = module.weight.abs()
            assert w.max() <= bound and w.max() > 0.8 * bound
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert torch.all(net.fc.bias == 0.01)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    assert net.fc.in_features == 64 and net.layer4[0].conv1.out_channels == 64


def test_unknown_model_and_bad_width_are_named():
    with pytest.raises(ConfigError, match=r"model='vgg'.*resnet101, resnet152, resnet18"):
        build_model("vgg", 8, 3, 10)
    with pytest.raises(ConfigError, match=r"width=0 .*positive"):
        build_model("resnet18", 0, 3, 10)

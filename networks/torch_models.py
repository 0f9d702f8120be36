"""PyTorch models for the trainer (SPEC §3): Wide ResNets for CIFAR and ResNet-50 for ImageNet.

``wresnet<d>_<k>`` is the pre-activation Wide ResNet WRN-d-k used by the AutoAugment line of work
(and by DeepAA's evaluation): a 3x3 stem with 16 channels, three groups of (d - 4) / 6 basic
blocks with 16k, 32k, 64k channels (the second and third groups halve the resolution in the
second convolution of their first block), batch norm + ReLU before each convolution, a 1x1
projection shortcut where the shape changes, a final BN-ReLU, global average pooling and a
linear classifier. Convolutions carry a bias, batch-norm momentum is 0.1 and weights keep
PyTorch's default initialisation, as in the released evaluation code. ``dropout`` defaults to 0
(the released configs never set it).

``resnet50`` is torchvision's ResNet-50 with random initialisation, which is the released
trainer's ResNet-50 in all but parameter names: a 7x7 stride-2 stem and max-pool, bottlenecks with
the stride in the 3x3 convolution, 1x1 + BN projection shortcuts, convolutions without bias drawn
from N(0, 2 / (k * k * out_channels)), every batch norm starting at weight 1 and bias 0 (the
released blocks zero their last BN weight, but its network-wide init sets it back to 1) and
PyTorch's default initialisation of the final linear layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .names import is_train_model, train_wrn



class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3(stride) + shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.1)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes, momentum=0.1)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x):
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-width (see the module docstring); depth must be 6n + 4."""

    def __init__(self, depth: int, width: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"Wide ResNet width must be >= 1, got {width}")
        n = (depth - 4) // 6
        stages = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, stages[0], 3, padding=1, bias=True)
        in_planes = stages[0]
        groups = []
        for planes, stride in zip(stages[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn1 = nn.BatchNorm2d(stages[3], momentum=0.1)
        self.linear = nn.Linear(stages[3], num_classes)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def is_model_name(name: str) -> bool:
    return is_train_model(name)


def get_model(name: str, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build a model by its config name (``wresnet28_10``, ``wresnet40_2``, ``resnet50``, ...)."""
    wrn = train_wrn(name)
    if wrn:
        return WideResNet(*wrn, num_classes, dropout)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; expected wresnet<depth>_<width> with depth = "
                     "6n + 4 (e.g. wresnet28_10) or resnet50")


def batchnorm_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """All parameters owned by batch-norm layers (excluded from weight decay, SPEC §3)."""
    return [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)]

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

``search_model`` builds the models of the PyTorch search (``--backend torch``, SPEC §2): the
Wide ResNet as the same function as the Keras search model of ``networks.tf_models`` (batch
norm ε = 1e-3, Keras' default, and TensorFlow's "same" padding, which pads a strided 3x3
convolution of an even-sized input by one pixel on the bottom and right only), so that
weights convert between the two (``networks.convert_weights``), and torchvision's ResNet-50
with its last BN weight of each block at zero. Both start from Keras' initialisation (He
truncated normal convolutions, Glorot uniform classifier, zero biases); ``search_l2`` names the
weights the Keras models penalise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .names import RESNET50_L2, WRN_L2, is_train_model, search_wrn, train_wrn

SEARCH_BN_EPS = 1e-3  # Keras' BatchNormalization default, that of the TF search WRN



class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3(stride) + shortcut.
    With ``same_padding`` a strided second convolution pads as TensorFlow's "same" does."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float,
                 bn_eps: float = 1e-5, same_padding: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, eps=bn_eps, momentum=0.1)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps, momentum=0.1)
        self.same_pad = same_padding and stride > 1
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=0 if self.same_pad else 1,
                               bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x):
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = F.relu(self.bn2(out))
        if self.same_pad:
            out = F.pad(out, same_padding(out.shape[-2:], 3, self.conv2.stride[0]))
        return self.conv2(out) + self.shortcut(x)


def same_padding(size, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) of TensorFlow's "same" padding for an input of
    ``size`` (H, W): the output has ceil(n / stride) pixels and any odd pixel of padding goes
    after, not before."""
    pads = []
    for n in (int(size[1]), int(size[0])):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class WideResNet(nn.Module):
    """WRN-depth-width (see the module docstring); depth must be 6n + 4."""

    def __init__(self, depth: int, width: int, num_classes: int, dropout: float = 0.0,
                 bn_eps: float = 1e-5, same_padding: bool = False):
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
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout,
                                        bn_eps, same_padding))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn1 = nn.BatchNorm2d(stages[3], eps=bn_eps, momentum=0.1)
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


def search_model(name: str, num_classes: int) -> nn.Module:
    """The search model called ``name`` (``--use_model``: ``WRN_<d>_<k>`` or ``resnet50``) for
    the PyTorch search, with Keras' initialisation (see the module docstring)."""
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None, num_classes=num_classes,
                                            zero_init_residual=True)
    else:
        wrn = search_wrn(name)
        if wrn is None:
            raise ValueError(f"unknown model {name!r}; expected WRN_<depth>_<width> with depth "
                             "= 6n + 4 (e.g. WRN_40_2) or resnet50")
        model = WideResNet(*wrn, num_classes, dropout=0.0, bn_eps=SEARCH_BN_EPS,
                           same_padding=True)
    keras_init(model)
    return model


def keras_init(model: nn.Module) -> None:
    """Keras' initialisation of the TF search models: convolutions He truncated normal
    (σ = √(2 / fan_in) / 0.8796, cut at 2σ), the classifier Glorot uniform, biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def search_l2(name: str, model: nn.Module) -> tuple[float, list[torch.nn.Parameter]]:
    """(coefficient, parameters) of the search model's L2 penalty c · Σ w², the weights the
    Keras models regularise (SPEC §2): a WRN's convolution kernels and biases and its
    classifier's kernel; ResNet-50's convolution kernels and its classifier's kernel and bias."""
    convs = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if name == "resnet50":
        return RESNET50_L2, convs + [p for m in head for p in m.parameters()]
    return WRN_L2, convs + [m.weight for m in head]

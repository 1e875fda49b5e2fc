"""CIFAR-style ResNets (He et al. 2016) with a width divisor and an optional no-skip ablation.

Unlike the ImageNet ResNet, the stem is a single 3x3 convolution with stride 1 and no
max-pool, so that 32x32 (or even 8x8) inputs keep enough spatial extent for four stages.

Module names (used as CSV column names by the layer-wise analyses)::

    conv1, bn1                              stem
    layer{1-4}.{i}.conv{1-3}, .bn{1-3}      residual blocks (conv3/bn3 only in Bottleneck)
    layer{1-4}.{i}.shortcut.conv, .bn       projection shortcut, where the shape changes
    avgpool, fc                             head; ``fc`` is the classifier
"""
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free conv (the BN after it has its own shift) with 'same' padding, and its BN."""
    padding = kernel_size // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    conv, bn = _conv_bn(in_channels, out_channels, 1, stride)
    return nn.Sequential(OrderedDict(conv=conv, bn=bn))


class _ResidualBlock(nn.Module):
    """Shared skip logic: ``relu(residual(x) + shortcut(x))``, or ``relu(residual(x))`` without skip."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        out_channels = planes * self.expansion
        # A projection is needed only where the identity would not match the residual's shape;
        # without skip there is nothing to project, so no parameters are spent on it.
        if skip and (stride != 1 or in_channels != out_channels):
            self.shortcut = _projection(in_channels, out_channels, stride)
        else:
            self.shortcut = None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs; ``planes`` output channels; used by ResNet-18/34."""

    def __init__(self, in_channels: int, planes: int, stride: int, skip: bool) -> None:
        super().__init__(in_channels, planes, stride, skip)
        self.conv1, self.bn1 = _conv_bn(in_channels, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand to ``4 * planes`` channels; used by ResNet-50."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, skip: bool) -> None:
        super().__init__(in_channels, planes, stride, skip)
        self.conv1, self.bn1 = _conv_bn(in_channels, planes, 1, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1, 1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


# depth -> (block type, number of blocks in each of the four stages)
RESNET_DEPTHS: dict[int, tuple[type[_ResidualBlock], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """CIFAR-style ResNet.

    Input ``(N, in_channels, H, W)`` with any ``H, W >= 1``; output logits ``(N, num_classes)``.
    Stage ``k`` (1-4) has ``width * 2**(k-1)`` planes; stages 2-4 halve the spatial size.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int,
        width: int = 64,
        skip: bool = True,
    ) -> None:
        super().__init__()
        block, blocks_per_stage = RESNET_DEPTHS[depth]
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 3, 1)
        channels = width
        for index, num_blocks in enumerate(blocks_per_stage):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(block(channels, planes, stride if block_index == 0 else 1, skip))
                channels = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        # Adaptive pooling makes the head independent of the input resolution.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def resnet_factory(depth: int, width_divisor: int) -> Callable[..., ResNet]:
    """Registry factory for ResNet-``depth`` whose base width is ``64 // width_divisor``."""

    def factory(num_classes: int, in_channels: int, resolution: int, *, noskip: bool = False) -> ResNet:
        """Build an untrained CIFAR-style ResNet.

        ``resolution`` (pixels per side) is accepted for the common factory signature; the
        network works at any resolution.

        Args:
            noskip: remove every residual connection and projection shortcut (a plain deep
                CNN with the same residual branches), for ablations.
        """
        return ResNet(depth, num_classes, in_channels, width=64 // width_divisor, skip=not noskip)

    return factory

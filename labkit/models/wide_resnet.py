"""Wide ResNet (Zagoruyko & Komodakis 2016), CIFAR variant WRN-``depth``-``widen_factor``.

Three stages of pre-activation basic blocks with ``16k, 32k, 64k`` channels
(``k = widen_factor``) and ``n = (depth - 4) / 6`` blocks each.

Module names (used as CSV column names by the layer-wise analyses)::

    conv1                                          stem
    layer{1-3}.{i}.bn1, .conv1, .dropout, .bn2, .conv2
    layer{1-3}.{i}.shortcut                        1x1 projection, where the shape changes
    bn, avgpool, fc                                head; ``fc`` is the classifier
"""
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.errors import UserError


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        # As in the reference implementation, a projection reads the pre-activated input,
        # while the identity carries the raw one.
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.dropout(F.relu(self.bn2(self.conv1(activated))))
        return self.conv2(out) + shortcut


def _check_params(depth: int, widen_factor: int, dropout: float) -> None:
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(
            f"wide_resnet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...); got {depth}. "
            "Set `depth` to one of those values."
        )
    if widen_factor < 1:
        raise UserError(
            f"wide_resnet widen_factor must be at least 1; got {widen_factor}. Set `widen_factor` >= 1."
        )
    if not 0.0 <= dropout < 1.0:
        raise UserError(
            f"wide_resnet dropout is a probability in [0, 1); got {dropout}. Set `dropout` in that range."
        )


class WideResNet(nn.Module):
    """WRN for input ``(N, in_channels, H, W)``, any ``H, W >= 1``; output logits ``(N, num_classes)``."""

    def __init__(
        self, depth: int, widen_factor: int, dropout: float, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        _check_params(depth, widen_factor, dropout)
        blocks_per_stage = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        channels = 16
        for index in range(3):
            width = 16 * widen_factor * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(WideBasicBlock(channels, width, stride if block_index == 0 else 1, dropout))
                channels = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        # Pre-activation blocks end on a conv, so the head normalises and activates first.
        self.bn = nn.BatchNorm2d(channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def wide_resnet(
    num_classes: int,
    in_channels: int,
    resolution: int,
    *,
    depth: int = 16,
    widen_factor: int = 4,
    dropout: float = 0.0,
) -> WideResNet:
    """Build an untrained WRN-``depth``-``widen_factor``.

    ``resolution`` (pixels per side) is accepted for the common factory signature; the
    network works at any resolution.

    Args:
        depth: number of layers, 6n+4.
        widen_factor: width multiplier of the blocks.
        dropout: drop probability between the two convs of each block.
    """
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels)

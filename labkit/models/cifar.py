"""The CIFAR model zoo of the distillation literature, and ResNets by block counts.

* ``resnet8 … resnet110``: the CIFAR ResNets of He et al. (2016, section 4.2) as TAKD
  (Mirzadeh et al. 2020), HKD and RepDistiller train them: a 3x3 stem of 16 channels, three
  stages of 16, 32 and 64 channels with ``(depth − 2) / 6`` basic blocks each (stride 2
  at the first block of stages 2 and 3), global average pooling and ``fc``. Shortcuts
  that change shape are 1x1 convolutions with BatchNorm (He et al.'s option B, as in
  RepDistiller's ``models/resnet.py``); resnet20 has 0.27 M parameters, resnet56
  0.86 M, resnet110 1.7 M (10 classes).
* ``plain_cnn2 … plain_cnn10``: TAKD's plain CNNs ("plane2" … "plane10", the CIFAR-10
  configurations): 2–10 3x3 conv-BN-ReLU layers in stages closed by 2x2 max-pools, then
  the flattened map, an optional hidden ``Linear``-ReLU (``fc1``, ``relu_fc1``) and ``fc``.
  The map is average-pooled to the size it has at 32 px, so the head is TAKD's at 32 px
  and the network works at any resolution >= 8 (a pool that would shrink a map below
  one pixel is left out, as in :class:`labkit.models.vgg.PlainConvNet`).
* ``resnet_blocks``: a ResNet of basic blocks by block counts per stage
  (``blocks: [1, 1, 1, 1]`` … ``[2, 2, 2, 2]``, as in the model-stitching literature's
  "ResNet 1111 … 2222"), stage k of ``width·2^(k−1)`` channels. ``[2, 2, 2, 2]`` with the
  default ``width`` 64 is exactly ``resnet18`` (same modules, same names).

Module names (used as CSV column names by the layer-wise analyses), as in
:mod:`labkit.models.resnet` and :mod:`labkit.models.vgg`::

    conv1, bn1                          ResNet stem
    layer{k}.{i}.conv{1,2}, .bn{1,2}    basic block i of stage k (its output: ``layer{k}.{i}``)
    layer{k}.{i}.shortcut.conv, .bn     projection shortcut, where the shape changes
    avgpool, fc                         ResNet head
    block{s}.conv{i}, .bn{i}, .relu{i}  plain CNN: i-th conv of stage s
    block{s}.pool                       its 2x2 max-pool
    avgpool, flatten, fc1, relu_fc1, fc plain CNN head (``fc1`` only where TAKD has it)
"""
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.errors import UserError
from labkit.models.resnet import BasicBlock, _conv_bn
from labkit.models.vgg import conv_stages

CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
CIFAR_RESNET_WIDTHS = (16, 32, 64)

# depth (number of conv layers) -> ((width, convs) per stage, hidden units of fc1 or None);
# TAKD's CIFAR-10 "plane" networks
PLAIN_CNNS: dict[int, tuple[tuple[tuple[int, int], ...], int | None]] = {
    2: (((16, 1), (16, 1)), None),
    4: (((16, 2), (32, 2)), None),
    6: (((16, 2), (32, 2), (64, 2)), None),
    8: (((16, 2), (32, 2), (64, 2), (128, 2)), 64),
    10: (((32, 2), (64, 2), (128, 2), (256, 4)), 128),
}
REFERENCE_RESOLUTION = 32  # the plain CNNs' head is sized for 32x32 inputs, as in TAKD


class StageResNet(nn.Module):
    """A ResNet of basic blocks with any number of stages, blocks and widths.

    Input ``(N, in_channels, H, W)`` with any ``H, W >= 1``; output logits
    ``(N, num_classes)``. Stage k has ``blocks[k]`` blocks of ``widths[k]`` channels;
    every stage after the first halves the spatial size in its first block.
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int,
                 in_channels: int, skip: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, widths[0], 3, 1)
        channels = widths[0]
        self.stages = [f"layer{index + 1}" for index in range(len(blocks))]
        for index, (num_blocks, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(num_blocks):
                stage.append(BasicBlock(channels, width, stride if block_index == 0 else 1, skip))
                channels = width
            setattr(self, self.stages[index], nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            out = getattr(self, name)(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


def cifar_resnet_factory(depth: int) -> Callable[..., StageResNet]:
    """Registry factory for the CIFAR ResNet-``depth`` (depth = 6n + 2)."""
    per_stage = (depth - 2) // 6

    def factory(num_classes: int, in_channels: int, resolution: int, *,
                noskip: bool = False) -> StageResNet:
        """Build an untrained CIFAR ResNet (three stages of 16/32/64 channels).

        ``resolution`` (pixels per side) is accepted for the common factory signature; the
        network works at any resolution.

        Args:
            noskip: remove every residual connection.
        """
        return StageResNet([per_stage] * 3, CIFAR_RESNET_WIDTHS, num_classes, in_channels,
                           skip=not noskip)

    return factory


def resnet_blocks(num_classes: int, in_channels: int, resolution: int, *,
                  blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 64,
                  noskip: bool = False) -> StageResNet:
    """Build an untrained ResNet of basic blocks with ``blocks[k]`` blocks in stage k.

    Args:
        blocks: blocks per stage, one entry per stage (1 to 6 stages, each >= 1 block);
            ``[1, 1, 1, 1]`` is the "ResNet 1111" of stitching studies, ``[2, 2, 2, 2]``
            is ResNet-18.
        width: channels of the first stage; stage k has ``width·2^(k−1)``.
        noskip: remove every residual connection (a plain CNN with the same branches).
        resolution: accepted for the common factory signature; any resolution works.

    Raises:
        UserError: an empty ``blocks``, a stage without blocks, or ``width < 1``.
    """
    if not 1 <= len(blocks) <= 6 or min(blocks) < 1 or width < 1:
        raise UserError(f"resnet_blocks blocks={list(blocks)}, width={width}: give 1 to 6 "
                        f"stages of at least one block each, e.g. \"blocks\": [1, 1, 1, 1], "
                        f"and a width >= 1")
    widths = [width * 2**index for index in range(len(blocks))]
    return StageResNet(blocks, widths, num_classes, in_channels, skip=not noskip)


class TakdPlainCNN(nn.Sequential):
    """TAKD's plain CNN with ``depth`` conv layers (see the module docstring).

    Input ``(N, in_channels, resolution, resolution)``; output logits ``(N, num_classes)``.
    """

    def __init__(self, depth: int, num_classes: int, in_channels: int, resolution: int) -> None:
        stages, hidden = PLAIN_CNNS[depth]
        layers, in_channels = conv_stages(stages, in_channels, resolution)
        side = REFERENCE_RESOLUTION // 2 ** len(stages)
        layers["avgpool"] = nn.AdaptiveAvgPool2d(side)
        layers["flatten"] = nn.Flatten()
        features = in_channels * side * side
        if hidden is not None:
            layers["fc1"] = nn.Linear(features, hidden)
            layers["relu_fc1"] = nn.ReLU()
            features = hidden
        layers["fc"] = nn.Linear(features, num_classes)
        super().__init__(layers)


def plain_cnn_factory(depth: int) -> Callable[..., TakdPlainCNN]:
    """Registry factory for ``plain_cnn{depth}`` (``depth`` a key of :data:`PLAIN_CNNS`)."""

    def factory(num_classes: int, in_channels: int, resolution: int) -> TakdPlainCNN:
        """Build an untrained plain CNN of TAKD for square inputs of ``resolution`` pixels."""
        return TakdPlainCNN(depth, num_classes, in_channels, resolution)

    return factory

"""VGG with BatchNorm (Simonyan & Zisserman 2015), and the plain conv-stack builder it shares
with the small CNN family.

The head is CIFAR-style: global average pooling to 1x1 followed by a single ``Linear``
(instead of the ImageNet 4096-4096 MLP, which would dominate the parameter count and
overfit on small data sets).

Module names (used as CSV column names by the layer-wise analyses)::

    block{s}.conv{i}, .bn{i}, .relu{i}   i-th conv of stage s
    block{s}.pool                        2x2 max-pool closing stage s (absent where skipped)
    avgpool, flatten, fc                 head; ``fc`` is the classifier
"""
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

VGG_WIDTHS = (64, 128, 256, 512, 512)

# depth -> number of 3x3 convs in each of the five stages
VGG_DEPTHS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def _stage(in_channels: int, width: int, num_convs: int, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for index in range(1, num_convs + 1):
        # No conv bias: the BatchNorm right after it has its own shift.
        layers[f"conv{index}"] = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers[f"bn{index}"] = nn.BatchNorm2d(width)
        layers[f"relu{index}"] = nn.ReLU()
        in_channels = width
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def conv_stages(stages: Sequence[tuple[int, int]], in_channels: int,
                resolution: int) -> tuple[OrderedDict[str, nn.Module], int]:
    """The ``block1``, ``block2``, … stages of ``(width, number of convs)`` each, a stage's
    max-pool left out once the map is smaller than 2x2; returns them and the last width."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size = resolution
    for index, (width, num_convs) in enumerate(stages, start=1):
        pool = size >= 2
        layers[f"block{index}"] = _stage(in_channels, width, num_convs, pool)
        size = size // 2 if pool else size
        in_channels = width
    return layers, in_channels


class PlainConvNet(nn.Sequential):
    """Stages of 3x3 conv-BN-ReLU, each closed by a 2x2 max-pool, then pool-to-1x1 and ``fc``.

    A stage's max-pool is left out when the feature map entering it is smaller than 2x2,
    because pooling would shrink it to 0 pixels; this keeps deep stacks usable at small
    resolutions (e.g. VGG at 8x8 pools only after the first three stages).

    Input ``(N, in_channels, resolution, resolution)``; output logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, int]],
        num_classes: int,
        in_channels: int,
        resolution: int,
    ) -> None:
        """``stages``: one ``(width, number of convs)`` pair per stage; ``resolution`` in pixels per side."""
        layers, in_channels = conv_stages(stages, in_channels, resolution)
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(in_channels, num_classes)
        super().__init__(layers)


def plain_convnet_factory(stages: Sequence[tuple[int, int]]) -> Callable[..., PlainConvNet]:
    """Registry factory for a :class:`PlainConvNet` with fixed ``(width, number of convs)`` stages."""

    def factory(num_classes: int, in_channels: int, resolution: int) -> PlainConvNet:
        """Build an untrained conv-BN-ReLU stack for square inputs of ``resolution`` pixels per side."""
        return PlainConvNet(stages, num_classes, in_channels, resolution)

    return factory


def vgg_factory(depth: int, width_divisor: int) -> Callable[..., PlainConvNet]:
    """Registry factory for VGG-``depth``-BN with every stage width divided by ``width_divisor``."""
    widths = [width // width_divisor for width in VGG_WIDTHS]
    return plain_convnet_factory(list(zip(widths, VGG_DEPTHS[depth], strict=True)))

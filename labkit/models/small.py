"""Small models for quick experiments: LeNet-5, a small CNN family and an MLP family.

Every model is an ``nn.Sequential`` whose last module, the classifier, is named ``fc``.
"""
from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from labkit.core.errors import UserError
from labkit.models.vgg import PlainConvNet, plain_convnet_factory

# name suffix -> (width, number of 3x3 conv-BN-ReLU layers) per stage; each stage ends in a
# 2x2 max-pool. ``xs`` (about 5k parameters) trains on 8x8 digits in seconds on a CPU.
CNN_STAGES: dict[str, tuple[tuple[int, int], ...]] = {
    "xs": ((16, 1), (32, 1)),
    "s": ((32, 1), (64, 1), (128, 1)),
    "m": ((64, 2), (128, 2), (256, 2)),
}

# name suffix -> default (hidden units per layer, number of hidden layers)
MLP_DEFAULTS: dict[str, tuple[int, int]] = {
    "s": (128, 2),
    "m": (512, 3),
}


def cnn_factory(size: str) -> Callable[..., PlainConvNet]:
    """Registry factory for the small CNN ``cnn_{size}`` (``size`` a key of :data:`CNN_STAGES`)."""
    return plain_convnet_factory(CNN_STAGES[size])


def lenet5(num_classes: int, in_channels: int, resolution: int) -> nn.Sequential:
    """Build an untrained LeNet-5 (LeCun et al. 1998) for inputs ``(N, in_channels, H, W)``.

    Modernised with ReLU and max-pooling. Both 5x5 convs use 'same' padding so that the two
    2x2 pools leave at least 2x2 pixels at resolution 8; an adaptive average pool then brings
    the map to the classic 5x5, so ``fc1`` has the classic 16*5*5 = 400 inputs at any
    resolution. ``resolution`` is accepted for the common factory signature.

    Module names: ``conv1, relu1, pool1, conv2, relu2, pool2, avgpool, flatten, fc1, relu3,
    fc2, relu4, fc``.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, 6, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            avgpool=nn.AdaptiveAvgPool2d(5),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 5 * 5, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc=nn.Linear(84, num_classes),
        )
    )


class MLP(nn.Sequential):
    """Flatten, then ``depth`` hidden ``Linear``-ReLU layers of ``hidden`` units, then ``fc``.

    Input ``(N, in_channels, resolution, resolution)``; output logits ``(N, num_classes)``.
    Module names: ``flatten, fc1, relu1, ..., fc{depth}, relu{depth}, fc``.
    """

    def __init__(self, num_classes: int, in_features: int, hidden: int, depth: int) -> None:
        if hidden < 1 or depth < 0:
            raise UserError(
                f"MLP needs hidden >= 1 and depth >= 0; got hidden={hidden}, depth={depth}. "
                "Set `hidden` to the units per layer and `depth` to the number of hidden layers."
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        for index in range(1, depth + 1):
            layers[f"fc{index}"] = nn.Linear(in_features, hidden)
            layers[f"relu{index}"] = nn.ReLU()
            in_features = hidden
        layers["fc"] = nn.Linear(in_features, num_classes)
        super().__init__(layers)


def mlp_factory(size: str) -> Callable[..., MLP]:
    """Registry factory for ``mlp_{size}`` (``size`` a key of :data:`MLP_DEFAULTS`)."""
    default_hidden, default_depth = MLP_DEFAULTS[size]

    def factory(
        num_classes: int,
        in_channels: int,
        resolution: int,
        *,
        hidden: int = default_hidden,
        depth: int = default_depth,
    ) -> MLP:
        """Build an untrained MLP over flattened ``in_channels * resolution**2`` pixels.

        Args:
            hidden: units per hidden layer.
            depth: number of hidden layers (0 gives a linear classifier).
        """
        return MLP(num_classes, in_channels * resolution * resolution, hidden, depth)

    return factory

"""An example third-party labkit plugin: one model, registered through an entry point."""
from torch import nn

import labkit


def tiny_convnet(num_classes: int, in_channels: int, resolution: int,
                 width: int = 8) -> nn.Module:
    """Conv(width) → ReLU → global average pool → Linear; any resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


@labkit.hookimpl
def labkit_register(registries):
    registries.models.register("tiny_convnet", tiny_convnet)

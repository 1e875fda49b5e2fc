"""An example third-party labkit plugin: a model and a command, through an entry point."""
import click
from torch import nn

from labkit.api import hookimpl


def tiny_convnet(num_classes: int, in_channels: int, resolution: int,
                 width: int = 8) -> nn.Module:
    """Conv(width) → ReLU → global average pool → Linear; any resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


@hookimpl
def labkit_register(registries):
    registries.models.register("tiny_convnet", tiny_convnet)


@click.command("example-hello")
@click.argument("name", default="world")
def hello(name):
    """Say hello (shows how a plugin adds a command)."""
    click.echo(f"hello, {name}, from labkit-example-plugin")


@hookimpl
def labkit_commands():
    return [hello]

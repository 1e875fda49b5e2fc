"""Built-in image classifiers and the torchvision bridge.

Every entry of :data:`MODELS` is a factory called as
``factory(num_classes, in_channels, resolution, **params)`` that returns an untrained
``nn.Module`` mapping ``(N, in_channels, resolution, resolution)`` images to
``(N, num_classes)`` logits, for any ``resolution >= 8`` and any ``in_channels``. Extra
``params`` are keyword-only, annotated and defaulted, so a params schema can be derived
from the factory's signature. In every built-in model the classifier layer is named ``fc``.

Width variants: the suffixes ``_s``, ``_xs``, ``_xxs`` divide every layer width of a ResNet
or VGG by 2, 4 and 8.
"""
from collections.abc import Callable

from torch import nn

from labkit.models.cifar import (CIFAR_RESNET_DEPTHS, PLAIN_CNNS, cifar_resnet_factory,
                                 plain_cnn_factory, resnet_blocks)
from labkit.models.resnet import RESNET_DEPTHS, resnet_factory
from labkit.models.small import CNN_STAGES, MLP_DEFAULTS, cnn_factory, lenet5, mlp_factory
from labkit.models.torchvision_models import create_torchvision_model, torchvision_model_names
from labkit.models.vgg import VGG_DEPTHS, vgg_factory
from labkit.models.wide_resnet import wide_resnet

__all__ = ["MODELS", "create_torchvision_model", "torchvision_model_names"]

WIDTH_DIVISORS = {"": 1, "_s": 2, "_xs": 4, "_xxs": 8}


def _build_registry() -> dict[str, Callable[..., nn.Module]]:
    models: dict[str, Callable[..., nn.Module]] = {}
    for suffix, divisor in WIDTH_DIVISORS.items():
        for depth in RESNET_DEPTHS:
            models[f"resnet{depth}{suffix}"] = resnet_factory(depth, divisor)
        for depth in VGG_DEPTHS:
            models[f"vgg{depth}{suffix}"] = vgg_factory(depth, divisor)
    models["wide_resnet"] = wide_resnet
    for depth in CIFAR_RESNET_DEPTHS:
        models[f"resnet{depth}"] = cifar_resnet_factory(depth)
    for depth in PLAIN_CNNS:
        models[f"plain_cnn{depth}"] = plain_cnn_factory(depth)
    models["resnet_blocks"] = resnet_blocks
    models["lenet5"] = lenet5
    for size in CNN_STAGES:
        models[f"cnn_{size}"] = cnn_factory(size)
    for size in MLP_DEFAULTS:
        models[f"mlp_{size}"] = mlp_factory(size)
    return dict(sorted(models.items()))


MODELS: dict[str, Callable[..., nn.Module]] = _build_registry()
"""Registry key (lower-case model name) -> factory."""

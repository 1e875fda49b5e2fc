"""Encoders of *Random Teachers are Good Teachers*, registered as labkit models.

Every entry of :data:`ENCODERS` is a labkit model factory
``factory(num_classes, in_channels, resolution, **params)`` returning an untrained
network that maps ``(N, in_channels, resolution, resolution)`` images to
``(N, num_classes)`` logits through a final ``nn.Linear``, so it is a DINO encoder
(:mod:`labkit_dino.networks`) and trains with any other labkit method too.

* ``convnet_<w>_<k>`` (``w`` in 16, 32; ``k`` in 1 … 8): the paper's plain ConvNets,
  ``k`` blocks ``conv3x3(w, 'same') → ReLU → [BatchNorm] → AvgPool 2×2``, then flatten
  and ``fc``: the embedding has ``w · (r / 2^k)²`` dimensions at resolution ``r``
  (``r`` must be at least ``2^k``). Conv weights Kaiming-normal (fan-out, ReLU), as the
  reference's. Layer names ``conv1, relu1, [bn1,] pool1, …, flatten, fc``.
* ``vit_tiny`` / ``vit_small``: ViT-Tiny (width 192, 3 heads) and ViT-Small (width 384,
  6 heads), 12 blocks, MLP ratio 4, class token, built from torchvision's
  ``VisionTransformer`` with ``patch_size`` 4 by default (the paper's 32 px setting:
  64 patches); the resolution must be a multiple of the patch size. The classifier is
  torchvision's ``heads.head``; the embedding is the final class token (width 192 / 384).
  With ``in_channels != 3`` the patch projection reads that many channels.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from torch import nn
from torchvision.models import VisionTransformer

from labkit.api import UserError

CONVNET_WIDTHS = (16, 32)
CONVNET_DEPTHS = range(1, 9)

# name -> (width, heads); both have 12 blocks and an MLP of 4 × width
VITS: dict[str, tuple[int, int]] = {"vit_tiny": (192, 3), "vit_small": (384, 6)}


def convnet_factory(width: int, depth: int) -> Callable[..., nn.Sequential]:
    """Registry factory of ``convnet_<width>_<depth>`` (see the module docstring)."""

    def convnet(num_classes: int, in_channels: int, resolution: int, *,
                batch_norm: bool = False) -> nn.Sequential:
        if resolution < 2 ** depth:
            raise UserError(f"convnet_{width}_{depth} halves the image {depth} times, so it "
                            f"needs at least {2 ** depth} px, not {resolution}; choose a depth "
                            f"of at most {int(math.log2(resolution))} or larger images")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i in range(1, depth + 1):
            conv = nn.Conv2d(channels, width, 3, padding="same")
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers[f"conv{i}"] = conv
            layers[f"relu{i}"] = nn.ReLU()
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"pool{i}"] = nn.AvgPool2d(2)
            channels = width
        side = resolution // 2 ** depth
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(width * side * side, num_classes)
        return nn.Sequential(layers)

    convnet.__doc__ = (f"The paper's plain ConvNet: {depth} conv blocks of width {width}.\n\n"
                       f"Args:\n    batch_norm: BatchNorm after each ReLU.")
    return convnet


def vit_factory(name: str) -> Callable[..., VisionTransformer]:
    """Registry factory of ``vit_tiny`` / ``vit_small`` (see the module docstring)."""
    width, heads = VITS[name]

    def vit(num_classes: int, in_channels: int, resolution: int, *,
            patch_size: int = 4, num_layers: int = 12) -> VisionTransformer:
        if resolution % patch_size:
            raise UserError(f"{name} cuts {resolution} px images into {patch_size} px patches: "
                            f"the resolution must be a multiple of it; choose a model "
                            f"patch_size that divides {resolution}")
        model = VisionTransformer(image_size=resolution, patch_size=patch_size,
                                  num_layers=num_layers, num_heads=heads, hidden_dim=width,
                                  mlp_dim=4 * width, num_classes=num_classes)
        if in_channels != 3:
            conv = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
            # torchvision's initialisation of the patch projection
            nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * patch_size ** 2)))
            nn.init.zeros_(conv.bias)
            model.conv_proj = conv
        return model

    vit.__doc__ = (f"{name}: torchvision VisionTransformer, width {width}, {heads} heads.\n\n"
                   f"Args:\n    patch_size: side of the patches in pixels (divides the "
                   f"resolution).\n    num_layers: transformer blocks.")
    return vit


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    **{f"convnet_{w}_{k}": convnet_factory(w, k) for w in CONVNET_WIDTHS for k in CONVNET_DEPTHS},
    **{name: vit_factory(name) for name in VITS},
}
"""Registry name -> model factory, registered by the plugin."""

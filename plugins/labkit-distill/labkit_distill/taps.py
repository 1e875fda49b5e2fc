"""Intermediate features by layer name, and the FitNets regressor that compares them.

Layer names are module paths as ``model.named_modules()`` gives them (``block2.relu1``,
``layer3.1.conv2``); ``labkit layers`` and the saturation columns use the same names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.api import UserError


def vector(features: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` features: maps ``(N, C, H, W)`` are averaged over space, vectors kept."""
    return features if features.dim() == 2 else features.flatten(2).mean(dim=2)


# global pools end the feature extractor; the map they read is the one wanted
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@torch.no_grad()
def last_map(model: nn.Module, probe: torch.Tensor) -> str:
    """The name of the module whose spatial map ``(N, C, H, W)`` comes last in a forward
    pass of ``probe``, adaptive (global) pools left out: the network's last feature map
    (``layer3`` of a CIFAR ResNet, ``block3`` of ``cnn_s``, ``layer4`` of ``tv:resnet18``).

    The pass runs in eval mode (no BatchNorm statistics change) and restores the mode.

    Raises:
        UserError: no module outputs a spatial map (an MLP).
    """
    finished: list[str] = []
    hooks = [module.register_forward_hook(
        lambda module, inputs, output, name=name: finished.append(name)
        if isinstance(output, torch.Tensor) and output.dim() == 4 else None)
        for name, module in model.named_modules() if name and not isinstance(module, GLOBAL_POOLS)]
    was_training = model.training
    try:
        model.eval()
        model(probe)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not finished:
        raise UserError(f"{type(model).__name__} has no layer with a spatial map output, which "
                        f"this loss reads by default; name a layer (student_layer / "
                        f"teacher_layer) or choose a loss on vectors (pkt, rkd, crd)")
    return finished[-1]


class Tap:
    """The features of one layer from the network's latest forward pass (a forward hook).

    Args:
        model: the network to read.
        layer: module name whose output is read; ``None`` reads the input of the
            network's last ``nn.Linear`` (the penultimate features of a classifier).
        role: ``"student"`` or ``"teacher"``, for error messages.

    Attributes:
        features: the latest features, ``(N, ...)``; ``None`` before the first forward.
    """

    def __init__(self, model: nn.Module, layer: str | None, role: str):
        self.features: torch.Tensor | None = None
        modules = dict(model.named_modules())
        if layer is None:
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            if not linears:
                raise UserError(f"the {role} network has no nn.Linear layer whose input could "
                                f"serve as its features; name a layer ({role}_layer)")
            linears[-1].register_forward_pre_hook(self._keep_input)
        elif layer not in modules:
            names = ", ".join(n for n in modules if n)
            raise UserError(f"{role}_layer {layer!r} is not a layer of the {role} network; "
                            f"its layers are: {names}")
        else:
            modules[layer].register_forward_hook(self._keep_output)

    def _keep_input(self, module: nn.Module, inputs: tuple) -> None:
        self.features = inputs[0]

    def _keep_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = output


class Hint(nn.Module):
    """FitNets hint (Romero et al. 2015): a learned regressor r, then a squared error.

    L = mean over (n, c, h, w) of (u − r(v))², u the teacher's features and v the
    student's: FitNets' ½‖u − r(v)‖² divided by half the number of values, so its size
    does not depend on the layer's width. r is a 1×1 convolution when both are maps
    ``(C, H, W)`` (maps of different sizes are average-pooled to the smaller size), a
    linear layer otherwise (maps then averaged over space first, see :func:`vector`).

    Args:
        student_shape, teacher_shape: one sample's feature shape, without the batch.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size):
        super().__init__()
        self.spatial = len(student_shape) == 3 and len(teacher_shape) == 3
        if self.spatial:
            self.regressor: nn.Module = nn.Conv2d(student_shape[0], teacher_shape[0], 1)
        else:
            # shape[0]: channels of a map, length of a vector; both are vector()'s size
            self.regressor = nn.Linear(student_shape[0], teacher_shape[0])

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return F.mse_loss(self.regressor(vector(student)), vector(teacher))
        regressed = self.regressor(student)
        size = (min(regressed.shape[-2], teacher.shape[-2]),
                min(regressed.shape[-1], teacher.shape[-1]))
        return F.mse_loss(F.adaptive_avg_pool2d(regressed, size),
                          F.adaptive_avg_pool2d(teacher, size))


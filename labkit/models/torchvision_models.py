"""Untrained torchvision classification models, adapted to the data's channels and resolution.

Weights are never downloaded: every model is built with ``weights=None``.
"""
import difflib
from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn

from labkit.errors import UserError

# Models that bake the input size into their architecture (positional embeddings, attention
# windows) are told the data's resolution: arch prefix -> builder keyword and its value.
_SIZE_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "vit_": lambda resolution: {"image_size": resolution},
    "maxvit_": lambda resolution: {"input_size": (resolution, resolution)},
}

# These return a namedtuple with auxiliary logits in training mode unless told otherwise;
# the rest of labkit expects plain logits. ``init_weights`` silences their slow-init warning.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model_names() -> list[str]:
    """Sorted names of the torchvision classification architectures (e.g. ``"resnet18"``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_arch(arch: str) -> None:
    names = torchvision_model_names()
    if arch in names:
        return
    matches = difflib.get_close_matches(arch, names, n=3)
    hint = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    raise UserError(
        f"Unknown torchvision model {arch!r}.{hint} "
        "The valid names are listed by labkit.models.torchvision_model_names()."
    )


def _builder_kwargs(arch: str, resolution: int) -> dict[str, Any]:
    kwargs = dict(_EXTRA_KWARGS.get(arch, {}))
    for prefix, size_kwargs in _SIZE_KWARGS.items():
        if arch.startswith(prefix):
            kwargs.update(size_kwargs(resolution))
    return kwargs


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``Conv2d`` (in registration order, which is the input stem in every
    torchvision classifier) for a freshly initialised one reading ``in_channels`` channels."""
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, new)


def create_torchvision_model(arch: str, num_classes: int, in_channels: int, resolution: int) -> nn.Module:
    """Build torchvision's ``arch`` untrained, for input ``(N, in_channels, resolution, resolution)``
    and output logits ``(N, num_classes)``.

    The stem conv is replaced when ``in_channels != 3``. Unlike labkit's own models, many
    ImageNet architectures downsample aggressively and need a resolution well above 8
    (e.g. ``inception_v3`` needs at least 75 pixels). Raises :class:`UserError` for an
    unknown ``arch`` or a resolution the architecture cannot be built for.
    """
    _check_arch(arch)
    try:
        model = torchvision.models.get_model(
            arch, weights=None, num_classes=num_classes, **_builder_kwargs(arch, resolution)
        )
    except (ValueError, AssertionError) as error:
        # Architectures with size-dependent structure (ViT patches, MaxViT windows) reject
        # some resolutions at construction time.
        raise UserError(
            f"torchvision model {arch!r} cannot be built for resolution {resolution}: {error} "
            "Choose a resolution this architecture supports, or another architecture."
        ) from error
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model

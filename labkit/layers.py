"""Which layers of a network are measured, and what they are called.

A layer's name is its module path with dots replaced by dashes (``layer1.0.conv1`` →
``layer1-0-conv1``), as in PHD-LAB, so names can sit inside CSV column names. Layers are
listed in network order (module registration order, which for the built-in models is
the order of the forward pass).
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

from torch import nn

from labkit.errors import UserError

MEASURED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def layer_name(module_path: str) -> str:
    """CSV-safe layer name of a module path."""
    return module_path.replace(".", "-")


def measured_layers(model: nn.Module, patterns: Sequence[str] | None = None,
                    types: tuple[type[nn.Module], ...] = MEASURED_TYPES) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer of ``types`` in network order.

    Args:
        model: the network.
        patterns: shell-style wildcards on layer names (``"layer1-*"``); ``None`` keeps all.
        types: module classes to measure.

    Raises:
        UserError: patterns are given and match no layer (lists the available names).
    """
    layers = [(layer_name(path), m) for path, m in model.named_modules()
              if path and isinstance(m, types)]
    if patterns is None:
        return layers
    chosen = [(n, m) for n, m in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise UserError(f"layer patterns {list(patterns)} match no layer; available layers: "
                        f"{', '.join(n for n, _ in layers)}")
    return chosen

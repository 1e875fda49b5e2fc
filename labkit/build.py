"""Building components from their resolved specs, and seeding.

A resolved component spec is ``{"name": …, <params>}`` as :func:`labkit.spec.expand`
leaves it; the registries (filled by the plugin manager) say which class or factory the
name stands for and validate the params.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from labkit.registry import Registries


def build_component(registries: Registries, kind: str, spec: dict[str, Any], **context: Any) -> Any:
    """Create a registered component from its resolved spec ``{"name": …, params…}``."""
    params = {k: v for k, v in spec.items() if k != "name"}
    registry = registries[kind]
    entry = registry.get(spec["name"])
    if isinstance(entry.obj, type) and hasattr(entry.obj, "Params"):
        return registry.create(spec["name"], params=entry.params.model_validate(params), **context)
    return registry.create(spec["name"], **context, **params)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_metrics(registries: Registries, names: list[str], num_classes: int) -> dict[str, Any]:
    """Fresh metric objects ``{name: metric}`` for one pass over ``num_classes`` classes."""
    return {name: registries.metrics.create(name, num_classes=num_classes) for name in names}

"""Which layers of a network are measured, what they are called, and in which order.

A layer's name is its module path with dots replaced by dashes (``layer1.0.conv1`` →
``layer1-0-conv1``), as in PHD-LAB, so names can sit inside CSV column names.

Network order is the order in which the forward pass first calls each layer, read off
the network's torch.fx graph. It differs from module-registration order wherever a
module is declared before it runs: a ResNet block's shortcut convolution is declared
next to its first convolution but runs after the second. Layers the forward pass never
calls follow in registration order; a network torch.fx cannot trace (data-dependent
control flow in ``forward``) keeps registration order throughout.
"""
from __future__ import annotations

import fnmatch
import weakref
from typing import Sequence

from torch import fx, nn

from labkit.core.errors import UserError

MEASURED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

# model -> module paths in order of their first call; a network's structure never
# changes after it is built, and tracing a large one costs a noticeable fraction of a second
_CALL_ORDER: weakref.WeakKeyDictionary[nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()


def layer_name(module_path: str) -> str:
    """CSV-safe layer name of a module path."""
    return module_path.replace(".", "-")


class _LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps every module of ``types`` as one call."""

    def __init__(self, types: tuple[type[nn.Module], ...]):
        super().__init__()
        self.types = types

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, self.types) or super().is_leaf_module(module, qualname)


def call_order(model: nn.Module) -> dict[str, int]:
    """``{module path: rank}`` of the modules the forward pass calls, by first call.

    Empty when torch.fx cannot trace the network (the caller then keeps registration
    order). Tracing runs no computation and leaves the model untouched.
    """
    if model in _CALL_ORDER:
        return _CALL_ORDER[model]
    types = tuple({type(m) for m in model.modules() if isinstance(m, (*MEASURED_TYPES, nn.LSTM))})
    try:
        graph = _LeafTracer(types).trace(model)
    except Exception:  # fx raises many kinds; untraceable networks keep registration order
        order: dict[str, int] = {}
    else:
        order = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target not in order:
                order[str(node.target)] = len(order)
    _CALL_ORDER[model] = order
    return order


def network_order(model: nn.Module, paths: Sequence[str]) -> list[str]:
    """``paths`` (module paths of ``model``) sorted into network order (module docstring)."""
    rank = call_order(model)
    position = {path: i for i, path in enumerate(paths)}
    return sorted(paths, key=lambda p: (p not in rank, rank.get(p, 0), position[p]))


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
    modules = {path: m for path, m in model.named_modules() if path and isinstance(m, types)}
    layers = [(layer_name(path), modules[path]) for path in network_order(model, list(modules))]
    if patterns is None:
        return layers
    chosen = [(n, m) for n, m in layers if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        raise UserError(f"layer patterns {list(patterns)} match no layer; available layers: "
                        f"{', '.join(n for n, _ in layers)}")
    return chosen

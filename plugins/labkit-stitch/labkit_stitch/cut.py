"""Cutting a network at a named layer with torch.fx: the part before it and the part after.

A network is traced symbolically, so any traceable architecture can be cut, a plain
stack of layers or a residual network alike, without assuming ``nn.Sequential``.

Layer names follow torchvision's feature extraction: a module path (``block2``,
``layer2.0``, ``layer2.0.conv1``) stands for the last operation inside that module,
which is the module's output; operations in a ``forward`` outside any submodule have
their own names (``relu`` is the stem's ReLU in labkit's ResNets). labkit's dash form
(``layer2-0``) is accepted as well.

* :func:`bottom`: images → activations at one layer, or at several;
* :func:`top`: activations at one layer → logits, i.e. the network's graph with that
  layer's output replaced by an input. This works only where the rest of the network
  depends on the images through that layer alone. Inside a residual block the skip
  connection still needs the block's input, so such a layer is refused with a message
  that points at the block outputs, which are valid cut points.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from labkit.api import UserError, layer_name


class CrossedSkip(UserError):
    """A network cannot be started at a layer: a skip connection crosses the cut."""


def module_path(layer: str) -> str:
    """The dotted path of a layer name given in either form (``layer2-0`` → ``layer2.0``)."""
    return layer.replace("-", ".")


def canonical(layer: str) -> str:
    """labkit's dash form of a layer name given in either form (``layer2.0`` → ``layer2-0``)."""
    return layer_name(module_path(layer))


def _trace(model: nn.Module) -> tuple[fx.GraphModule, dict[fx.Node, str]]:
    """A fresh graph of ``model`` (traced in eval mode) and each node's layer path."""
    was_training = model.training
    model.eval()
    try:
        tracer = NodePathTracer()
        graph = tracer.trace(model)
    finally:
        model.train(was_training)
    # The GraphModule shares the traced module objects with ``model`` (no copies).
    return fx.GraphModule(tracer.root, graph, type(model).__name__), tracer.node_to_qualname


def _known_paths(paths: dict[fx.Node, str]) -> list[str]:
    """Every layer path the traced nodes answer to, in graph order: each node's path and
    every module path above it (``layer2.0.conv1`` also gives ``layer2`` and ``layer2.0``)."""
    known: dict[str, None] = {}
    for node, path in paths.items():
        if node.op in ("placeholder", "output"):
            continue
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            known.setdefault(".".join(parts[:i]), None)
    return list(known)


def layer_names(model: nn.Module) -> list[str]:
    """Every name :func:`bottom` accepts for ``model`` (dash form), in forward order of
    first appearance: module paths and the operations outside submodules (``relu``,
    ``flatten``)."""
    return [layer_name(path) for path in _known_paths(_trace(model)[1])]


def unknown_layer_message(model: nn.Module, layer: str, names: Sequence[str]) -> str:
    """``layer is not in <Model>``, with close matches among ``names`` (dash form) and
    the model's top-level modules."""
    close = difflib.get_close_matches(canonical(layer), names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    children = [layer_name(p) for p, _ in model.named_children()]
    top, first = ", ".join(children), children[0] if children else "block"
    return (f"layer {layer!r} is not in {type(model).__name__}; {hint}its top-level layers "
            f"are: {top} (and inside them, by module path: '{first}-…')")


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Raise :class:`UserError` naming the first of ``layers`` that ``model`` lacks, with
    close matches."""
    names = layer_names(model)
    for layer in layers:
        if canonical(layer) not in names:
            raise UserError(unknown_layer_message(model, layer, names))


def depth(model: nn.Module, layer: str) -> int:
    """Position of ``layer``'s output among the operations of ``model``'s traced graph:
    a later layer has a larger depth (the order of the forward pass)."""
    module, paths = _trace(model)
    node = _layer_node(model, paths, layer)
    return list(module.graph.nodes).index(node)


def _layer_node(model: nn.Module, paths: dict[fx.Node, str], layer: str) -> fx.Node:
    """The node whose output is ``layer``'s output: the last one inside that path."""
    path = module_path(layer)
    inside = [node for node, p in paths.items() if p == path or p.startswith(path + ".")]
    if not inside:
        names = [layer_name(p) for p in _known_paths(paths)]
        raise UserError(unknown_layer_message(model, layer, names))
    return inside[-1]


def _finish(module: fx.GraphModule) -> fx.GraphModule:
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def bottom(model: nn.Module, layers: str | Sequence[str]) -> fx.GraphModule:
    """``model`` from its input up to ``layers``.

    Args:
        model: a traceable network taking images ``(N, C, H, W)``.
        layers: one layer name, or several.

    Returns:
        A module sharing ``model``'s weights. For one name it returns that layer's
        output tensor (``(N, C', H', W')`` or ``(N, F)``); for a sequence, a dict from
        each given name to its output.

    Raises:
        UserError: a name is not a layer of ``model``.
    """
    module, paths = _trace(model)
    graph = module.graph
    if isinstance(layers, str):
        result = _layer_node(model, paths, layers)
    else:
        result = {layer: _layer_node(model, paths, layer) for layer in layers}
    for node in [n for n in graph.nodes if n.op == "output"]:
        graph.erase_node(node)
    graph.output(result)
    return _finish(module)


def top(model: nn.Module, layer: str) -> fx.GraphModule:
    """``model`` from the output of ``layer`` to its logits.

    Returns:
        A module sharing ``model``'s weights, mapping an activation shaped like
        ``layer``'s output to logits ``(N, num_classes)``; composed with
        ``bottom(model, layer)`` it computes ``model``.

    Raises:
        UserError: ``layer`` is not a layer of ``model``, or the rest of the network
            still reads values from before it (a skip connection across the cut).
    """
    module, paths = _trace(model)
    graph = module.graph
    cut = _layer_node(model, paths, layer)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(inputs[0]):
        activation = graph.placeholder("activation")
    cut.replace_all_uses_with(activation)
    graph.eliminate_dead_code()  # drops everything before the cut that nothing reads now
    if any(node.users for node in inputs):
        raise CrossedSkip(
            f"cannot start {type(model).__name__} at layer {layer!r}: later layers still "
            f"read values computed before it (a skip connection crosses the cut); cut at "
            f"the output of a whole block instead (e.g. 'layer2-0' rather than "
            f"'layer2-0-conv1')")
    for node in inputs:
        graph.erase_node(node)
    return _finish(module)


@torch.no_grad()
def output_shape(module: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Shape of one sample of ``module(example)`` (batch dimension dropped), in eval mode."""
    was_training = module.training
    module.eval()
    try:
        return tuple(module(example).shape[1:])
    finally:
        module.train(was_training)

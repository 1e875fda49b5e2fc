"""The empirical check of computed receptive fields: back-propagate from one output unit
of each layer (of the network itself and of its geometric copy) and test that the
input gradient's support lies inside the computed box, and fills it where the box is
``exact`` (:func:`gradient_check`)."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from labkit.measures.layers import layer_name
from labkit.measures.receptive_field_geometry import Field, _pair


def geometric_copy(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A float32 copy of ``model`` in eval mode whose input gradient reaches every pixel
    its geometry lets it reach: positive weights (each divided by its fan-in, so deep
    networks stay in range), BatchNorm statistics reset (mean 0, variance 1), so that on
    a positive input every activation is positive and no ReLU blocks a path; and max
    pooling computed as average pooling over the same windows (a max passes the gradient
    to one pixel of its window).

    Returns:
        ``(copy, runner)``: the copy, whose modules carry the names of ``model``'s
        (register hooks there), and what to call: its torch.fx graph with functional
        max pools rewritten too, or the copy itself when torch.fx cannot trace it.
    """
    probe = copy.deepcopy(model).float().eval()
    for name, module in list(probe.named_modules()):
        average = _average_pool(module)
        if average is not None:
            parent, _, attribute = name.rpartition(".")
            setattr(probe.get_submodule(parent), attribute, average)
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.uniform_(0.5, 1.5)
            if parameter.dim() > 1:
                parameter /= parameter[0].numel()
    for module in probe.modules():
        if getattr(module, "running_mean", None) is not None and hasattr(
                module, "reset_running_stats"):
            module.reset_running_stats()
    try:
        graph = fx.symbolic_trace(probe)
    except Exception:  # untraceable: only pooling modules were swapped
        return probe, probe
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                     "return_indices")
            args = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                    "return_indices": False, **dict(zip(names, node.args)), **node.kwargs}
            if _pair(args["dilation"]) == (1, 1) and not args["return_indices"]:
                node.target = F.avg_pool2d
                node.args = (args["input"], args["kernel_size"], args["stride"] or None,
                             args["padding"], args["ceil_mode"])
                node.kwargs = {}
        elif node.op == "call_function" and node.target is F.adaptive_max_pool2d:
            node.target, node.args, node.kwargs = F.adaptive_avg_pool2d, node.args[:2], {
                k: v for k, v in node.kwargs.items() if k == "output_size"}
    graph.recompile()
    return probe, graph


def _average_pool(module: nn.Module) -> nn.Module | None:
    """The average pool over ``module``'s windows when it is a max pool, else ``None``."""
    if isinstance(module, nn.AdaptiveMaxPool2d) and not module.return_indices:
        return nn.AdaptiveAvgPool2d(module.output_size)
    if (isinstance(module, nn.MaxPool2d) and _pair(module.dilation) == (1, 1)
            and not module.return_indices):
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    return None


def _supports(runner: nn.Module, modules: dict[str, nn.Module], fields: dict[str, Field],
              units: dict[str, tuple[int, int]],
              image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per layer, the input pixels ``(H, W)`` (bool) whose gradient is non-zero when
    back-propagating from the sum over channels of its unit ``units[layer]``, and how
    often the forward pass called the layer. Sample ``b`` of ``image`` serves the
    ``b``-th layer of ``units``: in eval mode samples are independent, so one backward
    pass gives every layer's gradient."""
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = dict.fromkeys(units, 0)

    def hook(name: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            outputs[name] = output
            calls[name] += 1
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in units]
    image = image.clone().requires_grad_()
    try:
        runner(image)
    finally:
        for handle in handles:
            handle.remove()
    targets = []
    for b, (name, unit) in enumerate(units.items()):
        out, axes = outputs.get(name), fields[name].axes
        if out is None or not out.requires_grad:
            continue
        index = [b] + [slice(None)] * (out.dim() - 1)
        if axes is not None:
            index[axes[0]], index[axes[1]] = unit
        targets.append(out[tuple(index)].sum())
    if not targets:
        return {}, calls
    (grad,) = torch.autograd.grad(sum(targets), image)
    seen = grad.abs().sum(1) > 0  # (layers, H, W)
    return {name: seen[b] for b, name in enumerate(units)}, calls


def _named(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` by layer name."""
    return {layer_name(path): module for path, module in model.named_modules()}


def _extent(support: torch.Tensor, axis: int) -> tuple[int, int] | None:
    """First and last pixel along ``axis`` of a non-empty ``(H, W)`` support."""
    pixels = support.any(1 - axis).nonzero().flatten()
    return (int(pixels.min()), int(pixels.max())) if len(pixels) else None


def gradient_check(model: nn.Module, in_channels: int, resolution: int,
                   fields: dict[str, Field], seed: int = 0) -> dict[str, str]:
    """Compare each layer's box with the support of an input gradient.

    For each layer, the centre unit (``map // 2``; the sum over channels there, or over
    the whole output once the layout is lost) is back-propagated to the input:

    * through ``model`` itself, float32, eval mode, on a uniform random image: the
      pixels with a non-zero gradient must lie inside the unit's box;
    * through :func:`geometric_copy` on a positive random image: inside the box too,
      and for an ``exact`` row the support must be a full rectangle (no pixel between
      its edges without gradient) that reaches the box on every side lying inside the
      image (where the box runs past the border, its taps read zero padding, which no
      pixel stands for).

    Args:
        model: the network, with weights (its own are used and left untouched).
        in_channels, resolution: the input's channels and side, pixels.
        fields: :func:`layer_fields` of ``model``.
        seed: of the random images.

    Returns:
        Layer → ``passed``, ``failed`` or ``skipped`` (an ``unsupported`` row, a layer
        the forward pass calls more than once, or no gradient path at all).
    """
    checked = {name: (f.map[0] // 2, f.map[1] // 2) for name, f in fields.items()
               if f.row_status != "unsupported"}
    if not checked:
        return {}
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(len(checked), in_channels, resolution, resolution, dtype=torch.float32,
                       generator=generator)
    real = copy.deepcopy(model).float().eval()
    supports, calls = _supports(real, _named(real), fields, checked, image)
    probe, runner = geometric_copy(model)
    positive, _ = _supports(runner, _named(probe), fields, checked, image + 0.5)
    result = {}
    for name, unit in checked.items():
        if calls[name] != 1 or name not in supports:
            result[name] = "skipped"
            continue
        box = fields[name].box(unit)
        ok = True
        for axis, (lo, hi) in enumerate(box):
            for support in (supports[name], positive[name]):
                extent = _extent(support, axis)
                ok &= extent is None or (lo <= extent[0] and extent[1] <= hi)
            if fields[name].row_status == "exact":
                extent = _extent(positive[name], axis)
                ok &= extent is not None and (lo < 0 or extent[0] == lo) and (
                    hi > resolution - 1 or extent[1] == hi)
        if ok and fields[name].row_status == "exact":
            (top, bottom), (left, right) = _extent(positive[name], 0), _extent(positive[name], 1)
            ok = bool(positive[name][top:bottom + 1, left:right + 1].all())
        result[name] = "passed" if ok else "failed"
    return result



"""Receptive field of every layer, read off the network's torch.fx graph.

Per spatial axis, every tensor of the graph carries three numbers, in input pixels:

* ``size``: side of the input region that one unit sees;
* ``jump``: distance between the regions of two neighbouring units (the product of strides);
* ``start``: centre of the first unit's region, as an input pixel index (0 is the centre
  of the first pixel; padding makes it negative).

A sliding window (convolution, max- or average pooling) with kernel ``k``, stride ``s``,
left padding ``p`` and dilation ``d`` maps them as (Araujo et al., Distill 2019)::

    size'  = size + d(k - 1) * jump
    jump'  = jump * s
    start' = start + (d(k - 1) / 2 - p) * jump

Operations that keep the spatial size are position-wise (activations, normalisation) or
merges (``+``, ``*``, ``cat`` over channels); a merge sees the union of its inputs'
regions, so through residual blocks the largest path counts, without rebuilding the
model. Adaptive pooling is a window as wide as its widest bin, moving by the mean bin
stride (exact when the input size is a multiple of the output size). An operation that
loses the spatial layout (flatten, global mean, reshape, upsampling, padding, slicing)
is taken to mix all positions: its output sees the union of every position's region.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from labkit.errors import UserError
from labkit.layers import MEASURED_TYPES, layer_name, measured_layers

RF_CSV = "receptive_field.csv"

Pair = tuple[float, float]


@dataclass(frozen=True)
class Field:
    """Receptive field of a tensor's units, per spatial axis ``(h, w)``.

    Unit ``u`` (along an axis) sees the input pixels ``start + u·jump ± (size - 1)/2``
    and, after a merge with a broadcast branch (a squeeze-excitation scale), also the
    ``fixed`` region that this branch shows to every unit alike.

    Attributes:
        size, jump, start: see the module docstring (input pixels).
        map: spatial size of the tensor, units; ``(1, 1)`` once the layout is lost.
        axes: tensor dimensions holding ``(h, w)``; ``None`` once the layout is lost.
        fixed: per axis, the ``(first, last)`` pixel every unit sees; ``None``: none.
    """

    size: Pair
    jump: Pair
    start: Pair
    map: tuple[int, int]
    axes: tuple[int, int] | None
    fixed: tuple[Pair, Pair] | None = None

    def bounds(self, axis: int, unit: int = 0) -> Pair:
        """First and last input pixel seen by ``unit`` along ``axis`` (maybe in padding)."""
        centre = self.start[axis] + unit * self.jump[axis]
        lo, hi = centre - (self.size[axis] - 1) / 2, centre + (self.size[axis] - 1) / 2
        if self.fixed is None:
            return lo, hi
        return min(lo, self.fixed[axis][0]), max(hi, self.fixed[axis][1])


def _pair(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _window(field: Field, kernel: tuple, stride: tuple, padding: Any, dilation: tuple,
            out_map: tuple[int, int]) -> Field:
    size, jump, start = [], [], []
    for a in range(2):
        reach = dilation[a] * (kernel[a] - 1)  # distance between first and last tap
        if padding == "valid":
            left = 0
        elif padding == "same":
            left = reach // 2  # torch puts the odd pixel of 'same' padding on the right
        else:
            left = _pair(padding)[a]
        size.append(field.size[a] + reach * field.jump[a])
        jump.append(field.jump[a] * stride[a])
        start.append(field.start[a] + (reach / 2 - left) * field.jump[a])
    return replace(field, size=tuple(size), jump=tuple(jump), start=tuple(start), map=out_map)


def _adaptive(field: Field, out_map: tuple[int, int]) -> Field:
    size, jump, start = [], [], []
    for a in range(2):
        n_in, n_out = field.map[a], out_map[a]
        # bin k covers input units floor(k n_in / n_out) .. ceil((k + 1) n_in / n_out) - 1
        widest = max(math.ceil((k + 1) * n_in / n_out) - math.floor(k * n_in / n_out)
                     for k in range(n_out))
        first_centre = (math.ceil(n_in / n_out) - 1) / 2
        size.append(field.size[a] + (widest - 1) * field.jump[a])
        jump.append(field.jump[a] * n_in / n_out)
        start.append(field.start[a] + first_centre * field.jump[a])
    return replace(field, size=tuple(size), jump=tuple(jump), start=tuple(start), map=out_map)


def _collapse(field: Field) -> Field:
    """The field of a single unit that sees every position of ``field``'s map."""
    lo = [field.bounds(a, 0)[0] for a in range(2)]
    hi = [field.bounds(a, field.map[a] - 1)[1] for a in range(2)]
    return Field(tuple(hi[a] - lo[a] + 1 for a in range(2)),
                 tuple(field.jump[a] * field.map[a] for a in range(2)),
                 tuple((lo[a] + hi[a]) / 2 for a in range(2)), (1, 1), None)


def _hull(regions: Sequence[tuple[Pair, Pair]]) -> tuple[Pair, Pair] | None:
    """Per axis, the smallest interval holding every ``(lo, hi)`` of ``regions``."""
    if not regions:
        return None
    return tuple((min(r[a][0] for r in regions), max(r[a][1] for r in regions))
                 for a in range(2))


def _union(fields: Sequence[Field], out_map: tuple[int, int],
           axes: tuple[int, int] | None) -> Field:
    """Field of a merge: each unit sees the union of what its inputs' units see.

    Inputs laid out like the output move with the unit (their first-unit regions are
    joined, the jump is theirs); broadcast inputs (a squeeze-excitation scale, a
    layout-less tensor) show their whole region to every unit (``fixed``).
    """
    aligned = [f for f in fields if f.axes is not None and f.map == out_map]
    if axes is None or not aligned:
        whole = [_collapse(f) for f in fields]
        (lo_h, hi_h), (lo_w, hi_w) = _hull([(f.bounds(0), f.bounds(1)) for f in whole])
        return Field((hi_h - lo_h + 1, hi_w - lo_w + 1),
                     tuple(max(f.jump[a] for f in whole) for a in range(2)),
                     ((lo_h + hi_h) / 2, (lo_w + hi_w) / 2), (1, 1), None)
    broadcast = [_collapse(f) for f in fields if not any(f is g for g in aligned)]
    fixed = _hull([f.fixed for f in aligned if f.fixed is not None]
                  + [(f.bounds(0), f.bounds(1)) for f in broadcast])
    local = [replace(f, fixed=None) for f in aligned]
    lo = [min(f.bounds(a)[0] for f in local) for a in range(2)]
    hi = [max(f.bounds(a)[1] for f in local) for a in range(2)]
    return Field(tuple(hi[a] - lo[a] + 1 for a in range(2)),
                 tuple(max(f.jump[a] for f in aligned) for a in range(2)),
                 tuple((lo[a] + hi[a]) / 2 for a in range(2)), out_map, axes, fixed)


# functional windows: parameter names in positional order, and defaults
_WINDOW_FUNCTIONS: dict[Any, tuple[tuple[str, ...], dict[str, Any]]] = {
    F.conv2d: (("input", "weight", "bias", "stride", "padding", "dilation"),
               {"stride": 1, "padding": 0, "dilation": 1}),
    F.max_pool2d: (("input", "kernel_size", "stride", "padding", "dilation"),
                   {"stride": None, "padding": 0, "dilation": 1}),
    F.avg_pool2d: (("input", "kernel_size", "stride", "padding"),
                   {"stride": None, "padding": 0, "dilation": 1}),
}
_ADAPTIVE_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_WINDOW_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _window_params(node: fx.Node, modules: dict[str, nn.Module]) -> tuple | None:
    """``(kernel, stride, padding, dilation)`` of a sliding-window node, else ``None``."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, nn.ConvTranspose2d):
            # a window too, but one that spreads each unit: taking it for position-wise
            # (at stride 1 it keeps the size) would be silently wrong
            raise UserError(f"receptive field: {type(module).__name__} ({node.target}) is "
                            f"not supported; convolutions and pooling windows are")
        if not isinstance(module, _WINDOW_MODULES):
            return None
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride or module.kernel_size)
        return kernel, stride, module.padding, _pair(getattr(module, "dilation", 1))
    if node.op != "call_function" or node.target not in _WINDOW_FUNCTIONS:
        return None
    names, defaults = _WINDOW_FUNCTIONS[node.target]
    args = {**defaults, **dict(zip(names, node.args, strict=False)), **node.kwargs}
    if node.target is F.conv2d:
        kernel = tuple(args["weight"].meta["tensor_meta"].shape[-2:])
    else:
        kernel = _pair(args["kernel_size"])
    stride = _pair(args["stride"] if args["stride"] is not None else kernel)
    return kernel, stride, args["padding"], _pair(args["dilation"])


def _is_adaptive(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ADAPTIVE_MODULES)
    return node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS


def _permutation(node: fx.Node, ndim: int) -> list[int] | None:
    """Where each input dimension goes for permute / transpose nodes, else ``None``."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    rest = list(node.args[1:]) or list(node.kwargs.values())
    if name == "permute":
        dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        return [d % ndim for d in dims]
    if name in ("transpose", "swapaxes"):
        order = list(range(ndim))
        d0, d1 = rest[0] % ndim, rest[1] % ndim
        order[d0], order[d1] = order[d1], order[d0]
        return order
    return None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    """Output shape of ``node``; of its first tensor for tuples (split, chunk); ``None``
    for values that are not tensors (sizes, numbers)."""
    meta = node.meta.get("tensor_meta")
    while isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata) and meta:
        meta = meta[0]
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _out_axes(node: fx.Node, primary: Field, in_ndim: int,
              shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Where the spatial axes of ``primary`` are in ``node``'s output, or ``None``."""
    axes = primary.axes
    if axes is None:
        return None
    order = _permutation(node, in_ndim)
    if order is not None:
        axes = (order.index(axes[0]), order.index(axes[1]))
    if len(shape) > max(axes) and (shape[axes[0]], shape[axes[1]]) == primary.map:
        return axes
    # a reshape that keeps trailing spatial axes trailing (channel shuffle, grouping)
    if axes == (in_ndim - 2, in_ndim - 1) and len(shape) >= 3 and shape[-2:] == primary.map:
        return (len(shape) - 2, len(shape) - 1)
    return None


def _propagate(node: fx.Node, modules: dict[str, nn.Module],
               fields: dict[fx.Node, Field]) -> Field | None:
    """Field of ``node``'s output; ``None`` for values not derived from the image."""
    inputs = [(n, fields[n]) for n in node.all_input_nodes if fields.get(n) is not None]
    if not inputs:
        return None
    shape = _shape(node)
    if shape is None:
        return None
    first = inputs[0][1]  # the data; a functional conv's weight is no image-derived node
    window = _window_params(node, modules)
    if (window or _is_adaptive(node, modules)) and first.axes is not None:
        out_map = (shape[-2], shape[-1])
        return _window(first, *window, out_map) if window else _adaptive(first, out_map)
    # the input with the largest map defines the layout; the others broadcast into it
    primary_node, primary = max(inputs, key=lambda item: item[1].map[0] * item[1].map[1])
    in_shape = _shape(primary_node)
    axes = _out_axes(node, primary, len(in_shape), shape) if in_shape else None
    out_map = (shape[axes[0]], shape[axes[1]]) if axes else (1, 1)
    return _union([f for _, f in inputs], out_map, axes)


def _trace_fields(model: nn.Module, in_channels: int, resolution: int) -> dict[fx.Node, Field]:
    """Trace ``model`` and compute the field of every node's output.

    Shapes are propagated with fake tensors: nothing is computed, the model (and its
    BatchNorm statistics) stays untouched.

    Raises:
        UserError: torch.fx cannot trace the model, or it uses an unsupported layer.
    """
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds; the user needs the reason, not the type
        raise UserError(f"receptive field: torch.fx cannot trace {type(model).__name__}: {exc}. "
                        f"Data-dependent control flow in forward() prevents tracing") from None
    # two samples: BatchNorm in training mode refuses a single value per channel; the
    # model may live on any device, "meta" included (built without allocating weights)
    device = next(model.parameters(), torch.empty(0)).device
    image = torch.zeros(2, in_channels, resolution, resolution, device=device)
    try:
        with _silenced_shape_errors():
            ShapeProp(graph, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(image)
    except Exception as exc:  # a shape error surfaces as whatever the failing op raises
        raise UserError(
            f"receptive field: {type(model).__name__} cannot run on {in_channels}-channel "
            f"{resolution}x{resolution} inputs ({_first_line(exc)}); the input is too small "
            f"for the network or has the wrong number of channels: use a larger dataset "
            f"resolution or a network made for this input size") from None
    modules = dict(graph.named_modules())
    fields: dict[fx.Node, Field] = {}
    for node in graph.graph.nodes:
        if node.op == "placeholder" and not fields:
            fields[node] = Field((1, 1), (1, 1), (0, 0), (resolution, resolution), (2, 3))
        elif node.op in ("call_module", "call_function", "call_method"):
            field = _propagate(node, modules, fields)
            if field is not None:
                fields[node] = field
    return fields


@contextmanager
def _silenced_shape_errors() -> Iterator[None]:
    """Keep torch's own reports of a failing op off stderr: ShapeProp prints the
    traceback and fake-tensor dispatch logs it, before the error reaches us."""
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        fake_log.setLevel(level)


def _first_line(exc: BaseException) -> str:
    """First line of the innermost cause's message (ShapeProp wraps the op's error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def layer_fields(model: nn.Module, in_channels: int, resolution: int,
                 patterns: Sequence[str] | None = None,
                 types: tuple[type[nn.Module], ...] = MEASURED_TYPES) -> dict[str, Field]:
    """Field of each layer's output, in network order.

    Args:
        model: any network torch.fx can trace, mapping ``(N, in_channels, resolution,
            resolution)`` images to anything.
        in_channels, resolution: the input's channels and side, pixels.
        patterns: wildcards on layer names (see :func:`labkit.layers.measured_layers`).
        types: module classes to report (default Conv2d and Linear).

    Returns:
        Layer name → :class:`Field`, for every layer the forward pass calls (a layer
        called twice keeps its larger field).

    Raises:
        UserError: untraceable model, unsupported layer, or no chosen layer is called.
    """
    wanted = [name for name, _ in measured_layers(model, patterns, types)]
    found: dict[str, Field] = {}
    for node, field in _trace_fields(model, in_channels, resolution).items():
        name = layer_name(str(node.target)) if node.op == "call_module" else None
        if name in wanted and (name not in found or _area(field) > _area(found[name])):
            found[name] = field
    if not found:
        raise UserError(f"receptive field: the forward pass of {type(model).__name__} calls none "
                        f"of the layers {', '.join(wanted)}")
    return {name: found[name] for name in wanted if name in found}


def _area(field: Field) -> float:
    return math.prod(hi - lo + 1 for lo, hi in (field.bounds(0), field.bounds(1)))


def receptive_fields(model: nn.Module, in_channels: int, resolution: int,
                     patterns: Sequence[str] | None = None,
                     types: tuple[type[nn.Module], ...] = MEASURED_TYPES) -> pd.DataFrame:
    """The table of :func:`layer_fields` (same arguments), with the border layer.

    Returns:
        One row per layer in network order: ``layer``, ``module`` (class name),
        ``size_h``, ``size_w`` (side of the first unit's field), ``jump_h``, ``jump_w``,
        ``start_h``, ``start_w`` (centre of the first unit's field), all in input
        pixels, ``map_h``, ``map_w`` (output map, units; 1 once flattened), ``border``
        (the first layer whose field covers the whole input) and ``tail`` (every layer
        after the border layer).
    """
    modules = dict(measured_layers(model, patterns, types))
    rows = []
    for name, field in layer_fields(model, in_channels, resolution, patterns, types).items():
        (lo_h, hi_h), (lo_w, hi_w) = field.bounds(0), field.bounds(1)
        rows.append({"layer": name, "module": type(modules[name]).__name__,
                     "size_h": hi_h - lo_h + 1, "size_w": hi_w - lo_w + 1,
                     "jump_h": field.jump[0], "jump_w": field.jump[1],
                     "start_h": (lo_h + hi_h) / 2, "start_w": (lo_w + hi_w) / 2,
                     "map_h": field.map[0], "map_w": field.map[1]})
    table = pd.DataFrame(rows)
    covers = (table["size_h"] >= resolution) & (table["size_w"] >= resolution)
    border = covers.idxmax() if covers.any() else len(table)
    table["border"] = table.index == border
    table["tail"] = table.index > border
    for column in ("size_h", "size_w", "jump_h", "jump_w"):
        if (table[column] % 1 == 0).all():
            table[column] = table[column].astype(int)
    return table


def border_layer(table: pd.DataFrame) -> str | None:
    """Name of the border layer of a :func:`receptive_fields` table, ``None`` if none covers."""
    rows = table.loc[table["border"], "layer"]
    return rows.iloc[0] if len(rows) else None

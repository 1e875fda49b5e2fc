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

Known operations that keep the spatial size are position-wise (activations, eval-mode
BatchNorm) or merges (``+``, ``*``, ``cat`` over channels); a merge sees the union of its
inputs' regions, so through residual blocks the largest path counts, without rebuilding
the model; normalisations by statistics over the map show the whole map to every unit.
Adaptive pooling gives each unit a box holding its bin (:func:`_adaptive`). An
operation that loses the spatial layout (flatten, global mean, reshape, upsampling,
padding, slicing) is taken to mix all positions: its output sees the union of every
position's region.

Every field carries a status (:data:`STATUSES`, docs/layers.md): ``exact`` when the box
is the region that can influence the unit, ``upper_bound`` when it holds that region and
possibly more, ``data_dependent`` when which positions are read depends on the input
values (the box then holds what any input can reach), ``unsupported`` when the tracer
would have to guess. :func:`gradient_check` compares each row's box with the support of
an input gradient.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from labkit.core.errors import UserError
from labkit.measures.layers import MEASURED_TYPES, layer_name, measured_layers

STATUSES = ("exact", "upper_bound", "data_dependent", "unsupported")
"""How sure a field is, from most to least sure; an operation's output is never surer
than its least sure input (docs/layers.md, "How sure a field is")."""
CHECKS = ("passed", "failed", "skipped")
"""Outcomes of :func:`gradient_check` per row."""

Pair = tuple[float, float]
Box = tuple[Pair, Pair]


class Untraceable(UserError):
    """torch.fx cannot trace the network (data-dependent control flow in ``forward``)."""


def _worst(*statuses: str) -> str:
    """The least sure of ``statuses`` (``exact`` for none)."""
    return max(statuses, key=STATUSES.index, default="exact")


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
        status: one of :data:`STATUSES`.
        unmixed: once the layout is lost by an operation that moves positions without
            combining them (a flatten, a reshape): the tensor dimensions that hold the
            former positions, ``None`` when not known; ``()`` when each element sees the
            whole region (or the layout is kept). A field with positions still unmixed
            is an upper bound of what one element sees.
        cover: after adaptive pooling with irregular bins, whose unit boxes over-cover
            their bins, the hull of what the whole map sees and its status (the bins
            together cover every input unit); ``None`` otherwise.
    """

    size: Pair
    jump: Pair
    start: Pair
    map: tuple[int, int]
    axes: tuple[int, int] | None
    fixed: Box | None = None
    status: str = "exact"
    unmixed: tuple[int, ...] | None = ()
    cover: tuple[Box, str] | None = None

    @property
    def row_status(self) -> str:
        """Status of the row of a layer with this output field."""
        return _worst(self.status, "exact" if self.unmixed == () else "upper_bound")

    def box(self, unit: tuple[int, int]) -> Box:
        """Per axis, :meth:`bounds` of ``unit`` (``(h, w)`` unit indices)."""
        return self.bounds(0, unit[0]), self.bounds(1, unit[1])

    def bounds(self, axis: int, unit: int = 0) -> Pair:
        """First and last input pixel seen by ``unit`` along ``axis`` (maybe in padding)."""
        centre = self.start[axis] + unit * self.jump[axis]
        lo, hi = centre - (self.size[axis] - 1) / 2, centre + (self.size[axis] - 1) / 2
        if self.fixed is None:
            return lo, hi
        return min(lo, self.fixed[axis][0]), max(hi, self.fixed[axis][1])


def _pair(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _gapped(field: Field, axis: int, span: int, step: float) -> bool:
    """Taps ``step`` units apart (``span`` units in all) leave pixels between their
    regions unseen along ``axis``: the box then over-covers the region."""
    return span > 0 and step * field.jump[axis] > field.size[axis]


def _window(field: Field, kernel: tuple, stride: tuple, padding: Any, dilation: tuple,
            out_map: tuple[int, int]) -> Field:
    size, jump, start = [], [], []
    gapped = False
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
        gapped |= _gapped(field, a, reach, dilation[a])
    return replace(field, size=tuple(size), jump=tuple(jump), start=tuple(start), map=out_map,
                   status=_worst(field.status, "upper_bound" if gapped else "exact"), cover=None)


def _adaptive(field: Field, out_map: tuple[int, int]) -> Field:
    """Adaptive pooling: bin ``k`` of ``n_out`` covers input units ``floor(k n_in /
    n_out) .. ceil((k + 1) n_in / n_out) - 1``. Unit ``k``'s box is centred on the line
    through the first and last bins' centres, as wide as needed to hold its bin: exact
    when the bins are regular (same width, constant stride), else an upper bound."""
    size, jump, start = [], [], []
    irregular = gapped = False
    for a in range(2):
        n_in, n_out = field.map[a], out_map[a]
        bins = [(k * n_in // n_out, -(-(k + 1) * n_in // n_out) - 1) for k in range(n_out)]
        centres = [Fraction(lo + hi, 2) for lo, hi in bins]
        step = (centres[-1] - centres[0]) / (n_out - 1) if n_out > 1 else Fraction(n_in)
        half = max(max(centres[0] + k * step - lo, hi - centres[0] - k * step)
                   for k, (lo, hi) in enumerate(bins))
        irregular |= any(hi - lo != 2 * half for lo, hi in bins)
        gapped |= _gapped(field, a, max(hi - lo for lo, hi in bins), 1)
        size.append(field.size[a] + float(2 * half) * field.jump[a])
        jump.append(field.jump[a] * float(step))
        start.append(field.start[a] + float(centres[0]) * field.jump[a])
    status = _worst(field.status, "upper_bound" if irregular or gapped else "exact")
    whole = _collapse(field)
    return replace(field, size=tuple(size), jump=tuple(jump), start=tuple(start), map=out_map,
                   status=status, cover=(whole.box((0, 0)), whole.status) if irregular else None)


def _collapse(field: Field) -> Field:
    """The field of a single unit that sees every position of ``field``'s map (an
    upper bound when the units' regions leave gaps between them)."""
    if field.cover is not None:
        (lo, hi), status = zip(*field.cover[0]), field.cover[1]
        if field.fixed is not None:
            boxes = [field.cover[0], field.fixed]
            (lo, hi), status = zip(*_hull(boxes)), _worst(
                status, "exact" if _nested(boxes) else "upper_bound")
    else:
        lo = [field.bounds(a, 0)[0] for a in range(2)]
        hi = [field.bounds(a, field.map[a] - 1)[1] for a in range(2)]
        gapped = any(_gapped(field, a, field.map[a] - 1, 1) for a in range(2))
        status = _worst(field.status, "upper_bound" if gapped else "exact")
    return Field(tuple(hi[a] - lo[a] + 1 for a in range(2)),
                 tuple(field.jump[a] * field.map[a] for a in range(2)),
                 tuple((lo[a] + hi[a]) / 2 for a in range(2)), (1, 1), None,
                 status=status, unmixed=field.unmixed)


def _hull(regions: Sequence[Box]) -> Box | None:
    """Per axis, the smallest interval holding every ``(lo, hi)`` of ``regions``."""
    if not regions:
        return None
    return tuple((min(r[a][0] for r in regions), max(r[a][1] for r in regions))
                 for a in range(2))


def _nested(boxes: Sequence[Box]) -> bool:
    """One of ``boxes`` holds all the others: their union is a box."""
    return _hull(boxes) in [tuple(b) for b in boxes]


def _union(fields: Sequence[Field], out_map: tuple[int, int],
           axes: tuple[int, int] | None) -> Field:
    """Field of a merge: each unit sees the union of what its inputs' units see.

    Inputs laid out like the output move with the unit (their first-unit regions are
    joined, the jump is theirs); broadcast inputs (a squeeze-excitation scale, a
    layout-less tensor) show their whole region to every unit (``fixed``). The union is
    exact when one input's region holds the others' (a residual block's concentric
    branches), an upper bound when their hull over-covers it, and unsupported when
    aligned inputs move by different jumps (no size and jump describe it).
    """
    status = _worst(*(f.status for f in fields))
    aligned = [f for f in fields if f.axes is not None and f.map == out_map]
    if axes is None or not aligned:
        whole = [_collapse(f) for f in fields]
        boxes = [f.box((0, 0)) for f in whole]
        (lo_h, hi_h), (lo_w, hi_w) = _hull(boxes)
        # a collapse carries its input's status (or, after irregular bins, its cover's)
        status = _worst(*(f.status for f in whole), "exact" if _nested(boxes) else "upper_bound")
        return Field((hi_h - lo_h + 1, hi_w - lo_w + 1),
                     tuple(max(f.jump[a] for f in whole) for a in range(2)),
                     ((lo_h + hi_h) / 2, (lo_w + hi_w) / 2), (1, 1), None, status=status)
    broadcast = [_collapse(f) for f in fields if not any(f is g for g in aligned)]
    fixed_boxes = ([f.fixed for f in aligned if f.fixed is not None]
                   + [f.box((0, 0)) for f in broadcast])
    local = [replace(f, fixed=None) for f in aligned]
    lo = [min(f.bounds(a)[0] for f in local) for a in range(2)]
    hi = [max(f.bounds(a)[1] for f in local) for a in range(2)]
    if len({f.jump for f in aligned}) > 1:
        status = "unsupported"
    elif not all(_nested([f.box(unit) for f in local] + fixed_boxes)
                 for unit in ((0, 0), (out_map[0] - 1, out_map[1] - 1))):
        # local boxes move together, fixed ones stay: nested at both ends, nested between
        status = _worst(status, "upper_bound", *(f.status for f in broadcast))
    else:
        status = _worst(status, *(f.status for f in broadcast))
    # a position-wise op of one input keeps what its whole map sees
    cover = aligned[0].cover if len(fields) == 1 else None
    return Field(tuple(hi[a] - lo[a] + 1 for a in range(2)),
                 tuple(max(f.jump[a] for f in aligned) for a in range(2)),
                 tuple((lo[a] + hi[a]) / 2 for a in range(2)), out_map, axes,
                 _hull(fixed_boxes), status, cover=cover)


# functional windows: parameter names in positional order, and defaults
_WINDOW_FUNCTIONS: dict[Any, tuple[tuple[str, ...], dict[str, Any]]] = {
    F.conv2d: (("input", "weight", "bias", "stride", "padding", "dilation"),
               {"stride": 1, "padding": 0, "dilation": 1}),
    F.max_pool2d: (("input", "kernel_size", "stride", "padding", "dilation"),
                   {"stride": None, "padding": 0, "dilation": 1}),
    torch.max_pool2d: (("input", "kernel_size", "stride", "padding", "dilation"),
                       {"stride": (), "padding": 0, "dilation": 1}),
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
    stride = _pair(args["stride"] if args["stride"] not in (None, ()) else kernel)
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


# operations that combine no two positions (element-wise arithmetic and activations,
# eval-mode normalisation by running statistics, copies and casts, concatenation and
# splitting, reshapes and reductions that keep the map: :func:`_out_axes` checks that)
_POINTWISE_NAMES = frozenset("""
    add sub mul truediv div floordiv mod pow neg pos abs rsub iadd isub imul itruediv
    add_ sub_ mul_ div_ addcmul addcdiv exp log log1p expm1 sqrt rsqrt square reciprocal
    sign erf sin cos clamp clamp_ clamp_min clamp_max clip maximum minimum where lerp
    masked_fill relu relu_ relu6 leaky_relu leaky_relu_ prelu rrelu elu elu_ celu selu gelu
    silu mish sigmoid sigmoid_ tanh tanh_ hardtanh hardtanh_ hardsigmoid hardswish softplus
    softsign logsigmoid threshold hardshrink softshrink tanhshrink dropout dropout1d
    dropout2d dropout3d alpha_dropout feature_alpha_dropout batch_norm local_response_norm
    contiguous clone detach float double half bfloat16 to type type_as cat concat
    concatenate stack chunk split tensor_split unbind getitem expand expand_as unsqueeze
    squeeze reshape view flatten unflatten permute transpose swapaxes channel_shuffle
    native_channel_shuffle mean sum amax amin max min std var logsumexp prod
    """.split())
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.Hardshrink, nn.Softshrink, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold,
    nn.LogSigmoid, nn.Softmax2d, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.BatchNorm3d, nn.SyncBatchNorm, nn.LocalResponseNorm, nn.Flatten, nn.Unflatten,
    nn.ChannelShuffle)
# position-wise operations that may move dimensions
_MOVES = frozenset("""
    reshape view flatten unflatten unsqueeze squeeze getitem expand expand_as stack unbind
    channel_shuffle native_channel_shuffle
    """.split())
# operations along one dimension (argument position, default): position-wise unless that
# dimension is a spatial axis
_ALONG_DIM = {"softmax": (1, None), "log_softmax": (1, None), "softmin": (1, None),
              "cumsum": (1, None), "cumprod": (1, None), "glu": (1, -1), "normalize": (2, 1)}
# normalisations by statistics over the map: every unit sees the whole map too
_WHOLE_MAP_NAMES = frozenset({"group_norm", "instance_norm"})
# spatial routing chosen by the input's values
_DATA_DEPENDENT_NAMES = frozenset("""
    gather index_select take take_along_dim scatter scatter_add scatter_reduce index_add
    index_copy index_put masked_select masked_scatter nonzero sort argsort topk argmax argmin
    kthvalue grid_sample roi_align roi_pool ps_roi_align ps_roi_pool deform_conv2d
    scaled_dot_product_attention multi_head_attention_forward
    """.split())
_DATA_DEPENDENT_MODULES = frozenset({"MultiheadAttention", "RoIAlign", "RoIPool",
                                     "PSRoIAlign", "PSRoIPool", "MultiScaleRoIAlign",
                                     "DeformConv2d"})
_PRODUCTS = frozenset({"matmul", "mm", "bmm", "einsum", "baddbmm"})
# reductions: a layout-less tensor mixes its positions when they are all reduced
_REDUCTIONS = frozenset("mean sum amax amin max min std var logsumexp prod nansum nanmean"
                        .split())


def _name(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def _image_args(arguments: Any, fields: dict[fx.Node, Field]) -> list[fx.Node]:
    """The image-derived nodes in ``arguments`` (any nesting of a call's arguments)."""
    found: list[fx.Node] = []
    fx.node.map_arg(arguments, lambda n: found.append(n) if fields.get(n) is not None else None)
    return found


def _is_data_dependent(node: fx.Node, modules: dict[str, nn.Module],
                       fields: dict[fx.Node, Field]) -> bool:
    """Which positions ``node`` reads depends on values: gathers, sorts, indexing by an
    image-derived tensor, roi and deformable ops, attention (a product of two
    image-derived tensors)."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__ in _DATA_DEPENDENT_MODULES
    name = _name(node)
    if name == "getitem":  # indexing by a tensor of the image
        return bool(_image_args(node.args[1:], fields))
    return (name in _DATA_DEPENDENT_NAMES
            or (name in _PRODUCTS and len(_image_args((node.args, node.kwargs), fields)) > 1))


def _arg(node: fx.Node, position: int, key: str, default: Any) -> Any:
    """Argument ``key`` of a call, given by ``position`` (counting the input) or name."""
    if key in node.kwargs:
        return node.kwargs[key]
    return node.args[position] if len(node.args) > position else default


def _dims(value: Any, ndim: int) -> set[int] | None:
    """Normalised dimensions of a ``dim`` argument; ``None`` when it names none (all)."""
    if value is None or value == ():
        return None
    values = value if isinstance(value, (tuple, list)) else [value]
    return {int(v) % ndim for v in values}


def _layout_kind(node: fx.Node, modules: dict[str, nn.Module], axes: tuple[int, int],
                 ndim: int) -> str:
    """How ``node``, which keeps the spatial map (axes ``axes`` of its ``ndim``-dim
    input), treats positions: ``pointwise``, ``whole_map`` (statistics over the map),
    ``along_axis`` (mixes positions along a spatial axis) or ``unknown``."""
    spatial = set(axes)
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _POINTWISE_MODULES):
            return "pointwise"
        if isinstance(module, (nn.Linear, nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            dim = ndim - 1 if isinstance(module, nn.Linear) else module.dim
            return "along_axis" if dim is None or dim % ndim in spatial else "pointwise"
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            normalised = set(range(ndim - len(module.normalized_shape), ndim))
            return "whole_map" if normalised & spatial else "pointwise"
        if isinstance(module, nn.GroupNorm) or (
                isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d))
                and not module.track_running_stats):
            return "whole_map"
        if isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            return "pointwise"  # running statistics (eval mode)
        return "unknown"
    name = _name(node)
    if name in _ALONG_DIM:
        position, default = _ALONG_DIM[name]
        dims = _dims(_arg(node, position, "dim", default), ndim)
        return "along_axis" if dims is None or dims & spatial else "pointwise"
    if name in ("layer_norm", "rms_norm"):
        shape = _arg(node, 1, "normalized_shape", ())
        shape = shape if isinstance(shape, (tuple, list)) else [shape]
        return "whole_map" if set(range(ndim - len(shape), ndim)) & spatial else "pointwise"
    if name in _WHOLE_MAP_NAMES:
        return "whole_map"
    if name == "linear":
        return "along_axis" if ndim - 1 in spatial else "pointwise"
    return "pointwise" if name in _POINTWISE_NAMES else "unknown"


def _spread(node: fx.Node, modules: dict[str, nn.Module], primary: Field,
            in_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """For ``node`` whose output lost the layout: ``()`` when it mixes every position of
    ``primary`` (a reduction or a linear map over all of them, or a single position),
    else the output dimensions that hold the positions (``None``: not known)."""
    ndim = len(in_shape)
    held = set(primary.axes) if primary.axes is not None else (
        set(primary.unmixed) if primary.unmixed is not None else None)
    if primary.unmixed == () and (primary.axes is None or primary.map == (1, 1)):
        return ()  # every element already sees every position
    module = modules.get(node.target) if node.op == "call_module" else None
    name = _name(node) if module is None else ""
    if isinstance(module, nn.Linear) or name in ("linear", "matmul", "mm"):
        # a linear map over the last dimension (the weight is no image-derived node)
        if held is not None and held <= {ndim - 1}:
            return ()
        return primary.unmixed if primary.axes is None and len(shape) == ndim else None
    if name in _REDUCTIONS and not isinstance(_arg(node, 1, "dim", None), fx.Node):
        dims = _dims(_arg(node, 1, "dim", None), ndim)
        return () if dims is None or (held is not None and held <= dims) else None
    if isinstance(module, nn.Flatten) or name == "flatten":
        first, last = ((module.start_dim, module.end_dim) if module is not None else
                       (_arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)))
        first, last = first % ndim, last % ndim
        return (first,) if held is not None and all(first <= d <= last for d in held) else None
    if name in ("view", "reshape") and len(shape) == 2 and shape[0] == in_shape[0]:
        return (1,)  # one row per sample: every position in the second dimension
    if primary.axes is not None or primary.unmixed is None or len(shape) != ndim:
        return None
    order = _permutation(node, ndim)
    if order is not None:
        return tuple(sorted(order.index(d) for d in primary.unmixed))
    moves = name in _MOVES or isinstance(module, (nn.Unflatten, nn.ChannelShuffle))
    if moves or not (name in _POINTWISE_NAMES or isinstance(module, _POINTWISE_MODULES)):
        return None
    return primary.unmixed  # element-wise: the positions stay where they were


def _propagate(node: fx.Node, modules: dict[str, nn.Module],
               fields: dict[fx.Node, Field]) -> Field | None:
    """Field of ``node``'s output; ``None`` for values not derived from the image."""
    inputs = [(n, fields[n]) for n in node.all_input_nodes if fields.get(n) is not None]
    if not inputs:
        return None
    shape = _shape(node)
    if shape is None:
        return None
    given = [f for _, f in inputs]
    if _is_data_dependent(node, modules, fields):
        # any position may be read: the union of them all bounds every input's choice
        union = _union(given, (1, 1), None)
        return replace(union, status=_worst(union.status, "data_dependent"))
    first = inputs[0][1]  # the data; a functional conv's weight is no image-derived node
    window = _window_params(node, modules)
    if (window or _is_adaptive(node, modules)) and first.axes is not None:
        out_map = (shape[-2], shape[-1])
        return _window(first, *window, out_map) if window else _adaptive(first, out_map)
    # the input with the largest map defines the layout; the others broadcast into it
    primary_node, primary = max(inputs, key=lambda item: item[1].map[0] * item[1].map[1])
    in_shape = _shape(primary_node)
    axes = _out_axes(node, primary, len(in_shape), shape) if in_shape else None
    if axes is None:
        spread = _spread(node, modules, primary, in_shape, shape) if in_shape else None
        if spread is not None and any(f.unmixed != primary.unmixed for f in given):
            spread = None  # positions merged from several layouts
        return replace(_union(given, (1, 1), None), unmixed=spread)
    out_map = (shape[axes[0]], shape[axes[1]])
    kind = _layout_kind(node, modules, primary.axes, len(in_shape))
    if kind == "pointwise":
        return _union(given, out_map, axes)
    # the whole map reaches each unit: a broadcast branch of everything
    union = _union([*given, *(_collapse(f) for f in given)], out_map, axes)
    less_sure = {"whole_map": "exact", "along_axis": "upper_bound"}.get(kind, "unsupported")
    return replace(union, status=_worst(union.status, less_sure))


def _trace_fields(model: nn.Module, in_channels: int, resolution: int) -> dict[fx.Node, Field]:
    """Trace ``model`` and compute the field of every node's output.

    Shapes are propagated with fake tensors: nothing is computed, the model (and its
    BatchNorm statistics) stays untouched.

    Raises:
        Untraceable: torch.fx cannot trace the model.
        UserError: the input is too small for the network (or has other channels).
    """
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds; the user needs the reason, not the type
        raise Untraceable(f"receptive field: torch.fx cannot trace {type(model).__name__}: {exc}. "
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
        patterns: wildcards on layer names (see :func:`labkit.measures.layers.measured_layers`).
        types: module classes to report (default Conv2d and Linear).

    Returns:
        Layer name → :class:`Field`, for every layer the forward pass calls (a layer
        called twice keeps its larger field, and the less sure status of its calls).

    Raises:
        Untraceable: torch.fx cannot trace the model.
        UserError: the input is too small for the model, or no chosen layer is called.
    """
    wanted = [name for name, _ in measured_layers(model, patterns, types)]
    found: dict[str, Field] = {}
    for node, field in _trace_fields(model, in_channels, resolution).items():
        name = layer_name(str(node.target)) if node.op == "call_module" else None
        if name not in wanted:
            continue
        if name in found:
            larger = field if field_area(field) > field_area(found[name]) else found[name]
            field = replace(larger, status=_worst(field.status, found[name].status))
        found[name] = field
    if not found:
        raise UserError(f"receptive field: the forward pass of {type(model).__name__} calls none "
                        f"of the layers {', '.join(wanted)}")
    return {name: found[name] for name in wanted if name in found}


def field_area(field: Field) -> float:
    return math.prod(hi - lo + 1 for lo, hi in (field.bounds(0), field.bounds(1)))

"""The receptive-field table of a network (``receptive_field.csv``): per layer its size,
jump, start and map size per axis, how sure each field is (``rf_status``), optionally
the gradient check (``rf_check``), and the border layer, the first whose field covers
the whole input. The geometry is :mod:`labkit.measures.receptive_field_geometry`'s; the
check :mod:`labkit.measures.receptive_field_check`'s."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from labkit.measures.layers import MEASURED_TYPES, measured_layers
from labkit.measures.receptive_field_check import gradient_check
from labkit.measures.receptive_field_geometry import Untraceable, layer_fields


def receptive_fields(model: nn.Module, in_channels: int, resolution: int,
                     patterns: Sequence[str] | None = None,
                     types: tuple[type[nn.Module], ...] = MEASURED_TYPES,
                     check: bool = False) -> pd.DataFrame:
    """The table of :func:`layer_fields` (same arguments), with the border layer.

    Args:
        check: add the column ``rf_check`` of :func:`gradient_check` (``model`` then
            needs real weights: not on the ``meta`` device).

    Returns:
        One row per layer in network order: ``layer``, ``module`` (class name),
        ``size_h``, ``size_w`` (side of the first unit's field), ``jump_h``, ``jump_w``,
        ``start_h``, ``start_w`` (centre of the first unit's field), all in input
        pixels, ``map_h``, ``map_w`` (output map, units; 1 once flattened), ``border``
        (the first layer whose field covers the whole input), ``tail`` (every layer
        after the border layer), ``rf_status`` (one of :data:`STATUSES`) and, with
        ``check``, ``rf_check`` (one of :data:`CHECKS`). A network torch.fx cannot
        trace gets a row per layer (registration order) with ``rf_status``
        ``unsupported`` and no numbers.
    """
    modules = dict(measured_layers(model, patterns, types))
    try:
        fields = layer_fields(model, in_channels, resolution, patterns, types)
    except Untraceable:
        fields = {}
    rows = []
    for name, field in fields.items():
        (lo_h, hi_h), (lo_w, hi_w) = field.bounds(0), field.bounds(1)
        rows.append({"layer": name, "module": type(modules[name]).__name__,
                     "size_h": hi_h - lo_h + 1, "size_w": hi_w - lo_w + 1,
                     "jump_h": field.jump[0], "jump_w": field.jump[1],
                     "start_h": (lo_h + hi_h) / 2, "start_w": (lo_w + hi_w) / 2,
                     "map_h": field.map[0], "map_w": field.map[1]})
    if not fields:
        rows = [{"layer": name, "module": type(module).__name__}
                for name, module in modules.items()]
    table = pd.DataFrame(rows).reindex(columns=[
        "layer", "module", "size_h", "size_w", "jump_h", "jump_w", "start_h", "start_w",
        "map_h", "map_w"])
    covers = (table["size_h"] >= resolution) & (table["size_w"] >= resolution)
    border = covers.idxmax() if covers.any() else len(table)
    table["border"] = table.index == border
    table["tail"] = table.index > border
    table["rf_status"] = [fields[name].row_status if fields else "unsupported"
                          for name in table["layer"]]
    if check:
        checks = gradient_check(model, in_channels, resolution, fields)
        table["rf_check"] = [checks.get(name, "skipped") for name in table["layer"]]
    for column in ("size_h", "size_w", "jump_h", "jump_w", "map_h", "map_w"):
        if (table[column] % 1 == 0).all():
            table[column] = table[column].astype(int)
    return table


def border_layer(table: pd.DataFrame) -> str | None:
    """Name of the border layer of a :func:`receptive_fields` table, ``None`` if none covers."""
    rows = table.loc[table["border"], "layer"]
    return rows.iloc[0] if len(rows) else None

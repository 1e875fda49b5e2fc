"""Stitching tables from a grid of stitch runs, and heatmaps of stitching and CKA tables.

The runs of a spec whose model is ``stitched`` fall into *groups*: runs that differ only
in ``sender_layer``, ``receiver_layer`` and ``sender_weights`` (the grid axes of one
table) share a group; any other difference (another pair of networks, another stitch
depth, learning rate or method) starts a new group. Each group gives one i × j table.

Columns of the stitching table (one row per group and layer pair):

* ``group``: ``<A model>-to-<B model>-<hash of the group's shared settings>``;
* ``sender_run``, ``receiver_run``: run directories of A and B;
* ``sender_layer``, ``receiver_layer``: the cell (rows i, columns j of the table);
* ``split``, ``metric``: what is read from the last row of each run's ``log.csv``;
* ``stitched``: the stitched network with A's trained weights;
* ``random_sender``: the same stitch trained on a randomly initialised A;
* ``debiased``: ``stitched - random_sender``;
* ``direct_match``: the direct-matching stitch, fitted in closed form (least squares) on
  A's and B's activations instead of trained on the task (:mod:`labkit_stitch.direct`);
  empty unless computed (``labkit stitch-table`` does by default);
* ``sender``, ``receiver``: A's and B's own final value;
* ``penalty``: the stitching penalty, ``receiver - stitched``;
* ``unstitchable``: why the cell cannot be stitched (A's activation cannot be mapped
  into B's, or B cannot start at that layer), empty for a cell that can; such a cell's
  values are empty and its runs are never trained;
* ``stitch_run``, ``random_stitch_run``: the two stitch runs' directories;
* ``matching_layers``: A and B have the same architecture (:func:`matching_layers`), so
  each layer of A has a *matching layer* of B, the one of the same name;
* ``stitched_beats_diagonal``, ``direct_match_beats_diagonal``, ``beats_diagonal``: the
  cell is rated more similar than a matching-layer cell on the diagonal
  (:func:`beats_diagonal`), by the trained stitch, by the direct match, by either;
* ``config.<key>``: every other setting that varies across the spec's runs;
* companion columns (:func:`with_companions`, ``labkit stitch-table --measure``): a
  similarity measure between A's ``sender_layer`` and B's ``receiver_layer``.

A value whose run is missing or failed is empty (NaN).

:func:`mean_table` averages the table over grid axes such as seeds (mean, sample
standard deviation and count per cell); :func:`latest_table` gives, per group, the
latest layer of A that can stitch into B (defined there).

:func:`beats_diagonal` flags the cells rated more similar than the matching-layer cells
on the diagonal (a larger value is more similar, a smaller one for the metrics of
:data:`LOWER_IS_BETTER`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit.api import (RunConfig, UserError, flatten, identity_config, is_trained, runinfo,
                        varying_keys, write_figure)
from labkit_stitch.catalogue import Choice
from labkit_stitch.stitching import StitchedParams

AXES = ("sender_layer", "receiver_layer", "sender_weights")
COLUMNS = ["group", "sender_run", "receiver_run", "sender_layer", "receiver_layer", "split",
           "metric", "stitched", "random_sender", "debiased", "direct_match", "sender",
           "receiver", "penalty", "unstitchable", "stitch_run", "random_stitch_run",
           "matching_layers", "stitched_beats_diagonal", "direct_match_beats_diagonal",
           "beats_diagonal"]
MEASURES = ("stitched", "random_sender", "debiased", "direct_match", "sender", "receiver",
            "penalty")
DIAGONAL_CHECKED = ("stitched", "direct_match")
"""The values whose cells are compared with the diagonal (:func:`beats_diagonal`)."""
LOWER_IS_BETTER = ("loss", "soft-cross-entropy")
"""Metrics of labkit's evaluation where a smaller value is better."""


def tables_folder(runs: Sequence[RunConfig]) -> Path:
    """Where ``labkit stitch-table`` writes the tables of a grid's stitch runs unless
    told otherwise: ``<logs_dir>/stitch_tables/<spec name>/<run-id>``."""
    return (Path(runs[0].config["logs_dir"]) / "stitch_tables" / runs[0].config["name"]
            / runs[0].run_id)


def final_value(run: RunConfig, column: str) -> float:
    """``column`` in the last row of the run's ``log.csv``; NaN when not trained (no final
    checkpoint) or absent."""
    if not is_trained(run):
        return float("nan")
    log = pd.read_csv(Path(run.directory) / runinfo.LOG_CSV)
    return float(log[column].iloc[-1]) if column in log else float("nan")


def _drop(config: dict[str, Any], key: str) -> None:
    """Remove the dotted ``key`` (a value or a whole sub-object) from a nested config."""
    *parents, last = key.split(".")
    for part in parents:
        config = config.get(part)
        if not isinstance(config, dict):
            return
    config.pop(last, None)


def group_of(run: RunConfig, params: StitchedParams, over: Sequence[str] = ()) -> str:
    """The run's group name (see the module docstring); ``params``: its model's.

    Args:
        over: dotted config keys left out as well (the axes a mean table averages over):
            runs that differ only there share the group.
    """
    shared = identity_config(run.config)
    for axis in AXES:
        shared["model"].pop(axis)
    for key in over:
        _drop(shared, key)
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    sender = params.sender.run_config().config["model"]["name"]
    receiver = params.receiver.run_config().config["model"]["name"]
    return f"{sender}-to-{receiver}-{digest}"


def stitched_params(run: RunConfig) -> StitchedParams:
    """The validated ``stitched`` parameters of a stitch run."""
    return StitchedParams.model_validate(
        {k: v for k, v in run.config["model"].items() if k != "name"})


def matching_layers(a: RunConfig, b: RunConfig) -> bool:
    """Whether the layers of networks A and B match by name: A and B have the same
    architecture, i.e. equal ``model`` settings apart from initial ``weights`` (two
    copies of one run, two seeds of one network). The matching layer of A's layer i is
    then B's layer of the same name (labkit's dash form)."""
    def architecture(run: RunConfig) -> dict[str, Any]:
        return {k: v for k, v in run.config["model"].items() if k != "weights"}
    return architecture(a) == architecture(b)


def stitch_table(runs: list[RunConfig], split: str = "eval", metric: str = "accuracy",
                 problems: Mapping[str, str | None] | None = None,
                 direct: Mapping[tuple[str, str, str], float] | None = None,
                 diagonal_tolerance: float = 0.0) -> pd.DataFrame:
    """The stitching table of a spec's stitch runs (columns in the module docstring).

    Rows keep the order of the grid (the spec's order of layers).

    Args:
        problems: per stitch run directory, why its cell is unstitchable (``None`` for
            one that is not), as :class:`~labkit_stitch.stitching.CellChecker` found.
        direct: ``{(group, sender_layer, receiver_layer): value}`` of the direct-matching
            stitch (:func:`labkit_stitch.direct.direct_match_values`); empty cells where
            absent.
        diagonal_tolerance: of :func:`beats_diagonal`.
    """
    column = f"{split}-{metric}"
    varying = [k for k in varying_keys([r.config for r in runs])
               if k not in {f"model.{axis}" for axis in AXES}]
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs:
        params = stitched_params(run)
        sender, receiver = params.sender.run_config(), params.receiver.run_config()
        key = (group_of(run, params), params.sender_layer, params.receiver_layer)
        flat = flatten(run.config)
        cell = cells.setdefault(key, {
            "group": key[0], "sender_run": str(sender.directory),
            "receiver_run": str(receiver.directory), "sender_layer": key[1],
            "receiver_layer": key[2], "split": split, "metric": metric,
            "stitched": np.nan, "random_sender": np.nan,
            "direct_match": (direct or {}).get(key, np.nan),
            "sender": final_value(sender, column),
            "receiver": final_value(receiver, column),
            "unstitchable": None, "stitch_run": None, "random_stitch_run": None,
            "matching_layers": matching_layers(sender, receiver),
            **{f"config.{k}": flat.get(k) for k in varying}})
        cell["unstitchable"] = cell["unstitchable"] or (problems or {}).get(str(run.directory))
        trained = params.sender_weights == "trained"
        cell["stitched" if trained else "random_sender"] = final_value(run, column)
        cell["stitch_run" if trained else "random_stitch_run"] = str(run.directory)
    table = pd.DataFrame(list(cells.values()))
    table["debiased"] = table["stitched"] - table["random_sender"]
    table["penalty"] = table["receiver"] - table["stitched"]
    table = with_diagonal_flags(table, DIAGONAL_CHECKED, diagonal_tolerance)
    return table[COLUMNS + [f"config.{k}" for k in varying]]


def diagonal_values(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per cell (i, j) of ``table``, ``column``'s value at the matching-layer cells of its
    group: ``row``, the cell (i, i) (A's layer i into its matching layer of B), and
    ``column``, the cell (j, j) (B's layer j fed by its matching layer of A); NaN where
    that cell is not in the table, has no value, or the group's layers do not match
    (``matching_layers`` false)."""
    diagonal = table[(table["sender_layer"] == table["receiver_layer"])
                     & table["matching_layers"].astype(bool)]
    values = dict(zip(zip(diagonal["group"], diagonal["sender_layer"]), diagonal[column]))
    return pd.DataFrame(
        {side: [values.get(key, np.nan) for key in zip(table["group"], table[layer])]
         for side, layer in (("row", "sender_layer"), ("column", "receiver_layer"))},
        index=table.index, dtype=float)


def beats_diagonal(table: pd.DataFrame, column: str, tolerance: float = 0.0,
                   lower_is_better: bool = False) -> pd.Series:
    """Whether each cell is rated more similar than a matching-layer cell of the diagonal.

    In a group whose A and B have matching layers (column ``matching_layers``), cell
    (i, j) with i ≠ j is flagged when its value beats the diagonal cell of its row or of
    its column by more than ``tolerance``::

        value(i, j) > value(i, i) + tolerance   (A's layer i is rated closer to B's
                                                 layer j than to its own match)
     or value(i, j) > value(j, j) + tolerance   (B's layer j is rated closer to A's
                                                 layer i than to its own match)

    (``<`` and ``−`` for ``lower_is_better``). Diagonal cells, empty cells and cells
    whose diagonal cells are absent or empty are not flagged; nor is any cell of a group
    whose layers do not match.

    Args:
        table: ``group``, ``sender_layer``, ``receiver_layer``, ``matching_layers`` and
            ``column``.
        tolerance: an absolute difference in the value, ≥ 0.

    Returns:
        Booleans, indexed like ``table``.
    """
    sign = -1.0 if lower_is_better else 1.0
    excess = sign * (table[[column]].to_numpy(dtype=float)
                     - diagonal_values(table, column).to_numpy())
    with np.errstate(invalid="ignore"):  # NaN: no comparison, no flag
        beaten = (excess > tolerance).any(axis=1)
    return pd.Series(beaten & (table["sender_layer"] != table["receiver_layer"]).to_numpy(),
                     index=table.index)


def with_diagonal_flags(table: pd.DataFrame, columns: Sequence[str],
                        tolerance: float) -> pd.DataFrame:
    """``table`` with ``<column>_beats_diagonal`` for each of ``columns`` and
    ``beats_diagonal`` (any of them), by :func:`beats_diagonal` (smaller is better for
    the metrics of :data:`LOWER_IS_BETTER`, read from the ``metric`` column)."""
    lower = bool(len(table)) and table["metric"].iloc[0] in LOWER_IS_BETTER
    flags = {f"{column}_beats_diagonal": beats_diagonal(table, column, tolerance, lower)
             for column in columns}
    return table.assign(**flags, beats_diagonal=pd.DataFrame(flags, index=table.index)
                        .any(axis=1))


def seed_keys(runs: list[RunConfig]) -> list[str]:
    """The seed axes of a grid of stitch runs: the varying config keys named ``seed``
    (the stitch's own) or ending in ``.seed`` (e.g. ``model.sender.where.seed``: A
    networks of several seeds), the default axes of :func:`mean_table`."""
    return [k for k in varying_keys([r.config for r in runs])
            if k == "seed" or k.endswith(".seed")]


def check_axes(runs: list[RunConfig], over: Sequence[str]) -> None:
    """Raise :class:`UserError` for an axis of ``over`` that no varying config key of
    ``runs`` is (or lies under)."""
    varying = varying_keys([r.config for r in runs])
    for key in over:
        if not any(k == key or k.startswith(key + ".") for k in varying):
            raise UserError(f"--average-over {key}: not a config key that varies across the "
                            f"spec's runs; keys that vary: {', '.join(varying) or '(none)'}")


def mean_table(runs: list[RunConfig], table: pd.DataFrame, over: Sequence[str],
               diagonal_tolerance: float = 0.0) -> pd.DataFrame:
    """``table`` (of :func:`stitch_table`) averaged over the grid axes ``over``.

    Cells of groups that differ only in the keys ``over`` (dotted config keys, or
    prefixes of them: ``model.sender`` averages over every setting of A's reference) are
    pooled. Per cell and per value of :data:`MEASURES`: ``<value>_mean``, ``<value>_std``
    (sample standard deviation, ``ddof=1``; empty for one value) and ``<value>_n`` (the
    values pooled; an empty value, from an unfinished or failed run, is not counted).

    Columns: ``group`` (named as in :func:`group_of` with ``over`` left out),
    ``sender_layer``, ``receiver_layer``, ``split``, ``metric``, the three columns per
    measure, ``unstitchable``, ``matching_layers`` (of every pooled group),
    ``averaged_over`` (``over``, joined by ``;``), ``groups`` (the per-seed groups
    pooled, joined by ``;``), the ``config.<key>`` columns of ``table`` that are not
    averaged over, then ``stitched_mean_beats_diagonal``,
    ``direct_match_mean_beats_diagonal`` and ``beats_diagonal``
    (:func:`beats_diagonal` of the means, with ``diagonal_tolerance``).
    """
    renamed = {}
    for run in runs:
        params = stitched_params(run)
        renamed[group_of(run, params)] = group_of(run, params, over)
    pooled = table.assign(group=table["group"].map(renamed), source=table["group"])
    keep = [c for c in table.columns if c.startswith("config.")
            and not any(c[7:] == k or c[7:].startswith(k + ".") for k in over)]
    rows = []
    for (group, sender_layer, receiver_layer), cell in pooled.groupby(
            ["group", "sender_layer", "receiver_layer"], sort=False):
        row = {"group": group, "sender_layer": sender_layer, "receiver_layer": receiver_layer,
               "split": cell["split"].iloc[0], "metric": cell["metric"].iloc[0]}
        for measure in MEASURES:
            values = cell[measure].dropna()
            row[f"{measure}_mean"] = values.mean() if len(values) else np.nan
            row[f"{measure}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{measure}_n"] = len(values)
        reasons = cell["unstitchable"].dropna()
        row["unstitchable"] = reasons.iloc[0] if len(reasons) else None
        row["matching_layers"] = bool(cell["matching_layers"].all())
        row["averaged_over"] = ";".join(over)
        row["groups"] = ";".join(cell["source"].unique())
        row.update({c: cell[c].iloc[0] for c in keep})
        rows.append(row)
    return with_diagonal_flags(pd.DataFrame(rows),
                               [f"{value}_mean" for value in DIAGONAL_CHECKED],
                               diagonal_tolerance)


def latest_table(table: pd.DataFrame, depths: Mapping[tuple[str, str], int], tolerance: float,
                 mean: bool = False) -> pd.DataFrame:
    """Per group, the latest layer of A that can stitch into B.

    A cell (i, j) *stitches* when its stitched value is at least B's own value less
    ``tolerance``: ``stitched ≥ receiver − tolerance`` (an absolute difference in the
    metric; unstitchable and empty cells never do). The latest layer that can stitch is
    the deepest layer i of A, in A's forward order (``depths``), for which some layer j
    of B stitches; ``receiver_layer`` is the j where it does best.

    Args:
        table: a table of :func:`stitch_table`, or of :func:`mean_table` with ``mean``
            (then the means ``stitched_mean`` and ``receiver_mean`` are compared).
        depths: ``{(group, sender layer): position in A's forward pass}`` (groups as in
            ``table``).
        tolerance: how far below B's own value a stitched value may lie, ≥ 0.

    Returns:
        One row per group: ``group``, ``split``, ``metric``, ``tolerance``, ``baseline``
        (B's own value), ``latest_sender_layer`` (empty when no cell stitches),
        ``receiver_layer``, ``stitched`` (its value there), ``penalty`` (``baseline −
        stitched``), ``stitching_cells`` (cells that stitch), ``cells`` (cells with a
        value).
    """
    stitched, receiver = ("stitched_mean", "receiver_mean") if mean else ("stitched", "receiver")
    rows = []
    for group, cells in table.groupby("group", sort=False):
        baseline = cells[receiver].dropna()
        baseline = float(baseline.iloc[0]) if len(baseline) else np.nan
        valued = cells[cells[stitched].notna()]
        good = valued[valued[stitched] >= baseline - tolerance]
        row = {"group": group, "split": cells["split"].iloc[0],
               "metric": cells["metric"].iloc[0], "tolerance": tolerance,
               "baseline": baseline, "latest_sender_layer": None, "receiver_layer": None,
               "stitched": np.nan, "penalty": np.nan, "stitching_cells": len(good),
               "cells": len(valued)}
        if len(good):
            deepest = max(good["sender_layer"], key=lambda layer: depths[(group, layer)])
            best = good[good["sender_layer"] == deepest].sort_values(
                stitched, ascending=False, kind="stable").iloc[0]
            row.update(latest_sender_layer=deepest, receiver_layer=best["receiver_layer"],
                       stitched=float(best[stitched]),
                       penalty=baseline - float(best[stitched]))
        rows.append(row)
    return pd.DataFrame(rows)


def matrix(rows: pd.DataFrame, value: str, row: str, column: str) -> pd.DataFrame:
    """``rows[value]`` as a ``row`` × ``column`` matrix, labels in order of appearance."""
    return (rows.pivot(index=row, columns=column, values=value)
            .reindex(index=rows[row].unique(), columns=rows[column].unique()))


def heatmaps(panels: list[tuple[str, pd.DataFrame, dict[str, Any]]], title: str,
             path: Path, spreads: list[pd.DataFrame] | None = None,
             marks: list[pd.DataFrame | None] | None = None) -> None:
    """One annotated heatmap per panel, side by side, written atomically as PNG. An
    empty (NaN) cell, such as an unstitchable one, is left blank.

    Args:
        panels: ``(title, matrix, imshow keywords)``; matrices have A's layers as rows
            and B's layers as columns.
        title: the figure's title.
        path: the PNG file.
        spreads: per panel, a matrix of the same shape annotated under each value as
            ``±spread`` (the standard deviation of a mean table).
        marks: per panel, ``None`` or a boolean matrix of the same shape: a true cell is
            outlined in red (a cell that beats the diagonal).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    first = panels[0][1]
    width = 1.2 + 0.8 * len(first.columns)
    figure = Figure(figsize=(width * len(panels), 1.6 + 0.6 * len(first.index)),
                    layout="constrained")
    for k, (axes, (name, values, style)) in enumerate(
            zip(figure.subplots(1, len(panels), squeeze=False)[0], panels)):
        spread = None if spreads is None else spreads[k].to_numpy(dtype=float)
        # eq(True): a cell missing from the grid (NaN) is not marked
        marked = None if marks is None or marks[k] is None else marks[k].eq(True).to_numpy()
        image = axes.imshow(values.to_numpy(dtype=float), **style)
        axes.set_xticks(range(len(values.columns)), values.columns, rotation=45, ha="right")
        axes.set_yticks(range(len(values.index)), values.index)
        axes.set_xlabel("layer of B")
        axes.set_ylabel("layer of A")
        axes.set_title(name)
        for (i, j), value in np.ndenumerate(values.to_numpy(dtype=float)):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived luminance
                text = f"{value:.2f}"
                if spread is not None and np.isfinite(spread[i, j]):
                    text += f"\n±{spread[i, j]:.2f}"
                axes.text(j, i, text, ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")
            if marked is not None and marked[i, j]:
                axes.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False,
                                         edgecolor="red", linewidth=2))
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(title)
    write_figure(path, figure)


def plot_stitch_group(rows: pd.DataFrame, path: Path, mean: bool = False) -> None:
    """Stitched, random-sender, debiased and direct-match tables of one group as one PNG;
    unstitchable cells blank; in the stitched and direct-match panels, the cells that
    beat the diagonal (:func:`beats_diagonal`) outlined in red.

    Args:
        mean: ``rows`` are of a :func:`mean_table`: the means, each annotated with its
            standard deviation.
    """
    suffix = "_mean" if mean else ""
    unit = {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}
    # a symmetric scale around 0 that small differences still colour
    largest = np.abs(rows[f"debiased{suffix}"]).max()  # NaN when every cell is empty
    spread = max(0.1, float(largest)) if pd.notna(largest) else 0.1
    panels = [("stitched", "stitched", unit), ("random sender", "random_sender", unit),
              ("debiased", "debiased", {"vmin": -spread, "vmax": spread, "cmap": "RdBu_r"}),
              ("direct match", "direct_match", unit)]
    metric = f"{rows['split'].iloc[0]} {rows['metric'].iloc[0]}" + (" mean ± std" if mean else "")
    title = rows["group"].iloc[0]
    if rows["matching_layers"].any():
        title += "\nred box: rated more similar than a matching-layer cell of the diagonal"
    heatmaps([(f"{name}\n({metric})",
               matrix(rows, column + suffix, "sender_layer", "receiver_layer"), style)
              for name, column, style in panels], title, path,
             [matrix(rows, f"{column}_std", "sender_layer", "receiver_layer")
              for _, column, _ in panels] if mean else None,
             [matrix(rows, f"{column}{suffix}_beats_diagonal", "sender_layer",
                     "receiver_layer") if column in DIAGONAL_CHECKED else None
              for _, column, _ in panels])


def with_companions(table: pd.DataFrame, companions: pd.DataFrame) -> pd.DataFrame:
    """``table`` (of :func:`stitch_table`) with similarity columns beside each cell.

    Args:
        companions: ``run_a``, ``run_b``, ``layer_a``, ``layer_b`` (A's and B's run
            directories and layers), then the columns to add, one row per pair of layers
            (:func:`~labkit_stitch.similarity.layer_similarity`'s rows).

    Returns:
        ``table`` with those columns appended, the value between the *trained* A's
        ``sender_layer`` and B's ``receiver_layer`` (also in an unstitchable cell).
    """
    keys = {"run_a": "sender_run", "run_b": "receiver_run", "layer_a": "sender_layer",
            "layer_b": "receiver_layer"}
    companions = companions.rename(columns=keys).drop_duplicates(list(keys.values()))
    return table.merge(companions, how="left", on=list(keys.values()), validate="many_to_one")


def plot_similarity(rows: pd.DataFrame, choices: Sequence[Choice], title: str,
                    path: Path) -> None:
    """One heatmap per measure (A's layers × B's layers) of one pair of runs, as one PNG.

    Similarities are drawn from min(0, lowest) to max(1, highest), distances from 0 to
    their highest value with the colour scale reversed, so that bright is similar for
    both.
    """
    panels = []
    for choice in choices:
        values = matrix(rows, choice.column, "layer_a", "layer_b")
        finite = values.to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        style = ({"vmin": 0.0, "vmax": max(high, 1e-12), "cmap": "magma_r"}
                 if choice.measure.kind == "distance"
                 else {"vmin": min(0.0, low), "vmax": max(1.0, high), "cmap": "magma"})
        panels.append((choice.column.replace("_", " "), values, style))
    heatmaps(panels, title, path)

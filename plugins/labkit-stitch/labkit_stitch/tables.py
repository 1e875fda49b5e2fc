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
* ``sender``, ``receiver``: A's and B's own final value;
* ``penalty``: the stitching penalty, ``receiver - stitched``;
* ``stitch_run``, ``random_stitch_run``: the two stitch runs' directories;
* ``config.<key>``: every other setting that varies across the spec's runs.

A value whose run is missing or failed is empty (NaN).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit.api import (RunConfig, flatten, identity_config, is_trained, runinfo, varying_keys,
                        write_figure)

from labkit_stitch.stitching import StitchedParams

AXES = ("sender_layer", "receiver_layer", "sender_weights")
COLUMNS = ["group", "sender_run", "receiver_run", "sender_layer", "receiver_layer", "split",
           "metric", "stitched", "random_sender", "debiased", "sender", "receiver", "penalty",
           "stitch_run", "random_stitch_run"]


def final_value(run: RunConfig, column: str) -> float:
    """``column`` in the last row of the run's ``log.csv``; NaN when not trained (no final
    checkpoint) or absent."""
    if not is_trained(run):
        return float("nan")
    log = pd.read_csv(Path(run.directory) / runinfo.LOG_CSV)
    return float(log[column].iloc[-1]) if column in log else float("nan")


def group_of(run: RunConfig, params: StitchedParams) -> str:
    """The run's group name (see the module docstring); ``params``: its model's."""
    shared = identity_config(run.config)
    for axis in AXES:
        shared["model"].pop(axis)
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    sender = params.sender.run_config().config["model"]["name"]
    receiver = params.receiver.run_config().config["model"]["name"]
    return f"{sender}-to-{receiver}-{digest}"


def stitched_params(run: RunConfig) -> StitchedParams:
    """The validated ``stitched`` parameters of a stitch run."""
    return StitchedParams.model_validate(
        {k: v for k, v in run.config["model"].items() if k != "name"})


def stitch_table(runs: list[RunConfig], split: str = "eval",
                 metric: str = "accuracy") -> pd.DataFrame:
    """The stitching table of a spec's stitch runs (columns in the module docstring).

    Rows keep the order of the grid (the spec's order of layers).
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
            "sender": final_value(sender, column),
            "receiver": final_value(receiver, column),
            "stitch_run": None, "random_stitch_run": None,
            **{f"config.{k}": flat.get(k) for k in varying}})
        trained = params.sender_weights == "trained"
        cell["stitched" if trained else "random_sender"] = final_value(run, column)
        cell["stitch_run" if trained else "random_stitch_run"] = str(run.directory)
    table = pd.DataFrame(list(cells.values()))
    table["debiased"] = table["stitched"] - table["random_sender"]
    table["penalty"] = table["receiver"] - table["stitched"]
    return table[COLUMNS + [f"config.{k}" for k in varying]]


def matrix(rows: pd.DataFrame, value: str, row: str, column: str) -> pd.DataFrame:
    """``rows[value]`` as a ``row`` × ``column`` matrix, labels in order of appearance."""
    return (rows.pivot(index=row, columns=column, values=value)
            .reindex(index=rows[row].unique(), columns=rows[column].unique()))


def heatmaps(panels: list[tuple[str, pd.DataFrame, dict[str, Any]]], title: str,
             path: Path) -> None:
    """One annotated heatmap per panel, side by side, written atomically as PNG.

    Args:
        panels: ``(title, matrix, imshow keywords)``; matrices have A's layers as rows
            and B's layers as columns.
        title: the figure's title.
        path: the PNG file.
    """
    from matplotlib.figure import Figure

    first = panels[0][1]
    width = 1.2 + 0.8 * len(first.columns)
    figure = Figure(figsize=(width * len(panels), 1.6 + 0.6 * len(first.index)),
                    layout="constrained")
    for axes, (name, values, style) in zip(figure.subplots(1, len(panels), squeeze=False)[0],
                                           panels):
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
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")
        figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(title)
    write_figure(path, figure)


def plot_stitch_group(rows: pd.DataFrame, path: Path) -> None:
    """Stitched, random-sender and debiased tables of one group as one PNG."""
    unit = {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}
    # a symmetric scale around 0 that small differences still colour
    largest = np.abs(rows["debiased"]).max()  # NaN when every cell is empty
    spread = max(0.1, float(largest)) if pd.notna(largest) else 0.1
    panels = [("stitched", "stitched", unit), ("random sender", "random_sender", unit),
              ("debiased", "debiased", {"vmin": -spread, "vmax": spread, "cmap": "RdBu_r"})]
    metric = f"{rows['split'].iloc[0]} {rows['metric'].iloc[0]}"
    heatmaps([(f"{name} ({metric})", matrix(rows, column, "sender_layer", "receiver_layer"), style)
              for name, column, style in panels], rows["group"].iloc[0], path)


def plot_cka(rows: pd.DataFrame, title: str, path: Path) -> None:
    """Linear, RBF and minibatch CKA of one pair of runs as one PNG."""
    style = {"vmin": 0.0, "vmax": 1.0, "cmap": "magma"}
    heatmaps([(name.replace("_", " "), matrix(rows, name, "layer_a", "layer_b"), style)
              for name in ("linear_cka", "rbf_cka", "minibatch_cka")], title, path)

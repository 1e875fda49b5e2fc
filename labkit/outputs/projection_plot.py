"""Projection curves: eval accuracy with every layer projected onto its top principal
directions, against δ (the share of each layer's variance kept), beside the random
control of the same rank (:mod:`labkit.analyses.projection` computes them).

:func:`projection_tables` reads a run's ``projected_results*.csv`` files;
:func:`projection_curves` draws groups of runs (mean ± sd over each group's runs, a row of
panels per eval split: PCA projection left, random control right, the unprojected
accuracy dotted in both); :func:`draw_projection` writes one run's figure (the analysis
calls it).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from labkit.outputs import figures
from labkit.outputs.figures import Style
from labkit.outputs.results import NAMED_TABLES
from labkit.outputs.tail_plot import measured_table
from labkit.store.atomic import write_figure
from labkit.store.output_digests import damaged_outputs
from labkit.store.readers import FINITE, TEXT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PATTERN = NAMED_TABLES["projection"]
COLUMNS = {"delta": FINITE, "split": TEXT, "accuracy": FINITE, "control_accuracy": FINITE,
           "unprojected_accuracy": FINITE}
WHAT = ("Projection: eval accuracy with every layer projected onto the principal directions "
        "keeping a share δ of its variance,\nagainst random directions of the same rank")


def projection_tables(run_dir: Path, problems: list[str]) -> dict[str, pd.DataFrame]:
    """File name → rows of each ``projected_results*.csv`` of the run (one per set of
    projection parameters). A file that is damaged or no longer matches its analysis's
    digest is left out, its line added to ``problems``."""
    flagged = damaged_outputs(run_dir)
    tables = {}
    for path in sorted(Path(run_dir).glob(PATTERN)):
        table = measured_table(run_dir, path.name, COLUMNS, problems, flagged)
        if table is not None and not table.empty:
            tables[path.name] = table
    return tables


def _stats(tables: list[pd.DataFrame], split: str, column: str) -> pd.DataFrame:
    """Mean, sd and count over ``tables`` of ``column`` on ``split``, indexed by δ."""
    return figures.mean_sd([t[t["split"] == split].groupby("delta")[column].mean()
                            for t in tables])


def projection_curves(groups: dict[str, list[pd.DataFrame]], name: str,
                      styles: dict[str, Style] | None = None) -> Figure | None:
    """Accuracy against δ of each group (see the module docstring); ``None`` without
    rows. δ is spaced evenly (its values are chosen points such as 0.9, 0.99, 0.999,
    1.0), so the points near 1 stay apart."""
    groups = {label: tables for label, tables in groups.items() if tables}
    if not groups:
        return None
    styles = styles or {label: Style(f"C{i % 10}") for i, label in enumerate(groups)}
    rows = pd.concat([t for tables in groups.values() for t in tables])
    evals = list(dict.fromkeys(rows["split"]))
    deltas = sorted(set(rows["delta"]))
    place = {delta: i for i, delta in enumerate(deltas)}
    figure = figures.new_figure(figsize=(figures.PAGE_WIDTH, 3.6 * len(evals) + 1.0),
                                layout="constrained")
    axes = figure.subplots(len(evals), 2, sharey=True, squeeze=False)
    shown = []
    for (pca_axis, control_axis), split in zip(axes, evals):
        for label, tables in groups.items():
            style = styles[label]
            count = f" (mean ± sd of {len(tables)})" if len(tables) > 1 else ""
            for axis, column in ((pca_axis, "accuracy"), (control_axis, "control_accuracy")):
                stats = _stats(tables, split, column)
                if stats.empty:
                    continue
                x = [place[d] for d in stats.index]
                figures.band(axis, x, stats, style, f"{label}{count}" if axis is pca_axis
                             else None)
                shown += [stats["mean"] - stats["sd"], stats["mean"] + stats["sd"]]
            unprojected = _stats(tables, split, "unprojected_accuracy")["mean"]
            for axis in (pca_axis, control_axis):
                axis.axhline(float(unprojected.mean()), color=style.color, linestyle=":",
                             linewidth=1.2)
            shown.append(unprojected)
        pca_axis.set(title=f"top principal directions ({split})", ylabel=f"{split} accuracy")
        control_axis.set(title=f"random directions, same rank: control ({split})")
        for axis in (pca_axis, control_axis):
            axis.set_xticks(range(len(deltas)), [f"{d:g}" for d in deltas])
            axis.set_xlabel("δ (share of each layer's variance kept)")
            axis.grid(alpha=0.3)
    axes[0][0].set_ylim(figures.data_limits(pd.concat(shown)))
    axes[0][1].plot([], [], color="0.3", linestyle=":", label="unprojected (dotted)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    extra = axes[0][1].get_legend_handles_labels()
    figures.figure_legend(figure, handles + extra[0], labels + extra[1],
                          title="group" if len(groups) > 1 else None)
    return figures.titled(figure, WHAT, name)


def draw_projection(table: pd.DataFrame, path: Path, name: str) -> None:
    """One run's projection figure (rows of ``projected_results.csv``) into the PNG
    ``path`` (atomically), titled with ``name``."""
    figure = projection_curves({"this run": [table]}, name)
    if figure is None:
        figure = figures.titled(figures.new_figure(figsize=(6, 2)), "Projection: no rows", name)
    write_figure(path, figure)

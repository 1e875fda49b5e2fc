"""Figures of runs and grids, drawn from the files in the run directories.

Per run (from ``log.csv``): learning curves (loss and accuracy per split over epochs);
saturation per layer over epochs (a heat map, layers × epochs, one panel per pass);
distillation split accuracies of student and teacher and their agreement, when the log
has ``<split>-agreement`` columns; DINO k-NN and linear probe curves, when it has
``probe-<split>-<student|teacher>-<knn|linear>`` columns. Per group of runs (the seeds
of one setting): their learning curves overlaid. Per grid: the learning curves of every
group, seeds averaged as mean ± standard deviation. The tail pattern
(:mod:`labkit.outputs.tail_plot`) and the projection curves
(:mod:`labkit.outputs.projection_plot`) have their own modules. A figure whose data is
absent is not drawn (its function returns ``None``).

Conventions every figure keeps, so that it can go into a paper as it is:

* titled with what it shows and the runs or grid it shows it for (:func:`titled`);
* legends outside the axes, never over the data (:func:`legend_outside`);
* accuracy and saturation axes span the data (with a margin), not [0, 1]
  (:func:`data_limits`); saturation axes state the δ they were counted at
  (:func:`saturation_label`); loss axes are logarithmic when the values span more than a
  decade (:func:`loss_scale`);
* groups of runs drawn together are coloured by the value of the first grouping key and
  told apart by line style and marker by the second (:func:`group_styles`), so that a
  model × learning-rate grid reads as two colours of two line styles.

Figures are bare matplotlib ``Figure`` objects (no pyplot: no display and no global
backend switched under the caller); :func:`save` writes each as PNG and SVG.

Files that cannot be read (:mod:`labkit.store.readers`), and analysis outputs that no longer
match the digests their analysis recorded (:mod:`labkit.store.output_digests`), are never
drawn from: the grid functions report each in one line through ``on_damaged``.
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.core.errors import DamagedFile, UserError
from labkit.store.atomic import atomic_open
from labkit.store.identity import RunConfig, flatten, short_keys, short_value, varying_keys
from labkit.store.runinfo import read_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
"""What ``labkit plot`` writes by default: a PNG to look at, an SVG to edit."""
ALL_FORMATS = ("png", "svg", "pdf")
"""Every format a figure can be written in (``labkit plot --format``)."""
TEXT_AS_TEXT = {"svg.fonttype": "none", "pdf.fonttype": 42}
"""Vector formats keep their text as text (SVG) or as an embedded TrueType font (PDF):
searchable, editable in a vector editor, and, for SVG, written in three quarters of the
time of glyph outlines."""
DPI = 120
PAGE_WIDTH = 11.0  # inches: figures of a grid fill a report's page (1400 px) at DPI
SATURATION = "-saturation_"
DINO_PROBE = re.compile(r"^probe-(?P<split>.+)-(?P<network>student|teacher)-(?P<kind>knn|linear)$")
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def new_figure(**kwargs: Any) -> Figure:
    """A bare matplotlib ``Figure`` (``kwargs`` as for its constructor)."""
    # imported here to keep matplotlib out of the start-up of every labkit command
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def lay_out(figure: Figure) -> None:
    """Fix ``figure``'s layout once, at :data:`DPI`, for every format it is saved in.

    matplotlib's ``savefig`` of a figure with a layout engine draws it twice (once with
    drawing switched off, to run the engine; a constrained layout runs its own two
    passes over every text) and does so again for every format; here the engine runs
    once and is then removed, so that each format costs one drawing. The PNG is
    byte-identical to ``savefig``'s own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    engine = figure.get_layout_engine()
    if engine is None:
        return
    figure.set_dpi(DPI)
    FigureCanvasAgg(figure)  # the renderer the engine measures text with, at DPI
    engine.execute(figure)
    figure.set_layout_engine(None)


def save(figure: Figure, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``figure`` as ``<stem>.<format>`` for each of ``formats`` (atomically, text
    as text: :data:`TEXT_AS_TEXT`); their paths. The layout is computed once
    (:func:`lay_out`)."""
    from matplotlib import rc_context

    lay_out(figure)
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_open(path, "wb") as handle, rc_context(TEXT_AS_TEXT):
            figure.savefig(handle, format=fmt, dpi=DPI)
        paths.append(path)
    return paths


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG bytes."""
    lay_out(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def data_limits(values: Any, low: float = 0.0, high: float = 1.0,
                min_span: float = 0.05) -> tuple[float, float]:
    """Axis limits around ``values`` (NaNs ignored) with a 10 % margin, at least
    ``min_span`` wide, kept inside ``[low, high]`` plus the margin, so a curve spanning
    0.95–0.97 fills the axis instead of lying flat on [0, 1]."""
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return low, high
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < min_span:
        middle = (lo + hi) / 2
        lo, hi = middle - min_span / 2, middle + min_span / 2
    margin = 0.1 * (hi - lo)
    return max(low - 0.01, lo - margin), min(high + 0.01, hi + margin)


def loss_scale(axis: Any, values: Any) -> None:
    """A logarithmic y axis when the positive finite ``values`` span more than a decade
    (a loss falling from 2.3 to 0.01 is then readable at its end), linear otherwise."""
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size and finite.max() > 10 * finite.min():
        axis.set_yscale("log")


def legend_outside(axis: Any, **kwargs: Any) -> None:
    """A legend to the right of ``axis``, never over its data (constrained layout makes
    room for it)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    fontsize=8, **kwargs)


def figure_legend(figure: Figure, handles: list[Any], labels: list[str],
                  title: str | None = None) -> None:
    """One legend for every panel of ``figure``, outside them on the right (centred, so
    that it never runs into the title)."""
    figure.legend(handles, labels, loc="outside right center", fontsize=8, title=title)


def epoch_axis(axis: Any) -> None:
    """Whole epochs on the x axis, and a light grid."""
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)


def titled(figure: Figure, what: str, name: str) -> Figure:
    """Title ``figure`` with what it shows and the run or grid it shows it for."""
    figure.suptitle(f"{what}\n{name}", fontsize=10)
    return figure


def saturation_label(config: dict[str, Any] | None) -> str:
    """What a saturation axis shows, with the δ (and counting rule) of the run's
    ``saturation`` section: ``saturation at δ = 0.99 (intrinsic dim. / width)``."""
    section = (config or {}).get("saturation") or {}
    delta = section.get("delta")
    if delta is None:
        return "saturation (intrinsic dim. / width)"
    rule = section.get("idim_rule", "delve")
    return (f"saturation at δ = {delta:g}" + (f", {rule} rule" if rule != "delve" else "")
            + " (intrinsic dim. / width)")


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config in the run's ``config.json``; ``{}`` when it is absent or
    damaged (a figure then only lacks what the config would have added, such as δ)."""
    try:
        return read_config(run_dir).get("config", {})
    except DamagedFile:
        return {}


# ---------------------------------------------------------------- groups of runs

def resolve_keys(configs: list[dict[str, Any]], by: Sequence[str]) -> list[str]:
    """The dotted config keys of ``--by``: a key as given, or ``<key>.name`` for a
    component (``model`` → ``model.name``); default: every key whose value varies
    across ``configs`` except ``seed``, which the grouping averages over, and except
    keys some configs lack (a component's own parameters, implied by its name).

    Raises:
        UserError: a key no config has (names the keys that vary).
    """
    flat = [flatten(c) for c in configs]
    varying = varying_keys(configs)
    if not by:  # a key only some runs have (mlp's hidden) follows from one they all have
        keys = [k for k in varying if k != "seed"]
        return [k for k in keys if all(k in f for f in flat)] or keys
    keys = []
    for key in by:
        if any(key in f for f in flat):
            keys.append(key)
        elif any(f"{key}.name" in f for f in flat):
            keys.append(f"{key}.name")
        else:
            raise UserError(f"--by {key!r}: no run has this config key; give a dotted key of "
                            f"config.json such as model, dataset.resolution or seed (keys "
                            f"that vary here: {', '.join(varying) or 'none'})")
    return keys


def group_label(config: dict[str, Any], keys: Sequence[str]) -> str:
    """``model=cnn_s, lr=0.05``: the run's values of ``keys``, each key by its shortest
    unique suffix (keys a run lacks left out); ``all runs`` without keys."""
    flat = flatten(config)
    short = short_keys(list(keys))
    return ", ".join(f"{short[k]}={short_value(flat[k])}" for k in keys if k in flat) \
        or "all runs"


def group_runs(runs: Sequence[RunConfig], keys: Sequence[str]) -> dict[str, list[RunConfig]]:
    """Group label → its runs, in the runs' order."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(group_label(run.config, keys), []).append(run)
    return groups


def grouping_name(keys: Sequence[str]) -> str:
    """``grouped by model, lr (seeds averaged)``, for titles."""
    by = ", ".join(short_keys(list(keys)).values()) or "nothing (all runs together)"
    return f"grouped by {by}" + ("" if "seed" in keys else " (seeds averaged)")


@dataclass(frozen=True)
class Style:
    """How one group's lines look: colour, line style and marker."""

    color: str
    linestyle: str = "-"
    marker: str = "o"

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Axes.plot``."""
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


def group_styles(groups: dict[str, list[RunConfig]], keys: Sequence[str]) -> dict[str, Style]:
    """Group label → style: the colour by the group's value of ``keys[0]``, line style
    and marker by its value of ``keys[1]`` (the marker by ``keys[2]`` when there is one),
    so lines of one model share a colour and lines of one learning rate a style. With
    one group or no key, each group its own colour."""
    values = {label: [config_value(runs[0].config, k) for k in keys]
              for label, runs in groups.items()}

    def index(position: int, label: str) -> int:
        seen = list(dict.fromkeys(v[position] for v in values.values()))
        return seen.index(values[label][position])

    styles = {}
    for i, label in enumerate(groups):
        color = f"C{(index(0, label) if keys else i) % 10}"
        line = LINE_STYLES[index(1, label) % len(LINE_STYLES)] if len(keys) > 1 else "-"
        marker = MARKERS[index(2 if len(keys) > 2 else 1, label) % len(MARKERS)] \
            if len(keys) > 1 else "o"
        styles[label] = Style(color, line, marker)
    return styles


def config_value(config: dict[str, Any], key: str) -> str:
    """The config's value of a dotted ``key`` as text (``-`` when absent)."""
    return str(flatten(config).get(key, "-"))


def grid_stem(keys: Sequence[str], kind: str = "tail_pattern") -> str:
    """File stem of a grid figure: ``<kind>_by_<key>[_and_<key>…]`` (keys by their
    shortest unique suffix: ``tail_pattern_by_model_and_lr``), one file name whatever
    the keys hold (a path separator becomes ``-``)."""
    stem = f"{kind}_by_" + ("_and_".join(short_keys(list(keys)).values()) or "nothing")
    return stem.replace("/", "-").replace("\\", "-")


Report = Callable[[str], None]


def warn(message: str) -> None:
    """The default ``on_damaged``: a warning."""
    warnings.warn(message, stacklevel=3)


# ---------------------------------------------------------------- per run, from log.csv

def splits(log: pd.DataFrame) -> list[str]:
    """Passes with a loss in the log: ``train`` and every eval split with an accuracy
    (a method's own ``…-loss`` columns, such as DINO's, are not splits)."""
    names = [c[:-len("-loss")] for c in log.columns if c.endswith("-loss")]
    return [s for s in names if s == "train" or f"{s}-accuracy" in log.columns]


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def learning_curves(logs: pd.DataFrame | dict[str, pd.DataFrame], name: str) -> Figure | None:
    """Loss (left) and accuracy (right) of every split over epochs.

    Args:
        logs: one run's log, or run label → log for several runs overlaid (the seeds of
            a group): then each run has its colour and each split its line style
            (solid for the first eval split, dashed for training).
        name: the run or runs, for the title.
    """
    logs = {"": logs} if isinstance(logs, pd.DataFrame) else logs
    passes = list(dict.fromkeys(s for log in logs.values() for s in splits(log)))
    if not passes:
        return None
    accuracies = [s for s in passes if any(f"{s}-accuracy" in log for log in logs.values())]
    figure = new_figure(figsize=(PAGE_WIDTH if len(logs) > 1 else 10, 4), layout="constrained")
    loss_axis, acc_axis = figure.subplots(1, 2)
    evals = [s for s in passes if s != "train"]
    line = {s: "--" if s == "train" else ("-", "-.", ":")[evals.index(s) % 3] for s in passes}
    split_colors = _colors(passes)
    for i, (label, log) in enumerate(logs.items()):
        for split in splits(log):
            style = ({"color": split_colors[split], "linestyle": "-"} if len(logs) == 1
                     else {"color": f"C{i % 10}", "linestyle": line[split]})
            text = split if len(logs) == 1 else f"{label}, {split}"
            loss_axis.plot(log["epoch"], log[f"{split}-loss"], marker="o", ms=3, label=text,
                           **style)
            if f"{split}-accuracy" in log:
                acc_axis.plot(log["epoch"], log[f"{split}-accuracy"], marker="o", ms=3,
                              label=text, **style)
    losses = [log[f"{s}-loss"] for log in logs.values() for s in splits(log)]
    loss_axis.set(xlabel="epoch", ylabel="loss (mean per sample)", title="loss")
    loss_scale(loss_axis, pd.concat(losses))
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy",
                 ylim=data_limits(pd.concat([log[f"{s}-accuracy"] for log in logs.values()
                                             for s in accuracies
                                             if f"{s}-accuracy" in log])))
    for axis in (loss_axis, acc_axis):
        epoch_axis(axis)
    legend_outside(acc_axis if accuracies else loss_axis,
                   title="split" if len(logs) == 1 else "run, split")
    return titled(figure, "Learning curves: loss and accuracy per split", name)


def saturation_columns(log: pd.DataFrame) -> dict[str, list[str]]:
    """Pass → its ``<pass>-saturation_<layer>`` columns, in the log's (network) order."""
    passes: dict[str, list[str]] = {}
    for column in log.columns:
        if SATURATION in column:
            passes.setdefault(column.split(SATURATION)[0], []).append(column)
    return passes


def saturation_epochs(log: pd.DataFrame, name: str,
                      config: dict[str, Any] | None = None) -> Figure | None:
    """Heat map of saturation (intrinsic dimensionality / width), layers × epochs, one
    panel per pass; values written in the cells while they stay legible; the colour
    bar states the δ of the run's ``config`` (:func:`saturation_label`)."""
    passes = saturation_columns(log)
    if not passes:
        return None
    layers = max(len(columns) for columns in passes.values())
    epochs = len(log)
    width = min(20.0, max(7.0, 2.0 + len(passes) * (1.5 + 0.35 * epochs)))
    figure = new_figure(figsize=(width, min(16.0, 2.0 + 0.3 * layers)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(passes), sharey=False))
    image = None
    for axis, (pass_, columns) in zip(axes, passes.items()):
        values = log[columns].to_numpy(dtype=float).T  # layers × epochs
        image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                            interpolation="nearest")
        axis.set_yticks(range(len(columns)), [c.split(SATURATION)[1] for c in columns],
                        fontsize=7)
        ticks = range(0, epochs, max(1, epochs // 12))
        axis.set_xticks(list(ticks), [str(log["epoch"].iloc[i]) for i in ticks])
        axis.set(xlabel="epoch", title=f"{pass_} pass")
        if values.size <= 240:
            for (row, col), value in np.ndenumerate(values):
                if np.isfinite(value):
                    axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                              color="white" if value < 0.6 else "black",
                              in_layout=False)  # inside its cell: the layout skips it
    axes[0].set_ylabel("layer (network order)")
    figure.colorbar(image, ax=list(axes), label=saturation_label(config).replace(" (", "\n("))
    return titled(figure, "Saturation per layer over epochs", name)


def distillation(log: pd.DataFrame, name: str) -> Figure | None:
    """Student (solid) and teacher (dashed) accuracy per split, and the share of images
    on which they agree, over epochs; ``None`` without ``<split>-agreement`` columns."""
    agreeing = [c[:-len("-agreement")] for c in log.columns if c.endswith("-agreement")]
    if not agreeing:
        return None
    figure = new_figure(figsize=(11, 4), layout="constrained")
    acc_axis, agree_axis = figure.subplots(1, 2)
    color = _colors(agreeing)
    shown = []
    for split in agreeing:
        for column, style, who in ((f"{split}-accuracy", "o-", "student"),
                                   (f"{split}-teacher_accuracy", "s--", "teacher")):
            if column in log.columns:
                acc_axis.plot(log["epoch"], log[column], style, ms=3, color=color[split],
                              label=f"{split} {who}")
                shown.append(column)
        agree_axis.plot(log["epoch"], log[f"{split}-agreement"], "o-", ms=3,
                        color=color[split], label=split)
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="split accuracy",
                 ylim=data_limits(log[shown]) if shown else None)
    agree_axis.set(xlabel="epoch", ylabel="agreement (same predicted class)",
                   title="student–teacher agreement",
                   ylim=data_limits(log[[f"{s}-agreement" for s in agreeing]]))
    for axis in (acc_axis, agree_axis):
        epoch_axis(axis)
        legend_outside(axis)
    return titled(figure, "Distillation: split accuracy and teacher agreement", name)


def dino_probes(log: pd.DataFrame, name: str) -> Figure | None:
    """k-NN and linear probe accuracy of student (solid) and teacher (dashed) per eval
    split over the probing epochs; ``None`` without DINO probe columns."""
    found = [(c, DINO_PROBE.match(c)) for c in log.columns]
    found = [(c, m) for c, m in found if m]
    if not found:
        return None
    kinds = sorted({m["kind"] for _, m in found})
    figure = new_figure(figsize=(5 * len(kinds) + 1.5, 4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(kinds), sharey=True))
    color = _colors(sorted({m["split"] for _, m in found}))
    for axis, kind in zip(axes, kinds):
        for column, match in found:
            if match["kind"] != kind:
                continue
            rows = log[["epoch", column]].dropna()
            axis.plot(rows["epoch"], rows[column],
                      "o-" if match["network"] == "student" else "s--", ms=4,
                      color=color[match["split"]], label=f"{match['split']} {match['network']}")
        axis.set(xlabel="epoch", title=f"{'k-NN' if kind == 'knn' else 'linear'} probe")
        epoch_axis(axis)
    axes[0].set(ylabel="probe accuracy", ylim=data_limits(log[[c for c, _ in found]]))
    legend_outside(axes[-1])
    return titled(figure, "DINO probes: k-NN and linear accuracy of student and teacher",
                  name)


# ---------------------------------------------------------------- grids

def mean_sd(series: Sequence[pd.Series]) -> pd.DataFrame:
    """Mean, sample standard deviation (0 for one value) and count across ``series``
    (aligned on their index, NaNs ignored): columns ``mean``, ``sd``, ``n``."""
    table = pd.concat(list(series), axis=1)
    return pd.DataFrame({"mean": table.mean(axis=1), "sd": table.std(axis=1, ddof=1).fillna(0.0),
                         "n": table.count(axis=1)})


def band(axis: Any, x: Any, stats: pd.DataFrame, style: Style, label: str) -> None:
    """A group's mean line in its ``style``, its ± one standard deviation shaded."""
    axis.plot(x, stats["mean"], ms=4, label=label, **style.kwargs())
    if (stats["n"] > 1).any():
        axis.fill_between(x, stats["mean"] - stats["sd"], stats["mean"] + stats["sd"],
                          color=style.color, alpha=0.15, linewidth=0)


def grid_learning_curves(groups: dict[str, list[pd.DataFrame]], styles: dict[str, Style],
                         name: str) -> Figure | None:
    """Loss (left) and accuracy (right) of each eval split over epochs (a row per eval
    split), one line per group: the mean over its runs' logs, ± one standard deviation
    shaded, in the group's style (:func:`group_styles`)."""
    groups = {label: logs for label, logs in groups.items() if logs}
    evals = list(dict.fromkeys(s for logs in groups.values() for log in logs
                               for s in splits(log) if s != "train"))
    if not evals:
        return None
    figure = new_figure(figsize=(PAGE_WIDTH, 3.6 * len(evals) + 0.8), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(evals), 2, squeeze=False))
    for row, split in zip(axes, evals):
        shown: dict[str, list[pd.Series]] = {"loss": [], "accuracy": []}
        for label, logs in groups.items():
            count = f" (mean ± sd of {len(logs)})" if len(logs) > 1 else ""
            for axis, metric in zip(row, ("loss", "accuracy")):
                series = [log.set_index("epoch")[f"{split}-{metric}"] for log in logs
                          if f"{split}-{metric}" in log]
                if not series:
                    continue
                stats = mean_sd(series)
                band(axis, stats.index, stats, styles[label], f"{label}{count}")
                shown[metric] += [stats["mean"] - stats["sd"], stats["mean"] + stats["sd"]]
        row[0].set(xlabel="epoch", ylabel=f"{split} loss (mean per sample)",
                   title=f"{split} loss")
        loss_scale(row[0], pd.concat(shown["loss"]) if shown["loss"] else [])
        row[1].set(xlabel="epoch", ylabel=f"{split} accuracy", title=f"{split} accuracy")
        if shown["accuracy"]:
            row[1].set_ylim(data_limits(pd.concat(shown["accuracy"])))
        for axis in row:
            epoch_axis(axis)
    legend_outside(axes[0][1], title="group")
    return titled(figure, "Learning curves of every group: eval loss and accuracy", name)

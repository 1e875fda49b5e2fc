"""Figures of runs and grids, drawn from the files in the run directories.

Per run (from ``log.csv``): learning curves (loss and accuracy per split over epochs);
saturation per layer over epochs (a heat map, layers × epochs, one panel per pass);
distillation split accuracies of student and teacher and their agreement, when the log
has ``<split>-agreement`` columns; DINO k-NN and linear probe curves, when it has
``probe-<split>-<student|teacher>-<knn|linear>`` columns. Per grid: the tail pattern
(final saturation, probe accuracy and the border layer per layer) of the runs grouped by
config values, seeds (or whatever else differs inside a group) averaged as mean ± standard
deviation. A figure whose data is absent is not drawn (its function returns ``None``).

Every figure is titled with what it shows and the run or grid it shows it for; legends sit
outside the axes; accuracy and saturation axes span the data (with a margin), not [0, 1].
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.core.errors import DamagedFile, UserError
from labkit.measures.depth import relative_depth
from labkit.store.atomic import atomic_open
from labkit.store.identity import RunConfig, flatten, varying_keys
from labkit.store.output_digests import damaged_outputs
from labkit.store.readers import FINITE, FLAG, TEXT, read_csv_file
from labkit.store.runinfo import PROBES_CSV, RF_CSV, read_log

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
DPI = 120
SATURATION = "-saturation_"
DINO_PROBE = re.compile(r"^probe-(?P<split>.+)-(?P<network>student|teacher)-(?P<kind>knn|linear)$")


def new_figure(**kwargs: Any) -> Figure:
    """A bare matplotlib ``Figure`` (``kwargs`` as for its constructor)."""
    # imported here to keep matplotlib out of the start-up of every labkit command
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save(figure: Figure, stem: Path) -> list[Path]:
    """Write ``figure`` as ``<stem>.png`` and ``<stem>.svg`` (atomically); their paths.
    The layout is computed once, for the first format (a constrained layout costs about
    as much as drawing), and kept for the others."""
    paths = []
    for fmt in FORMATS:
        path = Path(f"{stem}.{fmt}")
        with atomic_open(path, "wb") as handle:
            figure.savefig(handle, format=fmt, dpi=DPI)
        figure.set_layout_engine("none")
        paths.append(path)
    return paths


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


def legend_outside(axis: Any, **kwargs: Any) -> None:
    """A legend to the right of ``axis``, never over its data (constrained layout makes
    room for it)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    fontsize=8, **kwargs)


def epoch_axis(axis: Any) -> None:
    """Whole epochs on the x axis, and a light grid."""
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)


def titled(figure: Figure, what: str, name: str) -> Figure:
    """Title ``figure`` with what it shows and the run or grid it shows it for."""
    figure.suptitle(f"{what}\n{name}", fontsize=10)
    return figure


# ---------------------------------------------------------------- per run, from log.csv

def splits(log: pd.DataFrame) -> list[str]:
    """Passes with a loss in the log: ``train`` and every eval split with an accuracy
    (a method's own ``…-loss`` columns, such as DINO's, are not splits)."""
    names = [c[:-len("-loss")] for c in log.columns if c.endswith("-loss")]
    return [s for s in names if s == "train" or f"{s}-accuracy" in log.columns]


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def learning_curves(log: pd.DataFrame, name: str) -> Figure | None:
    """Loss (left) and accuracy (right) of every split over epochs."""
    passes = splits(log)
    if not passes:
        return None
    accuracies = [s for s in passes if f"{s}-accuracy" in log.columns]
    figure = new_figure(figsize=(10, 4), layout="constrained")
    loss_axis, acc_axis = figure.subplots(1, 2)
    color = _colors(passes)
    for split in passes:
        loss_axis.plot(log["epoch"], log[f"{split}-loss"], "o-", ms=3, color=color[split],
                       label=split)
    loss_axis.set(xlabel="epoch", ylabel="loss (mean per sample)", title="loss")
    for split in accuracies:
        acc_axis.plot(log["epoch"], log[f"{split}-accuracy"], "o-", ms=3,
                      color=color[split], label=split)
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy",
                 ylim=data_limits(log[[f"{s}-accuracy" for s in accuracies]]))
    for axis in (loss_axis, acc_axis):
        epoch_axis(axis)
    legend_outside(acc_axis if accuracies else loss_axis, title="split")
    return titled(figure, "Learning curves: loss and accuracy per split", name)


def saturation_columns(log: pd.DataFrame) -> dict[str, list[str]]:
    """Pass → its ``<pass>-saturation_<layer>`` columns, in the log's (network) order."""
    passes: dict[str, list[str]] = {}
    for column in log.columns:
        if SATURATION in column:
            passes.setdefault(column.split(SATURATION)[0], []).append(column)
    return passes


def saturation_epochs(log: pd.DataFrame, name: str) -> Figure | None:
    """Heat map of saturation (intrinsic dimensionality / width), layers × epochs, one
    panel per pass; values written in the cells while they stay legible."""
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
                              color="white" if value < 0.6 else "black")
    axes[0].set_ylabel("layer (network order)")
    figure.colorbar(image, ax=list(axes), label="saturation (intrinsic dim. / width)")
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


PER_RUN = {"learning_curves": learning_curves, "saturation_epochs": saturation_epochs,
           "distillation": distillation, "dino_probes": dino_probes}


def run_figure_set(run_dir: Path, name: str) -> dict[str, Figure]:
    """File stem → figure, for every per-run figure whose data the run's log holds."""
    log = read_log(run_dir)
    if log is None:
        return {}
    drawn = {stem: draw(log, name) for stem, draw in PER_RUN.items()}
    return {stem: figure for stem, figure in drawn.items() if figure is not None}


def run_figures(run_dir: Path, out_dir: Path, name: str) -> list[Path]:
    """Draw every per-run figure whose data the run holds into ``out_dir``; the paths
    written (PNG and SVG of each)."""
    written = []
    for stem, figure in run_figure_set(run_dir, name).items():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        written += save(figure, Path(out_dir) / stem)
    return written


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# ---------------------------------------------------------------- grids

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


def key_label(key: str) -> str:
    """``model.name`` → ``model``; other keys as they are."""
    return key[:-len(".name")] if key.endswith(".name") else key


def group_label(config: dict[str, Any], keys: Sequence[str]) -> str:
    """``model=cnn_s, dataset.resolution=16`` (keys a run lacks left out)."""
    flat = flatten(config)
    return ", ".join(f"{key_label(k)}={flat[k]}" for k in keys if k in flat) or "all runs"


def group_runs(runs: Sequence[RunConfig], keys: Sequence[str]) -> dict[str, list[RunConfig]]:
    """Group label → its runs, in the runs' order."""
    groups: dict[str, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(group_label(run.config, keys), []).append(run)
    return groups


Report = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def grid_tail_pattern(runs: Sequence[RunConfig], keys: Sequence[str], name: str,
                      on_damaged: Report = _warn) -> Figure | None:
    """The tail pattern of ``runs`` grouped by the values of ``keys`` (see
    :func:`tail_pattern`); ``None`` when no run has saturation or probe results. Each
    file left out as damaged is reported to ``on_damaged``."""
    groups = {}
    for label, members in group_runs(runs, keys).items():
        groups[label] = [tail_data(r.directory) for r in members if r.directory.is_dir()]
        for data in groups[label]:
            for problem in data.problems:
                on_damaged(f"left out of the tail pattern: {problem}")
    by = ", ".join(map(key_label, keys)) or "nothing (all runs together)"
    return tail_pattern(groups, f"{name}, grouped by {by}")


def grid_stem(keys: Sequence[str]) -> str:
    """File stem of the grid's tail pattern: ``tail_pattern_by_<key>[_and_<key>…]``, one
    file name whatever the keys hold (a path separator becomes ``-``)."""
    stem = "tail_pattern_by_" + ("_and_".join(map(key_label, keys)) or "nothing")
    return stem.replace("/", "-").replace("\\", "-")


def grid_figures(runs: Sequence[RunConfig], keys: Sequence[str], out_dir: Path,
                 name: str, on_damaged: Report = _warn) -> list[Path]:
    """Every figure of a grid into ``out_dir``: the per-run figures of each run with a
    log in ``<out_dir>/<run name>-<hash>/``, and the grouped tail pattern; the paths
    written. A run whose log is damaged, and each file left out of the tail pattern,
    is reported to ``on_damaged``."""
    written = []
    for run in runs:
        try:
            written += run_figures(run.directory, Path(out_dir) / run.directory.name,
                                   f"run {run.directory.name}")
        except DamagedFile as exc:
            on_damaged(f"no figures of run {run.directory.name}: {exc}")
    figure = grid_tail_pattern(runs, keys, name, on_damaged)
    if figure is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        written += save(figure, Path(out_dir) / grid_stem(keys))
    return written


# ---------------------------------------------------------------- tail pattern

@dataclass
class TailData:
    """What a tail pattern shows of one run, layers in network order; ``problems``: a
    line for each file left out as damaged."""

    layers: list[str]
    saturation: dict[str, float] = field(default_factory=dict)
    saturation_pass: str = "eval"
    # downsampling (and mode, C where a run has several) -> layer -> probe eval accuracy
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    border: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.saturation and not self.probes


def final_saturation(log: pd.DataFrame | None, pass_: str = "eval") -> dict[str, float]:
    """Layer → saturation on ``pass_`` in the last row of the log; ``{}`` if none."""
    if log is None:
        return {}
    prefix = f"{pass_}{SATURATION}"
    last = log.iloc[-1]
    return {c[len(prefix):]: float(last[c]) for c in log.columns if c.startswith(prefix)}


def _table(run_dir: Path, name: str, read: Callable[[Path], pd.DataFrame],
           flagged: dict[str, str], problems: list[str]) -> pd.DataFrame | None:
    """The table ``name`` of ``run_dir`` read by ``read``; ``None`` when absent, or
    damaged or ``flagged`` (its line then added to ``problems``)."""
    path = Path(run_dir) / name
    if name in flagged:
        problems.append(flagged[name])
        return None
    if not path.exists():
        return None
    try:
        return read(path)
    except DamagedFile as exc:
        problems.append(str(exc))
        return None


def tail_data(run_dir: Path, prefix: str | None = None) -> TailData:
    """The run's final saturation (eval pass, else train), probe accuracies
    (``[<prefix>_]probe_performances.csv``) and border layer (``receptive_field.csv``).
    A file that is damaged, or that no longer matches its analysis's digest, is left
    out and named in ``problems``."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    flagged = damaged_outputs(run_dir)
    try:
        log = read_log(run_dir)
    except DamagedFile as exc:
        log = None
        problems.append(str(exc))
    pass_, saturation = "eval", final_saturation(log, "eval")
    if not saturation:
        pass_, saturation = "train", final_saturation(log, "train")
    probes: dict[str, dict[str, float]] = {}
    table = _table(run_dir, f"{prefix}_{PROBES_CSV}" if prefix else PROBES_CSV,
                   lambda path: read_csv_file(path, {"layer": TEXT, "downsampling": TEXT,
                                                     "eval_accuracy": FINITE},
                                              text_columns=("probe_mode",)),
                   flagged, problems)
    if table is not None:
        # a curve per downsampling, and per mode and C where the table holds several
        keys = ["downsampling"] + [c for c in ("probe_mode", "probe_C")
                                   if c in table and table[c].nunique() > 1]
        for values, rows in table.groupby(keys, sort=False):
            values = values if isinstance(values, tuple) else (values,)
            label = " ".join(f"C={value:g}" if key == "probe_C" else str(value)
                             for key, value in zip(keys, values))
            probes[label] = dict(zip(rows["layer"], rows["eval_accuracy"].astype(float)))
    order: list[str] = []
    border = None
    fields = _table(run_dir, RF_CSV,
                    lambda path: read_csv_file(path, {"layer": TEXT, "border": FLAG}),
                    flagged, problems)
    if fields is not None:
        order = list(fields["layer"])
        if fields["border"].any():
            border = str(fields.loc[fields["border"], "layer"].iloc[0])
    for layer in [*saturation, *(n for rows in probes.values() for n in rows)]:
        if layer not in order:
            order.append(layer)
    layers = [n for n in order if n in saturation or any(n in r for r in probes.values())]
    return TailData(layers, saturation, pass_, probes,
                    border if border in layers else None, problems)


def _aligned(runs: list[TailData], values: list[dict[str, float]],
             positions: dict[int, np.ndarray], x: np.ndarray) -> np.ndarray:
    """runs × len(x) matrix of each run's per-layer ``values`` at positions ``x``
    (interpolated along relative depth when the runs' layers differ)."""
    rows = []
    for run, per_layer in zip(runs, values):
        shown = [i for i, n in enumerate(run.layers) if n in per_layer]
        if not shown:
            rows.append(np.full(len(x), np.nan))
            continue
        xs = positions[id(run)][shown]
        ys = np.array([per_layer[run.layers[i]] for i in shown])
        same = len(xs) == len(x) and np.allclose(xs, x)
        rows.append(ys if same else np.interp(x, xs, ys, left=np.nan, right=np.nan))
    return np.vstack(rows)


def tail_pattern(groups: dict[str, list[TailData]], name: str) -> Figure | None:
    """The tail pattern of each group on shared axes: final saturation (top) and probe
    eval accuracy (bottom) per layer, mean over the group's runs with ± one standard
    deviation shaded, and each group's border layer dashed.

    The x axis is the layer when every run has the same layers, else the relative depth
    (:func:`labkit.measures.depth.relative_depth`), so networks of different depth share it.
    """
    groups = {label: [r for r in runs if not r.empty] for label, runs in groups.items()}
    groups = {label: runs for label, runs in groups.items() if runs}
    if not groups:
        return None
    everyone = [r for runs in groups.values() for r in runs]
    same_layers = all(r.layers == everyone[0].layers for r in everyone)
    positions = {id(r): (np.arange(len(r.layers), dtype=float) if same_layers else
                         relative_depth(np.arange(len(r.layers)), len(r.layers)))
                 for r in everyone}
    has_saturation = any(r.saturation for r in everyone)
    has_probes = any(r.probes for r in everyone)
    panels = [p for p, present in (("saturation", has_saturation), ("probes", has_probes))
              if present]
    width = max(7.0, 0.35 * len(everyone[0].layers) + 4) if same_layers else 8.5
    figure = new_figure(figsize=(width, 3.2 * len(panels) + 1.2), layout="constrained")
    axes = dict(zip(panels, np.atleast_1d(figure.subplots(len(panels), 1, sharex=True))))
    modes = sorted({m for r in everyone for m in r.probes})
    styles = dict(zip(modes, ["s-", "^--", "v:", "D-."] * 4))
    plotted: dict[str, list[np.ndarray]] = {p: [] for p in panels}
    for i, (label, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        x = positions[id(max(runs, key=lambda r: len(r.layers)))]
        count = f" (mean ± sd of {len(runs)})" if len(runs) > 1 else ""
        series = []
        if has_saturation:
            series.append(("saturation", [r.saturation for r in runs], "o-", f"{label}{count}"))
        for mode in modes:
            mode_label = f"{label}, downsampling {mode}" if len(modes) > 1 else label
            series.append(("probes", [r.probes.get(mode, {}) for r in runs], styles[mode],
                           f"{mode_label}{count}"))
        for panel, values, style, series_label in series:
            matrix = _aligned(runs, values, positions, x)
            if np.isnan(matrix).all():
                continue
            mean = np.nanmean(matrix, axis=0)
            axis = axes[panel]
            axis.plot(x, mean, style, ms=4, color=color, label=series_label)
            if len(runs) > 1:
                spread = np.nanstd(matrix, axis=0, ddof=1)
                axis.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.2,
                                  linewidth=0)
                plotted[panel] += [mean - spread, mean + spread]
            plotted[panel].append(mean)
        borders = [positions[id(r)][r.layers.index(r.border)] for r in runs if r.border]
        for axis in axes.values():
            if borders:
                axis.axvline(float(np.mean(borders)), color=color, linestyle="--",
                             linewidth=1.2)
    if any(r.border for r in everyone):
        first = next(iter(axes.values()))
        first.plot([], [], "k--", linewidth=1.2, label="border layer (dashed, group colour)")
    pass_ = everyone[0].saturation_pass
    if has_saturation:
        axes["saturation"].set(ylabel=f"saturation, {pass_} pass\n(final epoch)",
                               ylim=data_limits(np.concatenate(plotted["saturation"])))
    if has_probes:
        axes["probes"].set(ylabel="probe eval accuracy",
                           ylim=data_limits(np.concatenate(plotted["probes"])))
    bottom = axes[panels[-1]]
    if same_layers:
        bottom.set_xticks(range(len(everyone[0].layers)), everyone[0].layers, rotation=90,
                          fontsize=7)
        bottom.set_xlabel("layer (network order)")
        bottom.set_xlim(-0.5, len(everyone[0].layers) - 0.5)
    else:
        bottom.set_xlabel("relative depth (layer index / last layer index)")
    for axis in axes.values():
        axis.grid(alpha=0.3)
        legend_outside(axis)
    return titled(figure, "Tail pattern: saturation, probe accuracy and border layer per "
                          "layer", name)

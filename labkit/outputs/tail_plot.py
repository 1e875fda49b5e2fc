"""The tail pattern: per layer, final saturation, intrinsic dimension, probe accuracy and
the border layer, of one run or of groups of runs.

:func:`tail_data` reads what one run measured (``log.csv``, the probe CSV,
``receptive_field.csv`` and, when the intrinsic-dimension analysis wrote it,
``intrinsic_dimension.csv``); :func:`tail_pattern` draws groups of runs on shared axes,
each group the mean of its runs with ± one standard deviation shaded;
:func:`draw_tail_pattern` writes one run's figure into its directory (the probes
analysis calls it).

Panels, top to bottom, each only when some run has its data: saturation at the runs' δ
(eval pass, else train), intrinsic dimension (TwoNN filled markers, MLE hollow), probe
eval accuracy (one marker fill per downsampling) and a strip with one row per group
marking its border layer (the first layer whose receptive field covers the whole input),
so that groups with the same border never hide each other's marker. Grey dotted lines
carry each border position through the panels above.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.core.errors import DamagedFile
from labkit.measures.depth import relative_depth
from labkit.outputs import figures
from labkit.outputs.figures import Style
from labkit.store import runinfo
from labkit.store.output_digests import damaged_outputs
from labkit.store.readers import FINITE, FLAG, NUMBER, TEXT, read_csv_file
from labkit.store.runinfo import PROBES_CSV, RF_CSV

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE = "tail_pattern.png"
INTRINSIC_CSV = "intrinsic_dimension.csv"
"""Written by the intrinsic-dimension analysis: columns ``layer``, ``split``, ``twonn``,
``mle`` (one row per layer and split)."""
ESTIMATORS = {"twonn": "TwoNN", "mle": "MLE"}


@dataclass
class TailData:
    """What a tail pattern shows of one run, layers in network order; ``problems``: a
    line for each file left out as damaged."""

    layers: list[str]
    saturation: dict[str, float] = field(default_factory=dict)
    saturation_pass: str = "eval"
    saturation_label: str = "saturation (intrinsic dim. / width)"
    # downsampling (and mode, C where a run has several) -> layer -> probe eval accuracy
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    # estimator (twonn, mle) -> layer -> intrinsic dimension
    intrinsic: dict[str, dict[str, float]] = field(default_factory=dict)
    border: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.saturation and not self.probes and not self.intrinsic


def final_saturation(run_dir: Path, pass_: str = "eval") -> dict[str, float]:
    """Layer → saturation (fraction) on ``pass_`` in the last row of the run's log.csv;
    ``{}`` if none.

    Raises:
        DamagedFile: log.csv cannot be read.
    """
    return log_saturation(runinfo.read_log(run_dir), pass_)


def log_saturation(log: pd.DataFrame | None, pass_: str = "eval") -> dict[str, float]:
    """Layer → saturation on ``pass_`` in the last row of ``log``; ``{}`` if none."""
    if log is None:
        return {}
    prefix = f"{pass_}{figures.SATURATION}"
    last = log.iloc[-1]
    return {c[len(prefix):]: float(last[c]) for c in log.columns if c.startswith(prefix)}


def measured_table(run_dir: Path, name: str, columns: dict[str, str], problems: list[str],
              flagged: dict[str, str] | None = None,
              text_columns: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The CSV ``name`` of ``run_dir`` with ``columns`` (see
    :func:`labkit.store.readers.read_csv_file`); ``None`` when absent, or when damaged or
    no longer matching its analysis's digest (its line then added to ``problems``)."""
    flagged = damaged_outputs(run_dir) if flagged is None else flagged
    if name in flagged:
        problems.append(flagged[name])
        return None
    path = Path(run_dir) / name
    if not path.exists():
        return None
    try:
        return read_csv_file(path, columns, text_columns=text_columns)
    except DamagedFile as exc:
        problems.append(str(exc))
        return None


def _probe_curves(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A curve per downsampling, and per mode and C where the table holds several."""
    keys = ["downsampling"] + [c for c in ("probe_mode", "probe_C")
                               if c in table and table[c].nunique() > 1]
    probes = {}
    for values, rows in table.groupby(keys, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        label = " ".join(f"C={value:g}" if key == "probe_C" else str(value)
                         for key, value in zip(keys, values))
        probes[label] = dict(zip(rows["layer"], rows["eval_accuracy"].astype(float)))
    return probes


def _intrinsic(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Estimator → layer → intrinsic dimension, on the eval split when measured there."""
    split = "eval" if (table["split"] == "eval").any() else table["split"].iloc[0]
    rows = table[table["split"] == split]
    return {name: {layer: float(v) for layer, v in zip(rows["layer"], rows[name])
                   if np.isfinite(v)} for name in ESTIMATORS}


def tail_data(run_dir: Path, prefix: str | None = None,
              config: dict[str, Any] | None = None) -> TailData:
    """The run's final saturation (eval pass, else train) at the δ of its config
    (``config.json`` when ``config`` is not given), probe accuracies
    (``[<prefix>_]probe_performances.csv``), intrinsic dimensions
    (``intrinsic_dimension.csv``) and border layer (``receptive_field.csv``). A file
    that is damaged, or that no longer matches its analysis's digest, is left out and
    named in ``problems``."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    flagged = damaged_outputs(run_dir)
    try:
        log = runinfo.read_log(run_dir)
    except DamagedFile as exc:
        log = None
        problems.append(str(exc))
    pass_, saturation = "eval", log_saturation(log, "eval")
    if not saturation:
        pass_, saturation = "train", log_saturation(log, "train")
    probes_table = measured_table(run_dir, f"{prefix}_{PROBES_CSV}" if prefix else PROBES_CSV,
                             {"layer": TEXT, "downsampling": TEXT, "eval_accuracy": FINITE},
                             problems, flagged, text_columns=("probe_mode",))
    probes = {} if probes_table is None else _probe_curves(probes_table)
    intrinsic_table = measured_table(run_dir, INTRINSIC_CSV, {"layer": TEXT, "split": TEXT,
                                                         "twonn": NUMBER, "mle": NUMBER},
                                problems, flagged)
    intrinsic = {} if intrinsic_table is None or intrinsic_table.empty \
        else _intrinsic(intrinsic_table)
    order: list[str] = []
    border = None
    fields = measured_table(run_dir, RF_CSV, {"layer": TEXT, "border": FLAG}, problems, flagged)
    if fields is not None:
        order = list(fields["layer"])
        if fields["border"].any():
            border = str(fields.loc[fields["border"], "layer"].iloc[0])
    measured = [saturation, *probes.values(), *intrinsic.values()]
    for layer in (n for values in measured for n in values):
        if layer not in order:
            order.append(layer)
    layers = [n for n in order if any(n in values for values in measured)]
    label = figures.saturation_label(figures.run_config(run_dir) if config is None else config)
    return TailData(layers, saturation, pass_, label, probes, intrinsic,
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


@dataclass
class _Panel:
    """One panel of the tail pattern: its axis, the variants drawn in it (probe
    downsamplings, intrinsic-dimension estimators) and the values plotted (for limits)."""

    axis: Any
    variants: list[str]
    plotted: list[np.ndarray] = field(default_factory=list)


def _panels(everyone: list[TailData]) -> dict[str, list[str]]:
    """Panel → its variants, for the panels some run has data for."""
    panels = {"saturation": ["saturation"] if any(r.saturation for r in everyone) else [],
              "intrinsic": [e for e in ESTIMATORS if any(r.intrinsic.get(e) for r in everyone)],
              "probes": sorted({m for r in everyone for m in r.probes})}
    return {name: variants for name, variants in panels.items() if variants}


def _values(run: TailData, panel: str, variant: str) -> dict[str, float]:
    if panel == "saturation":
        return run.saturation
    return (run.intrinsic if panel == "intrinsic" else run.probes).get(variant, {})


def tail_pattern(groups: dict[str, list[TailData]], name: str,
                 styles: dict[str, Style] | None = None) -> Figure | None:
    """The tail pattern of each group on shared axes (see the module docstring): per
    panel, the mean over the group's runs with ± one standard deviation shaded, in the
    group's style (``styles``, default: a colour per group).

    The x axis is the layer when every run has the same layers, else the relative depth
    (:func:`labkit.measures.depth.relative_depth`), so networks of different depth share it.
    """
    groups = {label: [r for r in runs if not r.empty] for label, runs in groups.items()}
    groups = {label: runs for label, runs in groups.items() if runs}
    if not groups:
        return None
    styles = styles or {label: Style(f"C{i % 10}") for i, label in enumerate(groups)}
    everyone = [r for runs in groups.values() for r in runs]
    same_layers = all(r.layers == everyone[0].layers for r in everyone)
    positions = {id(r): (np.arange(len(r.layers), dtype=float) if same_layers else
                         relative_depth(np.arange(len(r.layers)), len(r.layers)))
                 for r in everyone}
    wanted = _panels(everyone)
    bordered = [label for label, runs in groups.items() if any(r.border for r in runs)]
    ratios = [2.6] * len(wanted) + ([0.35 * len(bordered) + 0.4] if bordered else [])
    figure = figures.new_figure(figsize=(figures.PAGE_WIDTH, sum(ratios) + 1.6),
                                layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(ratios), 1, sharex=True,
                                         gridspec_kw={"height_ratios": ratios}))
    panels = {name: _Panel(axis, variants) for (name, variants), axis in zip(wanted.items(), axes)}
    for label, runs in groups.items():
        style = styles[label]
        x = positions[id(max(runs, key=lambda r: len(r.layers)))]
        count = f" (mean ± sd of {len(runs)})" if len(runs) > 1 else ""
        labelled = False
        for panel_name, panel in panels.items():
            for i, variant in enumerate(panel.variants):
                matrix = _aligned(runs, [_values(r, panel_name, variant) for r in runs],
                                  positions, x)
                if np.isnan(matrix).all():
                    continue
                mean = np.nanmean(matrix, axis=0)
                panel.axis.plot(x, mean, ms=5, label=None if labelled else f"{label}{count}",
                                markerfacecolor=style.color if i % 2 == 0 else "white",
                                **style.kwargs())
                labelled = True
                panel.plotted.append(mean)
                if len(runs) > 1:
                    spread = np.nanstd(matrix, axis=0, ddof=1)
                    panel.axis.fill_between(x, mean - spread, mean + spread, color=style.color,
                                            alpha=0.15, linewidth=0)
                    panel.plotted += [mean - spread, mean + spread]
    _label_panels(panels, everyone[0])
    if bordered:
        _border_strip(axes[-1], groups, bordered, styles, positions, panels)
    bottom = axes[-1]
    if same_layers:
        layers = everyone[0].layers
        bottom.set_xticks(range(len(layers)), layers, rotation=40, ha="right",
                          rotation_mode="anchor", fontsize=8)
        bottom.set_xlabel("layer (network order)")
        bottom.set_xlim(-0.5, len(layers) - 0.5)
    else:
        bottom.set_xlabel("relative depth (layer index / last layer index)")
    figures.figure_legend(figure, *axes[0].get_legend_handles_labels(),
                          title="group" if len(groups) > 1 else None)
    return figures.titled(figure, "Tail pattern: saturation, intrinsic dimension, probe "
                                  "accuracy and border layer per layer", name)


def _label_panels(panels: dict[str, _Panel], first: TailData) -> None:
    """Axis labels and limits of the panels, and the legend of each panel's variants
    (markers filled or hollow, in black) where it has several."""
    from matplotlib.lines import Line2D

    labels = {"saturation": f"{first.saturation_label.split(' (')[0]}\n"
                            f"{first.saturation_pass} pass, final epoch",
              "intrinsic": "intrinsic dimension\n(final network)",
              "probes": "probe eval accuracy\n(linear, per layer)"}
    for name, panel in panels.items():
        panel.axis.set_ylabel(labels[name], fontsize=9)
        panel.axis.grid(alpha=0.3)
        if name != "intrinsic" and panel.plotted:
            panel.axis.set_ylim(figures.data_limits(np.concatenate(panel.plotted)))
        if len(panel.variants) > 1 or name == "intrinsic":
            handles = [Line2D([], [], color="k", marker="o", linestyle="none",
                              markerfacecolor="k" if i % 2 == 0 else "white",
                              label=ESTIMATORS.get(v, f"downsampling {v}"))
                       for i, v in enumerate(panel.variants)]
            panel.axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                              borderaxespad=0.0, fontsize=8)


def _border_strip(axis: Any, groups: dict[str, list[TailData]], bordered: list[str],
                  styles: dict[str, Style], positions: dict[int, np.ndarray],
                  panels: dict[str, _Panel]) -> None:
    """One row per group with a border layer: its marker at the border (the range where
    the group's runs disagree), and a grey dotted line per distinct border position
    through the panels above."""
    seen: set[float] = set()
    for row, label in enumerate(reversed(bordered)):
        borders = [positions[id(r)][r.layers.index(r.border)] for r in groups[label]
                   if r.border]
        style = styles[label]
        axis.plot([min(borders), max(borders)], [row, row], color=style.color, linewidth=2)
        axis.plot([float(np.mean(borders))], [row], marker=style.marker, ms=8,
                  color=style.color, linestyle="none")
        seen.update(round(float(b), 9) for b in borders)
    for position in sorted(seen):
        for panel in panels.values():
            panel.axis.axvline(position, color="0.5", linestyle=":", linewidth=1)
    axis.set_yticks(range(len(bordered)), list(reversed(bordered)), fontsize=7)
    axis.set_ylim(-0.7, len(bordered) - 0.3)
    axis.set_ylabel("border\nlayer", fontsize=9, rotation=0, ha="right", va="center")
    axis.grid(alpha=0.3, axis="x")


def draw_tail_pattern(run_dir: Path, prefix: str | None = None) -> Path:
    """Draw ``[<prefix>_]tail_pattern.png`` (and ``.svg``) in ``run_dir`` from the files
    there: the probe CSV, ``receptive_field.csv``, ``intrinsic_dimension.csv`` and
    ``log.csv`` when present. Returns the PNG's path. A damaged file is left out, with a
    warning."""
    run_dir = Path(run_dir)
    data = tail_data(run_dir, prefix)
    for problem in data.problems:
        warnings.warn(f"left out of the tail pattern: {problem}", stacklevel=2)
    name = f"run {run_dir.name}" + (f", probes {prefix!r}" if prefix else "")
    # the title names the run: the legend stays short, so it never crowds the axes
    figure = tail_pattern({"this run": [data]}, name)
    if figure is None:  # nothing measured: an empty, titled figure says so
        figure = figures.titled(figures.new_figure(figsize=(6, 2)),
                                "Tail pattern: no saturation or probe results", name)
    stem = run_dir / (f"{prefix}_{FIGURE}" if prefix else FIGURE)
    figures.save(figure, stem.with_suffix(""))
    return stem


"""``labkit report``: one self-contained HTML page of what a grid found.

The page answers "what did I find" before "did my grid run":

1. **Summary**: per group of runs (the values that vary, seeds averaged; ``--by``
   chooses), the eval metrics first, then the training ones, as mean ± sample standard
   deviation over the group's runs with their count (``0.971 ± 0.004``, n = 2).
2. **All groups compared** (when there are several): the grid's tail pattern, learning
   curves and projection curves, groups coloured by the first grouping key and styled
   by the second (:func:`labkit.outputs.figures.group_styles`).
3. **Per group**: its runs (state, epoch, metrics, reasons), its tail pattern
   (:mod:`labkit.outputs.tail_plot`), its runs' learning curves overlaid, its projection
   curves (:mod:`labkit.outputs.projection_plot`) and its per-layer table (mean ± sd
   over the group's runs, one row per layer and split, in network order).
4. **Plugin sections**: what the plugins add through the ``labkit_report_sections``
   hook (:mod:`labkit.core.hookspecs`), passed in by the command.
5. **Runs**: per run its status, reasons and figures.

Runs are named by the values that set them apart (:func:`labkit.store.identity.display_labels`:
``model=cnn_s lr=0.1 seed=1``; inside a group by what differs there, ``seed=1``); the
hash only follows the name. Tables fit the page: wide and long tables scroll inside
their own box, never the page. Figures are embedded as base64 PNG at the page's width,
the style sheet is inline: the page loads nothing from anywhere when viewed, so it can
be mailed or archived as one file.

The state is the one ``labkit status`` shows (:func:`labkit.store.runinfo.training_state`:
a killed run is interrupted, a run whose final checkpoint is damaged is not finished, a
run whose config.json is not its own is damaged). A damaged log, and analysis outputs
that no longer match their recorded digests, are named in the run's reason and never
drawn from or tabled.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import labkit
from labkit.core.errors import DamagedFile
from labkit.outputs import figures
from labkit.outputs.figure_sets import FigureFolder, FigureJob, grid_figures
from labkit.outputs.layers import run_layers
from labkit.store import runinfo
from labkit.store.identity import RunConfig, display_labels, short_keys
from labkit.store.output_digests import damaged_outputs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1.5em;
       color: #222; max-width: 1400px; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { margin-top: 1.5em; } nav { font-size: 0.9em; } nav a { margin-right: 1em; }
.box { overflow: auto; width: fit-content; max-width: 100%; max-height: 32em; margin: 0.5em 0;
       border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
thead th { position: sticky; top: 0; z-index: 1; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td, tr.damaged td { background: #fde8e8; } td.state-finished { color: #176117; }
td.reason { white-space: normal; min-width: 16em; max-width: 40em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; }
.muted { color: #666; font-size: 0.85em; } ul.reason { color: #8a1c1c; }
details > summary { cursor: pointer; margin: 0.5em 0; }
"""
FINAL_SKIP = ("-saturation_", "-intrinsic-dimensionality_", "-covariance-", "-diagonal-trace_")


# ---------------------------------------------------------------- values and cells

@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and count of one value over a group's runs."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | float:
        """The spread of the finite ``values``; NaN when there is none."""
        finite = [float(v) for v in values if v is not None and np.isfinite(v)]
        if not finite:
            return math.nan
        sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
        return cls(float(np.mean(finite)), sd, len(finite))

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.sd:.2g}"


@dataclass(frozen=True)
class Link:
    """A table cell that links to ``href`` (a place on the page)."""

    text: str
    href: str


def _cell(column: str, value: Any) -> str:
    """One ``<td>``: numbers right-aligned, a spread with its count in the tooltip."""
    if isinstance(value, Link):
        return f'<td><a href="{html.escape(value.href)}">{html.escape(value.text)}</a></td>'
    if isinstance(value, Spread):
        return f'<td class="num" title="n = {value.n}">{html.escape(str(value))}</td>'
    if isinstance(value, (float, np.floating)):
        text = "" if pd.isna(value) else f"{value:.4g}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{'yes' if value else ''}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="num">{value}</td>'
    css = f' class="state-{html.escape(str(value))}"' if column == "state" else \
        ' class="reason"' if column == "reason" else ""
    return f"<td{css}>{html.escape(str(value))}</td>"


def html_table(table: pd.DataFrame, table_id: str | None = None) -> str:
    """``table`` as an HTML table in a box that scrolls on its own when the table is
    wider or longer than the page allows (values escaped; floats to 4 significant
    digits, :class:`Spread` values as ``mean ± sd``; rows classed by a ``state``
    column). Plugins build their report sections with it (``labkit.api.html_table``)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        state = html.escape(str(row.get("state", "")))
        body.append(f'<tr class="{state}">'
                    + "".join(_cell(str(c), row[c]) for c in table.columns) + "</tr>")
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return (f'<div class="box"><table{ident}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def figure_html(figure: Any, caption: str) -> str:
    """``figure`` (a matplotlib ``Figure``) as an embedded PNG at most the page's width,
    with ``caption`` (also its alt text). Plugins use it too (``labkit.api.figure_html``)."""
    return image_html(figures.png_bytes(figure), caption)


def image_html(png: bytes, caption: str) -> str:
    """The PNG bytes ``png`` embedded (base64) in an HTML ``<figure>`` with ``caption``."""
    data = base64.b64encode(png).decode("ascii")
    text = html.escape(caption)
    return (f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
            f"<figcaption>{text}</figcaption></figure>")


# ---------------------------------------------------------------- runs and metrics

def readable_log(run: RunConfig) -> pd.DataFrame | None:
    """The run's ``log.csv``; ``None`` when it has none yet or it is damaged (the report
    names a damaged log in the run's reason). Plugins use it too
    (``labkit.api.readable_log``)."""
    try:
        return runinfo.read_log(run.directory) if run.directory.is_dir() else None
    except DamagedFile:
        return None


def labelled_runs(runs: Sequence[RunConfig], keep: Callable[[RunConfig], bool]
                  ) -> list[tuple[RunConfig, str]]:
    """The runs ``keep`` accepts, each with its label in the whole grid
    (:func:`~labkit.store.identity.display_labels`: ``lr=0.1 seed=1``). Plugins use it to
    name runs in their sections (``labkit.api.labelled_runs``)."""
    labels = display_labels([r.config for r in runs])[0]
    return [(run, label) for run, label in zip(runs, labels) if keep(run)]


def final_metrics(run: RunConfig) -> dict[str, float]:
    """The last log row's loss and metrics of every split (``<split>-<metric>``) and DINO
    probe accuracies, without per-layer columns; ``{}`` without a log, with a damaged
    one, or when the run's config.json is not its own (its values are not the run's)."""
    if runinfo.training_state(run).get("state") == "damaged":
        return {}
    try:
        log = runinfo.read_log(run.directory)
    except DamagedFile:
        return {}
    if log is None:
        return {}
    passes = figures.splits(log)
    last = log.iloc[-1]
    return {c: float(last[c]) for c in log.columns
            if (c.split("-")[0] in passes or figures.DINO_PROBE.match(c))
            and not any(s in c for s in FINAL_SKIP) and pd.api.types.is_number(last[c])}


def metric_order(columns: Sequence[str]) -> list[str]:
    """Metric columns with the eval splits first (accuracy, then loss, then the rest,
    in the log's order of splits), then DINO probes, then the training split."""
    splits = list(dict.fromkeys(c.split("-")[0] for c in columns))

    def rank(column: str) -> tuple[int, int, int]:
        split, _, metric = column.partition("-")
        group = 2 if split == "train" else 1 if figures.DINO_PROBE.match(column) else 0
        return group, splits.index(split), {"accuracy": 0, "loss": 1}.get(metric, 2)

    return sorted(columns, key=rank)


def damaged_files(run_dir: Path) -> list[str]:
    """A line for each file of the run that is damaged and so left out: its log, and
    analysis outputs that no longer match their recorded digests."""
    problems = list(damaged_outputs(run_dir).values())
    try:
        runinfo.read_log(run_dir)
    except DamagedFile as exc:
        problems.insert(0, str(exc))
    return problems


def status_row(run: RunConfig) -> dict[str, Any]:
    """State, epoch (done / last) and the reasons of failures (training and analyses)
    and damaged files of ``run``."""
    state = runinfo.training_state(run)
    started = run.directory.is_dir()
    analyses = runinfo.read_analyses(run.directory) if started else {}
    failed = [f"{label}: {a.get('reason')}" for label, a in analyses.items()
              if a.get("state") == "failed"]
    return {"state": state.get("state", "not started"),
            "epoch": f"{state.get('epoch', 0)}/{state.get('epochs', run.config['epochs'])}",
            "analyses": ", ".join(f"{label} {a.get('state')}" for label, a in analyses.items())
            or "-",
            "reason": "; ".join(filter(None, [state.get("reason"), *failed,
                                              *(damaged_files(run.directory) if started
                                                else [])]))}


@dataclass
class RunView:
    """What the page shows of one run: its label in the grid and in its group, its
    status and final metrics."""

    run: RunConfig
    label: str
    short: str
    status: dict[str, Any]
    metrics: dict[str, float]


def run_views(runs: Sequence[RunConfig], groups: dict[str, list[RunConfig]]) -> dict[str, RunView]:
    """Run hash → its :class:`RunView`; labels by :func:`display_labels`, across the grid
    and inside the run's group."""
    labels = dict(zip((r.hash for r in runs), display_labels([r.config for r in runs])[0]))
    views = {}
    for members in groups.values():
        inside = display_labels([r.config for r in members])[0] if len(members) > 1 \
            else [labels[members[0].hash]]
        for run, short in zip(members, inside):
            views[run.hash] = RunView(run, labels[run.hash], short, status_row(run),
                                      final_metrics(run))
    return views


def summary_table(groups: dict[str, list[RunConfig]], keys: Sequence[str],
                  views: dict[str, RunView]) -> pd.DataFrame:
    """One row per group: its values of ``keys``, how many runs and in which state, and
    every final metric as a :class:`Spread` over the runs that have it, eval metrics
    first (:func:`metric_order`)."""
    short = short_keys(list(keys))
    metrics = metric_order(list(dict.fromkeys(m for v in views.values() for m in v.metrics)))
    rows = []
    for label, members in groups.items():
        flat = [figures.config_value(members[0].config, k) for k in keys]
        states = pd.Series([views[r.hash].status["state"] for r in members]).value_counts()
        values = dict(zip((short[k] for k in keys), flat)) if keys else {"group": label}
        rows.append({**values,
                     "n": len(members),
                     **{m: Spread.of([views[r.hash].metrics.get(m, math.nan) for r in members])
                        for m in metrics},
                     "states": ", ".join(f"{n} {s}" for s, n in states.items())})
    return pd.DataFrame(rows)


def runs_table(members: Sequence[RunConfig], views: dict[str, RunView]) -> pd.DataFrame:
    """One row per run: its label (a link to its section), hash, state, epoch, final
    metrics (eval first) and reasons."""
    metrics = metric_order(list(dict.fromkeys(m for r in members for m in views[r.hash].metrics)))
    rows = []
    for run in members:
        view = views[run.hash]
        rows.append({"run": Link(view.short, f"#run-{run.hash}"),
                     "hash": run.hash, "state": view.status["state"],
                     "epoch": view.status["epoch"],
                     **{m: view.metrics.get(m, math.nan) for m in metrics},
                     "reason": view.status["reason"] or ""})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- per-layer rows

LAYER_COLUMNS = {"saturation": "saturation", "intrinsic_dimensionality": "PCA dim.",
                 "twonn": "TwoNN dim.", "mle": "MLE dim.", "rf_size_h": "RF size",
                 "rf_jump_h": "RF jump", "border": "border", "tail": "tail"}
"""Columns of the layers table (:mod:`labkit.outputs.layers`) shown in the report
(besides its ``probe_accuracy_*`` columns), with their headers."""
GEOMETRY = ("rf_size_h", "rf_jump_h")  # fixed by the architecture, not measured


def _layer_rows(runs: Sequence[RunConfig]) -> tuple[pd.DataFrame, list[str]]:
    """The rows of the layers table (:func:`labkit.outputs.layers.run_layers`: one per
    run × layer × split, in network order, the saturation counted at each run's own δ
    and rule) of the runs that started, and the lines naming what was left out."""
    problems: list[str] = []
    frames = []
    for run in runs:
        if not run.directory.is_dir():
            continue
        try:
            frames.append(run_layers(run.directory, problems.append))
        except DamagedFile as exc:
            problems.append(f"left out the per-layer measures of {run.directory}: {exc}")
    frames = [frame for frame in frames if not frame.empty]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), problems


def layer_table(rows: pd.DataFrame, members: Sequence[RunConfig]) -> pd.DataFrame:
    """The per-layer table of a group: one row per layer and split in network order,
    each measure as a :class:`Spread` over the group's runs (flags: ``yes`` when every
    run has them); columns no run has are left out."""
    if rows.empty:
        return rows
    mine = rows[rows["run_hash"].isin([r.hash for r in members])]
    probes = sorted(c for c in mine.columns if c.startswith("probe_accuracy_"))
    measures = [c for c in [*LAYER_COLUMNS, *probes] if c in mine and mine[c].notna().any()]
    table = []
    for (index, layer, split), block in mine.groupby(["layer_index", "layer", "split"],
                                                     sort=True):
        row: dict[str, Any] = {"layer": layer, "depth": round(float(
            block["relative_depth"].mean()), 2), "split": split}
        for column in measures:
            values = block[column].dropna()
            header = LAYER_COLUMNS.get(column) or \
                f"probe acc. ({column.removeprefix('probe_accuracy_')})"
            if column in ("border", "tail"):
                row[header] = "yes" if len(values) and values.astype(bool).all() else ""
            elif column in GEOMETRY and values.nunique() == 1:  # the architecture's: no spread
                row[header] = float(values.iloc[0])
            else:
                row[header] = Spread.of(values.astype(float).tolist())
        table.append(row)
    return pd.DataFrame(table)


# ---------------------------------------------------------------- the page

class Images:
    """The embedded PNG of each figure of ``jobs``: drawn through the figure folder
    ``folder`` (:class:`~labkit.outputs.figure_sets.FigureFolder`: only what changed is
    drawn, and as PNG alone, the format the page embeds), or in memory when there is
    none or it cannot be written. Files left out as damaged go to ``left_out``."""

    def __init__(self, jobs: list[FigureJob], folder: Path | None, left_out: list[str]) -> None:
        self.left_out = left_out
        self.pngs: dict[str, Path] | None = None
        if folder is not None:
            try:
                self.pngs = FigureFolder(folder).draw(jobs, left_out.append,
                                                      formats=("png",)).pngs
            except OSError:  # a folder that refuses writes: draw in memory
                self.pngs = None

    def html(self, job: FigureJob) -> str:
        """``job``'s figure as an HTML ``<figure>``; ``""`` when it has no data."""
        if self.pngs is not None:
            path = self.pngs.get(job.stem)
            return "" if path is None else image_html(path.read_bytes(), job.caption)
        figure = job.draw(self.left_out.append)
        return "" if figure is None else figure_html(figure, job.caption)


def group_section(index: int, label: str, members: Sequence[RunConfig],
                  views: dict[str, RunView], layers: pd.DataFrame,
                  shown: list[str]) -> list[str]:
    """A group's part of the page: its runs, its figures (``shown``: tail pattern,
    learning curves, projection curves) and its per-layer table."""
    count = f"{len(members)} run{'s' if len(members) > 1 else ''}"
    parts = [f'<h2 id="group-{index}">{index}. {html.escape(label)} '
             f'<span class="muted">({count})</span></h2>',
             html_table(runs_table(members, views), f"runs-{index}"), *shown]
    table = layer_table(layers, members)
    if not table.empty:
        parts += [f"<h3>Per-layer measures of {html.escape(label)}</h3>",
                  '<p class="muted">Final epoch; mean ± sd over the group\'s runs (hover a '
                  'cell for n); probe accuracy on the row\'s split; RF: receptive field in '
                  'input pixels; border: the first layer whose field covers the input, '
                  'tail: the layers after it.</p>',
                  html_table(table, f"layers-{index}")]
    return parts


def run_section(view: RunView, shown: list[str], above: int = 0,
                group: tuple[int, str] | None = None) -> list[str]:
    """A run's part of the page: status, reasons, directory and figures (``shown``;
    ``above``: how many more of its figures the section of its ``group``, (number,
    label), shows: a run alone in its group)."""
    run, status = view.run, view.status
    parts = [f'<h3 id="run-{run.hash}">{html.escape(view.label)} '
             f'<span class="muted">{run.hash}</span></h3>',
             f"<p>State: <b>{html.escape(status['state'])}</b>, epoch "
             f"{html.escape(status['epoch'])}; analyses: {html.escape(status['analyses'])}"
             + (f'; <span class="reason">reason: {html.escape(status["reason"])}</span>'
                if status["reason"] else "")
             + f'.<br><code class="muted">{html.escape(str(run.directory))}</code></p>']
    if above and group is not None:
        number, label = group
        parts.append(f'<p class="muted">{above} more figure(s) of this run are shown in '
                     f'the section of its group, <a href="#group-{number}">{number}. '
                     f'{html.escape(label)}</a>.</p>')
    if not shown:
        return parts if above else [*parts, "<p>No readable log, so no figures.</p>"]
    return [*parts, f"<details><summary>{len(shown)} figure(s) of this run</summary>",
            *shown, "</details>"]


def build_report(runs: Sequence[RunConfig], keys: Sequence[str], title: str,
                 sections: Sequence[tuple[str, str]] = (),
                 figure_folder: Path | None = None) -> str:
    """The HTML page of ``runs`` (see module docstring), grouped by the values of
    ``keys``; ``sections``: ``(title, html)`` pairs the plugins add; ``figure_folder``:
    the ``labkit plot`` folder to draw the figures through (see :class:`Images`)."""
    groups = figures.group_runs(runs, keys)
    views = run_views(runs, groups)
    states = pd.Series([v.status["state"] for v in views.values()]).value_counts()
    left_out: list[str] = []
    drawn = grid_figures(runs, keys, title)
    images = Images(drawn.jobs(), figure_folder, left_out)
    layers, layer_problems = _layer_rows(runs)
    nav = ['<a href="#summary">Summary</a>']
    if len(groups) > 1:
        nav.append('<a href="#compared">All groups compared</a>')
    nav += [f'<a href="#group-{i}">{html.escape(label)}</a>'
            for i, label in enumerate(groups, 1)]
    nav += [f'<a href="#plugin-{i}">{html.escape(t)}</a>' for i, (t, _) in
            enumerate(sections, 1)] + ['<a href="#runs">Runs</a>']
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} run(s): "
             + ", ".join(f"{n} {html.escape(str(s))}" for s, n in states.items())
             + f"; {len(groups)} group(s), {html.escape(figures.grouping_name(keys))}. "
               f"Written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by labkit "
               f"{labkit.__version__}.</p>",
             f"<nav>{''.join(nav)}</nav>",
             '<h2 id="summary">Summary</h2>',
             '<p class="muted">Final epoch of each run; mean ± sample standard deviation '
             'over the runs of each group (n: runs in the group; hover a cell for how many '
             'have the value).</p>',
             html_table(summary_table(groups, keys, views), "summary-table")]
    if len(groups) > 1:
        parts += ['<h2 id="compared">All groups compared</h2>',
                  *filter(None, map(images.html, drawn.grid))]
    above: set[str] = set()  # stems of the run figures a group's section shows
    section: dict[str, tuple[int, str]] = {}  # run hash → its group's section
    for i, (label, members) in enumerate(groups.items(), 1):
        section |= {run.hash: (i, label) for run in members}
        shown = [(job.stem, images.html(job)) for job in drawn.groups.get(label, [])]
        above |= {stem for stem, figure in shown if figure}
        parts += group_section(i, label, members, views, layers,
                               [figure for _, figure in shown if figure])
    for i, (section_title, body) in enumerate(sections, 1):
        parts += [f'<h2 id="plugin-{i}">{html.escape(section_title)}</h2>', body]
    parts.append('<h2 id="runs">Runs</h2>')
    for run in runs:
        jobs = drawn.runs.get(run.hash, [])
        shown = list(filter(None, map(images.html, [j for j in jobs if j.stem not in above])))
        parts += run_section(views[run.hash], shown, sum(j.stem in above for j in jobs),
                             section.get(run.hash))
    problems = list(dict.fromkeys(left_out + layer_problems))
    if problems:
        parts += ["<h2>Left out as damaged</h2>", '<ul class="reason">'
                  + "".join(f"<li>{html.escape(line)}</li>" for line in problems) + "</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")

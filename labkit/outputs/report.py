"""``labkit report``: one self-contained HTML page of a grid.

The page holds the grid's table (the config values that vary, training state, epoch and
the final metrics of every split), each run's status with the reason of a failure (its
own or an analysis's), the grid's tail pattern and every run's figures
(:mod:`labkit.outputs.figures`). Figures are embedded as base64 PNG and the style sheet is
inline: the page loads nothing from anywhere when viewed, so it can be mailed or archived
as one file.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import labkit
from labkit.core.errors import DamagedFile
from labkit.outputs import figures
from labkit.store import runinfo
from labkit.store.identity import RunConfig, flatten, varying_keys
from labkit.store.output_digests import damaged_outputs

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde8e8; } tr.finished td.state { color: #176117; }
td.reason { white-space: normal; min-width: 20em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
"""
FINAL_SKIP = ("-saturation_", "-intrinsic-dimensionality_", "-covariance-", "-diagonal-trace_")


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


def grid_table(runs: Sequence[RunConfig]) -> pd.DataFrame:
    """One row per run: name, hash, varying config values, state and final metrics."""
    keys = varying_keys([r.config for r in runs])
    rows = []
    for i, run in enumerate(runs, 1):
        flat = flatten(run.config)
        status = status_row(run)
        rows.append({"#": i, "run": run.name, "hash": run.hash,
                     **{figures.key_label(k): flat.get(k, "-") for k in keys},
                     "state": status["state"], "epoch": status["epoch"],
                     **final_metrics(run), "reason": status["reason"]})
    return pd.DataFrame(rows)


def _cell(column: str, value: Any) -> str:
    if isinstance(value, float):
        text = "-" if pd.isna(value) else f"{value:.4g}"
        return f'<td class="num">{text}</td>'
    css = ' class="state"' if column == "state" else ' class="reason"' if column == "reason" \
        else ""
    return f"<td{css}>{html.escape(str(value))}</td>"


def table_html(table: pd.DataFrame, table_id: str) -> str:
    """``table`` as an HTML table (values escaped, rows classed by ``state``)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        state = html.escape(str(row.get("state", "")))
        body.append(f'<tr class="{state}">'
                    + "".join(_cell(c, row[c]) for c in table.columns) + "</tr>")
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def figure_html(figure: Any, caption: str) -> str:
    """``figure`` as an embedded PNG with ``caption`` (also its alt text)."""
    data = base64.b64encode(figures.png_bytes(figure)).decode("ascii")
    text = html.escape(caption)
    return (f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
            f"<figcaption>{text}</figcaption></figure>")


def build_report(runs: Sequence[RunConfig], keys: Sequence[str], title: str) -> str:
    """The HTML page of ``runs`` (see module docstring); the tail pattern groups them by
    the values of ``keys``."""
    table = grid_table(runs)
    states = table["state"].value_counts()
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} run(s): "
             + ", ".join(f"{n} {html.escape(str(s))}" for s, n in states.items())
             + f". Written {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by labkit "
               f"{labkit.__version__}.</p>",
             "<h2>Runs</h2>", table_html(table, "grid")]
    started = [r for r in runs if r.directory.is_dir()]
    left_out: list[str] = []
    tail = figures.grid_tail_pattern(started, keys, title, on_damaged=left_out.append)
    if tail is not None:
        by = ", ".join(map(figures.key_label, keys)) or "nothing"
        parts += ["<h2>Tail pattern</h2>",
                  figure_html(tail, f"Tail pattern of the grid, grouped by {by}")]
    if left_out:
        parts.append('<ul class="reason">' + "".join(f"<li>{html.escape(line)}</li>"
                                                    for line in left_out) + "</ul>")
    for i, run in enumerate(runs, 1):
        status = status_row(run)
        parts.append(f'<h2 id="run-{run.hash}">{i}. {html.escape(run.directory.name)}</h2>')
        parts.append(f"<p>State: <b>{html.escape(status['state'])}</b>, epoch "
                     f"{html.escape(status['epoch'])}; analyses: "
                     f"{html.escape(status['analyses'])}"
                     + (f'; <span class="reason">reason: {html.escape(status["reason"])}'
                        f"</span>" if status["reason"] else "")
                     + f".<br><code>{html.escape(str(run.directory))}</code></p>")
        try:
            drawn = figures.run_figure_set(run.directory, f"run {run.directory.name}")
        except DamagedFile:  # named in the reason above
            drawn = {}
        if not drawn:
            parts.append("<p>No readable log, so no figures.</p>")
        for stem, figure in drawn.items():
            parts.append(figure_html(figure, f"{stem.replace('_', ' ')}: "
                                             f"{run.directory.name}"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")

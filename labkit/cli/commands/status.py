"""``labkit status`` and ``plan``: where a grid stands, and what it will run.

Neither imports torch or the plugins when the spec was validated before in this
environment (:mod:`labkit.cli.spec_cache`): a run's state is read from its files
(:mod:`labkit.store.runinfo`), the runs from the cached grid. Runs are shown by short labels
of the values that vary across the grid (:func:`labkit.store.identity.display_labels`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from labkit.cli import plugins, spec_cache
from labkit.cli.commands.common import LINKING, SET_OPTION, check_devices, linked_runs, load_runs
from labkit.store import runinfo
from labkit.store.identity import (RunConfig, display_labels, flatten, short_keys, short_value,
                                   varying_keys)
from labkit.store.output_digests import damaged_outputs

WIDTH = 100  # columns the plan table fits in


def labels(runs: list[RunConfig]) -> list[str]:
    """The display label of each run (see :func:`labkit.store.identity.display_labels`)."""
    return display_labels([r.config for r in runs])[0]


def _state(run: RunConfig) -> str:
    status = runinfo.training_state(run)
    return f"{status['state']}@{status.get('epoch', 0)}" if status else "new"


def plan_table(runs: list[RunConfig]) -> list[dict[str, Any]]:
    """One row per run: its position, hash, status and the values that tell the runs
    apart (short headers and values, see :func:`labkit.store.identity.display_labels`)."""
    configs = [r.config for r in runs]
    _, keys = display_labels(configs)
    short = short_keys(keys)
    rows = []
    for i, run in enumerate(runs, 1):
        flat = flatten(run.config)
        row = {"#": i, "hash": run.hash, "status": _state(run)}
        row.update({short[k]: short_value(flat[k]) if k in flat else "-" for k in keys})
        rows.append(row)
    return rows


def text_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` (dicts with the same keys) as text: a header of the keys, each column
    right-aligned to its widest cell, columns one space apart."""
    columns = list(rows[0]) if rows else []
    cells = [[str(c) for c in columns]] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(" ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in cells)


def fitted(rows: list[dict[str, Any]], width: int = WIDTH) -> str:
    """:func:`text_table` of ``rows`` no wider than ``width``: trailing columns that do
    not fit are left out and named on a last line."""
    columns = list(rows[0]) if rows else []
    dropped: list[str] = []
    text = text_table(rows)
    while max(map(len, text.splitlines())) > width and len(columns) > 3:
        dropped.insert(0, str(columns.pop()))
        text = text_table([{c: row[c] for c in columns} for row in rows])
    lines = [line if len(line) <= width else line[:width - 1] + "…" for line in text.splitlines()]
    if dropped:
        lines.append(_cut(f"(not shown: {', '.join(dropped)})", width))
    return "\n".join(lines)


def _cut(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def plan_notes(runs: list[RunConfig]) -> list[tuple[int, str]]:
    """``(position, note)`` for the runs whose model reports something before training.

    A model factory may carry ``plan_notes(runs) -> [str | None, …]`` (one per run of
    that model in the grid; built on the architecture, never trained): the stitch plugin
    names the cells whose cut shapes cannot stitch. Shown by ``plan`` and ``run``.
    """
    by_model: dict[str, list[tuple[int, RunConfig]]] = {}
    for i, run in enumerate(runs, 1):
        by_model.setdefault(run.config["model"]["name"], []).append((i, run))
    models = spec_cache.summary()["models"]  # which have notes: cached, no torch
    if not any((spec_cache.lookup(models, name) or {}).get("plan_notes") for name in by_model):
        return []
    registries = plugins.registries()
    notes = []
    for name, items in by_model.items():
        entry, _ = registries.models.resolve(name)
        check = getattr(entry.obj, "plan_notes", None)
        if check is not None:
            reported = check([run for _, run in items])
            notes += [(i, note) for (i, _), note in zip(items, reported) if note]
    return sorted(notes)


def training_order(runs: list[RunConfig]) -> list[tuple[RunConfig, list[int]]]:
    """Every run the grid trains, in training order: each run of ``runs`` after the
    runs it trains first (:func:`labkit.cli.commands.common.linked_runs`: teachers, init
    runs, stitched networks given by spec, chain links), each once. A linked run comes
    with the positions (1-based, in this order) of the runs that train it; a run of
    the grid with ``[]``. The registries are built only when a component of the grid
    declares linked runs (known from the cached summary)."""
    summary = spec_cache.summary()
    linking = any((spec_cache.lookup(summary[kind], run.config[key]["name"]) or {}).get(
        "linked_runs") for run in runs for kind, key in LINKING)
    if not linking:
        return [(run, []) for run in runs]
    registries = plugins.registries()
    order: dict[Path, RunConfig] = {}
    for run in runs:
        for needed in [*linked_runs(run, registries), run]:
            order.setdefault(needed.directory, needed)
    position = {directory: i for i, directory in enumerate(order, 1)}
    needs: dict[Path, set[int]] = {}
    for directory, run in order.items():  # who trains each link: the runs naming it
        for link in linked_runs(run, registries, deep=False):
            needs.setdefault(link.directory, set()).add(position[directory])
    grid = {run.directory for run in runs}
    return [(run, [] if directory in grid else sorted(needs[directory]))
            for directory, run in order.items()]


def _positions(numbers: list[int]) -> str:
    """``[2, 3, 4, 7]`` → ``#2-#4, #7``; ``[]`` → ``-``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][-1] + 1:
            spans[-1].append(n)
        else:
            spans.append([n])
    return ", ".join(f"#{s[0]}" if len(s) == 1 else f"#{s[0]}-#{s[-1]}" for s in spans) or "-"


def print_plan(runs: list[RunConfig]) -> int:
    """Print the plan table of every run the grid trains (:func:`training_order`),
    fitted to :data:`WIDTH`, the models' notes on their runs, and the keys that vary
    along with it; returns the number of linked runs shown."""
    order = training_order(runs)
    grid, runs = runs, [run for run, _ in order]
    table = plan_table(runs)
    if any(needed for _, needed in order):
        table = [{**dict(list(row.items())[:3]), "trained first for": _positions(needed),
                  **dict(list(row.items())[3:])} for row, (_, needed) in zip(table, order)]
    click.echo(fitted(table))
    for i, note in plan_notes(runs):
        click.echo(_cut(f"#{i}: {note}"))
    _, shown = display_labels([r.config for r in runs])
    others = [k for k in varying_keys([r.config for r in runs]) if k not in shown]
    if shown:
        click.echo(_cut(f"varies: {', '.join(shown)}"))
    if others:
        click.echo(_cut(f"{len(others)} other value(s) vary with these: {', '.join(others)}"))
    return len(order) - len(grid)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="the run-id the grid was run with")
@click.option("--quiet", "-q", is_flag=True, help="print only the count of each state")
@SET_OPTION
def status(spec: str, run_id: str, quiet: bool, overrides: tuple[str, ...]) -> None:
    """Per run of SPEC: training finished / running / interrupted / failed (reason) /
    not started, the epoch (done / last), the state of each analysis that ran, and any
    analysis output that no longer matches its recorded digest."""
    runs = load_runs(spec, run_id, overrides=overrides, checked=False)
    rows = []
    for i, (name, r) in enumerate(zip(labels(runs), runs), 1):
        st = runinfo.training_state(r)
        analyses = runinfo.read_analyses(r.directory)
        failed = [f"{label}: {a['reason']}" for label, a in analyses.items()
                  if a["state"] == "failed"]
        rows.append({"#": i, "hash": r.hash, "run": name,
                     "state": st.get("state", "not started"),
                     "epoch": f"{st.get('epoch', 0)}/{st.get('epochs', r.config['epochs'])}",
                     "analyses": ", ".join(f"{label} {a['state']}"
                                           for label, a in analyses.items()) or "-",
                     "updated": st.get("updated", "-"),
                     "reason": "; ".join(filter(None, [st.get("reason"), *failed,
                                                       *damaged_outputs(r.directory).values()]))})
    if not quiet:
        click.echo(text_table(rows))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(
        counts.items(), key=lambda item: -item[1])))
    if counts.get("not started") == len(rows):
        found = other_run_ids(runs)
        click.echo(f"no run of {spec} has started under run-id {run_id!r}"
                   + (f"; run-ids these runs were trained under: {', '.join(found)}"
                      if found else ""), err=True)


def other_run_ids(runs: list[RunConfig]) -> list[str]:
    """The run-ids under which some of ``runs`` has a run directory (the same run, the
    same hash), sorted: never a sibling folder that holds other runs."""
    found = set()
    for run in runs:
        ids = run.directory.parent.parent  # <logs>/<model>/<data>_<res>/<run-id>/<run>
        if ids.is_dir():
            found.update(p.name for p in ids.iterdir() if (p / run.directory.name).is_dir())
    return sorted(found)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", default="RUN_ID", show_default=True, help="run-id to show paths for")
@SET_OPTION
def plan(spec: str, run_id: str, overrides: tuple[str, ...]) -> None:
    """Print the runs of SPEC (hash, status, the values that vary) without running."""
    runs = load_runs(spec, run_id, overrides=overrides)
    if runs[0].config["launcher"]["name"] == "local":  # elsewhere, the nodes' devices count
        check_devices(runs)
    linked = print_plan(runs)
    first = f" and {linked} linked run(s) they train first" if linked else ""
    click.echo(_cut(f"{len(runs)} run(s){first} under {Path(runs[0].config['logs_dir'])}"))


COMMANDS: list[click.Command] = [status, plan]

"""``labkit report``: one self-contained HTML page of what a grid found."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from labkit.cli import plugins, spec_cache
from labkit.cli.commands.common import SET_OPTION, grid_arguments
from labkit.cli.commands.plot import BY_OPTION, figure_folder, grid_runs
from labkit.outputs import figures
from labkit.outputs.figure_sets import grid_name
from labkit.outputs.report import build_report
from labkit.store.atomic import write_text
from labkit.store.identity import RunConfig

# config keys whose items name components, besides every "name" of a nested object
LISTED = ("metrics", "analyses")


def component_names(config: Any, top: bool = True) -> Iterator[str]:
    """Every component name in a resolved config: the ``name`` of each nested object
    (the spec's own ``name`` excluded) and the names listed under ``metrics`` and
    ``analyses``."""
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "name" and not top and isinstance(value, str):
                yield value
            elif key in LISTED and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
                yield from component_names([v for v in value if isinstance(v, dict)], False)
            else:
                yield from component_names(value, False)
    elif isinstance(config, list):
        for item in config:
            yield from component_names(item, False)


def plugins_used(runs: list[RunConfig]) -> set[str]:
    """The plugins (other than labkit itself) that registered a component the runs use,
    from the registries' summary (cached: nothing imported while it is current)."""
    names = {name for run in runs for name in component_names(run.config)}
    used = set()
    for entries in spec_cache.summary().values():
        for name in names:
            entry = spec_cache.lookup(entries, name)
            if entry is not None and entry["plugin"] != "labkit":
                used.add(entry["plugin"])
    return used


def plugin_sections(runs: list[RunConfig]) -> list[tuple[str, str]]:
    """The sections the plugins add (the ``labkit_report_sections`` hook), asked only
    when the runs use a plugin's component, so that reporting a grid of labkit's own
    components imports no plugin."""
    if not plugins_used(runs):
        return []
    answers = plugins.plugin_manager().hook.labkit_report_sections(runs=runs)
    # pluggy asks the plugin registered last first: keep the plugins' registration order
    return [tuple(section) for answer in reversed(answers) for section in answer or []]


@click.command()
@grid_arguments
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write [default: <spec name>-<run-id>.html here]")
@BY_OPTION
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors")
@SET_OPTION
def report(spec: str, run_id: str, output: str | None, by: tuple[str, ...], quiet: bool,
           overrides: tuple[str, ...]) -> None:
    """Write one self-contained HTML page of what SPEC's runs found: a summary table of
    every group's eval metrics (mean ± sd over seeds), then per group its tail pattern,
    learning curves, projection curves and per-layer table, the plugins' sections, and
    every run's status, reasons and figures. Figures are embedded: nothing is loaded
    from the network when the page is viewed."""
    runs = grid_runs(spec, run_id, overrides)
    keys = figures.resolve_keys([r.config for r in runs], by)
    path = Path(output or f"{runs[0].config['name']}-{run_id}.html")
    write_text(path, build_report(runs, keys, grid_name(runs), plugin_sections(runs),
                                  figure_folder(runs)))
    if not quiet:
        click.echo(f"report of {len(runs)} run(s) -> {path} (open it in a browser)")


COMMANDS: list[click.Command] = [report]

"""``labkit report``: one self-contained HTML page of a grid."""
from __future__ import annotations

from pathlib import Path

import click

from labkit.cli.commands.common import SET_OPTION
from labkit.cli.commands.plot import BY_OPTION, grid_name, grid_runs
from labkit.outputs import figures
from labkit.outputs.report import build_report
from labkit.store.atomic import write_text


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="run-id the runs were trained under")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write [default: <spec name>-<run-id>.html here]")
@BY_OPTION
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors")
@SET_OPTION
def report(spec: str, run_id: str, output: str | None, by: tuple[str, ...], quiet: bool,
           overrides: tuple[str, ...]) -> None:
    """Write one self-contained HTML page of SPEC's runs: the grid's table (varying
    values, state, final metrics, failure reasons), the grid's tail pattern and every
    run's figures, embedded (nothing is loaded from the network when it is viewed)."""
    runs = grid_runs(spec, run_id, overrides)
    keys = figures.resolve_keys([r.config for r in runs], by)
    path = Path(output or f"{runs[0].config['name']}-{run_id}.html")
    write_text(path, build_report(runs, keys, grid_name(runs)))
    if not quiet:
        click.echo(f"report of {len(runs)} run(s) -> {path} (open it in a browser)")


COMMANDS: list[click.Command] = [report]

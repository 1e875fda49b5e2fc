"""``labkit plot``: the figures of a grid's runs, groups and comparison, as PNG and SVG
(or PDF), drawn again only when what they are drawn from changed
(:mod:`labkit.outputs.figure_sets`)."""
from __future__ import annotations

from pathlib import Path

import click

from labkit.cli.commands.common import SET_OPTION, grid_arguments, load_runs
from labkit.core.errors import UserError
from labkit.outputs import figures
from labkit.outputs.figure_sets import FigureFolder, grid_figures, grid_name
from labkit.store.identity import RunConfig

BY_OPTION = click.option(
    "--by", multiple=True, metavar="KEY",
    help="config key grouping runs in the grid's tail pattern (dotted: model, "
         "dataset.resolution, optimizer.lr; repeatable) [default: every value that varies "
         "but seed, which is averaged as mean ± sd]")


def grid_runs(spec: str, run_id: str, overrides: tuple[str, ...] = ()) -> list[RunConfig]:
    """Every run of SPEC under ``run_id``, when at least one has a run directory.

    Raises:
        UserError: none has started (says how to train them).
    """
    runs = load_runs(spec, run_id, overrides=overrides, checked=False)
    started = [r for r in runs if r.directory.is_dir()]
    if not started:
        raise UserError(f"no run of {spec} has started under run-id {run_id!r}; train them "
                        f"with `labkit run {spec} --run-id {run_id}` (or check the run-id "
                        f"with `labkit status {spec} --run-id {run_id}`)")
    return runs


def figure_folder(runs: list[RunConfig], output: str | None = None) -> Path:
    """Where ``plot`` draws the grid's figures: ``output``, else
    ``<logs_dir>/figures/<spec name>/<run-id>``."""
    return Path(output) if output else (Path(runs[0].config["logs_dir"]) / "figures"
                                        / runs[0].config["name"] / runs[0].run_id)


@click.command()
@grid_arguments
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="folder for the figures [default: <logs_dir>/figures/<spec name>/<run-id>]")
@BY_OPTION
@click.option("--format", "formats", multiple=True, type=click.Choice(figures.ALL_FORMATS),
              help="file format of every figure (repeatable; pdf for LaTeX: fonts "
                   "embedded, text editable) [default: png and svg]")
@click.option("--quiet", "-q", is_flag=True, help="print only the folder written to")
@SET_OPTION
def plot(spec: str, run_id: str, output: str | None, by: tuple[str, ...],
         formats: tuple[str, ...], quiet: bool, overrides: tuple[str, ...]) -> None:
    """Draw the figures of every started run of SPEC (learning curves, saturation over
    epochs, projection curves, distillation and DINO probe curves when the logs have
    them), of each group of runs (tail pattern, learning curves and projection curves,
    seeds averaged) and of the grid (every group together), as PNG and SVG (or each
    --format). Figures whose input files and parameters are unchanged since they were
    drawn, in every format asked for, are kept (figures-manifest.json in the folder)."""
    runs = grid_runs(spec, run_id, overrides)
    keys = figures.resolve_keys([r.config for r in runs], by)
    out = figure_folder(runs, output)
    jobs = grid_figures(runs, keys, grid_name(runs)).jobs()
    formats = tuple(dict.fromkeys(formats)) or figures.FORMATS
    done = FigureFolder(out).draw(
        jobs, on_damaged=lambda line: click.echo(f"warning: {line}", err=True),
        formats=formats)
    if not done.written and not done.kept:
        raise UserError(f"the runs of {spec} under run-id {run_id!r} have no readable log "
                        f"yet; wait for an epoch to finish (`labkit status {spec} --run-id "
                        f"{run_id}`), or let `labkit run` rewrite a damaged one")
    if not quiet:
        for path in done.written:
            click.echo(f"  {path}")
    on = f" on {done.workers} processes" if done.workers > 1 else ""
    copied = f" ({done.copied} copied from the runs' own)" if done.copied else ""
    click.echo(f"{len(done.written)} figure(s) drawn{on}{copied}, {len(done.kept)} unchanged "
               f"({' and '.join(f.upper() for f in formats)}) in {out}")


COMMANDS: list[click.Command] = [plot]

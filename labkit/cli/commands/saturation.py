"""CLI commands of the saturation analyses: ``labkit saturation`` and ``labkit project``."""
from __future__ import annotations

import re

import click

from labkit.analyses import Analysis
from labkit.cli.commands.analysis_common import analysis_params, finished_run, labelled, produce
from labkit.cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, check_device, grid_arguments,
                                        load_runs)
from labkit.core.errors import UserError


def parse_deltas(text: str) -> list[float]:
    """``"0.9,0.99 0.999"`` → ``[0.9, 0.99, 0.999]`` (commas and/or spaces separate)."""
    try:
        return [float(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise UserError(f"--deltas {text!r}: give numbers in (0, 1] separated by commas, "
                        f"e.g. --deltas 0.9,0.99,0.999") from None


def _produce_and_report(analysis: Analysis, what: str, quiet: bool = False) -> None:
    """Compute ``analysis`` unless complete; say which, with its first output."""
    ran = produce(analysis, not quiet, unless_complete=True)
    click.echo(f"{what if ran else 'up to date'}: {analysis.outputs()[0]}")


@click.command()
@grid_arguments
@click.option("--deltas", default=None,
              help="comma-separated shares of variance to project at, e.g. 0.9,0.99,0.999 "
                   "[default: the spec's projection analysis, else 0.9 … 1.0]")
@DEVICE_OPTION
@QUIET_OPTION
def project(spec: str, run_id: str, deltas: str | None, device: str | None, quiet: bool) -> None:
    """Evaluate every finished run of SPEC with each layer projected onto the principal
    directions that explain DELTA of its variance (and onto random directions of the same
    rank); writes projected_results.csv and .png into each run directory."""
    from labkit.analyses.projection import Projection

    runs = load_runs(spec, run_id, device)
    check_device(runs[0].config["device"])
    for run in labelled(runs):
        analysis = Projection(
            finished_run(run, spec),
            analysis_params(run, "projection", Projection,
                            deltas=parse_deltas(deltas) if deltas is not None else None))
        _produce_and_report(analysis, "projected", quiet)


@click.command()
@grid_arguments
@click.option("--deltas", default=None,
              help="comma-separated shares of variance, e.g. 0.9,0.99,0.999 [default: the "
                   "spec's saturation analysis, else 0.9,0.95,0.99,0.999]")
@click.option("--rules", default=None,
              help="comma-separated counting rules: delve (cumulative share below delta, "
                   "as published) and/or reach (smallest count reaching delta) [default: "
                   "the spec's saturation analysis, else delve]")
@DEVICE_OPTION
@QUIET_OPTION
def saturation(spec: str, run_id: str, deltas: str | None, rules: str | None,
               device: str | None, quiet: bool) -> None:
    """Recompute the intrinsic dimensionality and saturation of every layer, pass and
    epoch of each finished run of SPEC at other deltas, from the eigenvalue spectra stored
    during training (no retraining); writes saturation.csv into each run directory
    (saturation-<digest>.csv for deltas or rules other than the default)."""
    from labkit.analyses.saturation_views import SaturationViews

    for run in labelled(load_runs(spec, run_id, device)):
        analysis = SaturationViews(
            finished_run(run, spec),
            analysis_params(run, "saturation", SaturationViews,
                            deltas=parse_deltas(deltas) if deltas is not None else None,
                            rules=[r for r in re.split(r"[,\s]+", rules.strip()) if r]
                            if rules is not None else None))
        _produce_and_report(analysis, "saturation table", quiet)


COMMANDS: list[click.Command] = [saturation, project]

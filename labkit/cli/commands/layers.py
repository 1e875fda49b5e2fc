"""CLI commands of the layer analyses: ``receptive-field``, ``extract``, ``probes`` and
``probe-run`` (docs/layers.md).

Each runs the analysis of the same name on every run of a spec. Parameters the command
line leaves out come from the spec's entry for that analysis, else the defaults.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from labkit.analyses import FinishedRun, latents
from labkit.analyses.layerwise import Latents, Probes, ReceptiveField
from labkit.cli import plugins
from labkit.cli.commands.analysis_common import analysis_params, finished_run, labelled, produce
from labkit.cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, check_device, grid_arguments,
                                        load_runs)
from labkit.core.errors import UserError
from labkit.measures.receptive_field import border_layer
from labkit.spec.values import parse_size
from labkit.store.readers import FLAG, TEXT, read_csv_file
from labkit.training.progress import working_on

_DOWNSAMPLING_HELP = ("downsampling: d (conv maps average-pooled to d×d), 'pixelwise' or 'none'; "
                      "repeatable [default: the spec's, else 4]")


def _modes(texts: tuple[str, ...]) -> list[latents.Mode | None]:
    """Parsed ``-d`` values; ``[None]`` (the spec's or the default) when none given."""
    return [latents.parse_mode(t) for t in texts] or [None]


_MEMORY_HELP = ("memory budget of the fitting workers together, e.g. 8G or 500M: no more "
                "fits run at once than fit in it [default: the spec's, else half the "
                "memory available]")
_SOLVER_HELP = "probe solver [default: the spec's, else torch]"


def _check_memory(memory: str | None) -> None:
    """A ``--memory`` that is no size is an error before any work."""
    if memory is not None:
        parse_size(memory)


def _probe(run: FinishedRun, modes: list[latents.Mode | None], progress: bool,
           **given: Any) -> None:
    for mode in modes:
        analysis = Probes(run, analysis_params(run.run, "probes", Probes, downsampling=mode,
                                               **given), report=click.echo)
        # streamed fits have no cache: a complete record (same checkpoint and parameters)
        # is what keeps a rerun from fitting again
        ran = produce(analysis, progress, unless_complete=analysis.params.stream)
        streamed = ", streamed" + ("" if ran else ", already complete")
        click.echo(f"probes (downsampling {analysis.params.downsampling}"
                   f"{streamed if analysis.params.stream else ''}): {analysis.outputs()[0]}")


@click.command("receptive-field")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="run-id of the runs")
@click.option("--layers", multiple=True, help="wildcard on layer names (repeatable) [default: all]")
@click.option("--check", is_flag=True, default=None,
              help="check each box against the support of an input gradient (column "
                   "rf_check) [default: the spec's, else off]")
@DEVICE_OPTION
@QUIET_OPTION
def receptive_field(spec: str, run_id: str, layers: tuple[str, ...], check: bool | None,
                    device: str | None, quiet: bool) -> None:
    """Write receptive_field.csv (size, jump, start, map size per layer; border layer;
    how sure each row is: rf_status) into every run directory of SPEC. Needs only the
    architecture, not training."""
    for run in labelled(load_runs(spec, run_id, device)):
        analysis = ReceptiveField(FinishedRun(run, plugins.registries()),
                                  analysis_params(run, "receptive_field", ReceptiveField,
                                                  layers=list(layers) or None, check=check))
        produce(analysis, progress=not quiet)
        table = read_csv_file(analysis.outputs()[0], {"layer": TEXT, "border": FLAG,
                                                      "rf_status": TEXT},
                              text_columns=("rf_check",))
        border = border_layer(table)
        counts = [f"{n} {status}" for status, n in table["rf_status"].value_counts().items()]
        if "rf_check" in table:
            counts += [f"check {n} {outcome}"
                       for outcome, n in table["rf_check"].value_counts().items()]
        click.echo(f"{analysis.outputs()[0]} (border layer: {border or 'none covers the input'}; "
                   f"{', '.join(counts)})")


@click.command("extract")
@grid_arguments
@click.option("-d", "--downsampling", "modes", multiple=True, help=_DOWNSAMPLING_HELP)
@click.option("--layers", multiple=True, help="wildcard on layer names (repeatable) [default: all]")
@click.option("--latents-dir", default=None,
              help="root of the latent datasets [default: latent_datasets/ next to logs_dir]")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="storage type [default: float16]")
@DEVICE_OPTION
@QUIET_OPTION
def extract(spec: str, run_id: str, modes: tuple[str, ...], layers: tuple[str, ...],
            latents_dir: str | None, dtype: str | None, device: str | None, quiet: bool) -> None:
    """Extract the layer activations of every finished run of SPEC (train and eval
    splits, eval mode, no augmentation). An interrupted extraction resumes; a complete
    one is skipped."""
    runs = load_runs(spec, run_id, device)
    check_device(runs[0].config["device"])
    for run in labelled(runs):
        finished = finished_run(run, spec)
        for mode in _modes(modes):
            analysis = Latents(finished, analysis_params(run, "latents", Latents, downsampling=mode,
                                                 layers=list(layers) or None,
                                                 latents_dir=latents_dir, dtype=dtype))
            produce(analysis, progress=not quiet)
            click.echo(f"latents: {analysis.directory()}")


@click.command("probes")
@click.argument("targets", nargs=-1)
@click.option("--run-id", default=None, help="with a SPEC: run-id the runs were trained under")
@click.option("-d", "--downsampling", "modes", multiple=True, help=_DOWNSAMPLING_HELP)
@click.option("-mp", "processes", type=click.IntRange(min=1), default=None,
              help="worker processes fitting layers in parallel [default: 1]")
@click.option("--memory", default=None, help=_MEMORY_HELP)
@click.option("--solver", type=click.Choice(["torch", "sklearn"]), default=None, help=_SOLVER_HELP)
@click.option("--prefix", default=None, help="name outputs <prefix>_probe_performances.csv, …")
@click.option("--latents-dir", default=None,
              help="root of the latent datasets [default: where the run's pointer says]")
@click.option("--stream/--no-stream", default=None,
              help="with SPEC --run-id: fit from forward passes, writing no latents "
                   "[default: the spec's, else off]")
@click.option("-C", "Cs", type=click.FloatRange(min=0, min_open=True), multiple=True,
              help="inverse regularisation strength; repeatable: a probe per layer and C "
                   "[default: the spec's, else 1]")
@DEVICE_OPTION
@QUIET_OPTION
def probes(targets: tuple[str, ...], run_id: str | None, modes: tuple[str, ...],
           processes: int | None, memory: str | None, solver: str | None, prefix: str | None,
           latents_dir: str | None, stream: bool | None, Cs: tuple[float, ...],
           device: str | None, quiet: bool) -> None:
    """Fit a logistic probe per layer: `labkit probes SPEC --run-id ID` (extracting
    latents when missing; with --stream from forward passes, no latents written) or
    `labkit probes PATHS…` (latent directories, or folders holding them). Results go to
    the source run's probe_performances.csv, in network order; fits on latents are
    cached, so a rerun costs next to nothing. At most -mp fits run at once, and only as
    many as fit in --memory together (the command says how many)."""
    _check_memory(memory)
    C = list(Cs) or None
    if run_id is not None:
        if len(targets) != 1:
            raise UserError("with --run-id give exactly one SPEC file")
        for run in labelled(load_runs(targets[0], run_id, device)):
            _probe(finished_run(run, targets[0]), _modes(modes), not quiet, processes=processes,
                   memory=memory, solver=solver, prefix=prefix, latents_dir=latents_dir,
                   stream=stream, C=C)
        return
    if not targets:
        raise UserError("give SPEC --run-id ID, or latent directories (e.g. latent_datasets/)")
    if modes or latents_dir or stream:
        raise UserError("-d, --latents-dir and --stream go with SPEC --run-id; latent "
                        "directories carry their own downsampling")
    found = [m.parent for t in targets for m in sorted(Path(t).rglob(latents.MANIFEST))]
    damaged = [d for d in found if latents.read_manifest(d) is None]
    for directory in damaged:
        click.echo(f"warning: skipped {directory}: its {latents.MANIFEST} is damaged; extract "
                   f"those latents again", err=True)
    found = [d for d in found if d not in damaged]
    if not found:
        raise UserError(f"no complete latents (manifest.json) under {', '.join(targets)}")
    for directory in found:
        manifest = latents.read_manifest(directory)
        run = FinishedRun.from_directory(latents.source_run_dir(directory, manifest),
                                         plugins.LazyRegistries())
        analysis = Probes(run, analysis_params(run.run, "probes", Probes,
                                               downsampling=manifest["plan"]["mode"],
                                               processes=processes, memory=memory,
                                               solver=solver, prefix=prefix, C=C,
                                               stream=False),
                          source=directory, report=click.echo)
        with working_on(run.run.name):
            produce(analysis, progress=not quiet)
        click.echo(f"probes ({directory}): {analysis.outputs()[0]}")


@click.command("probe-run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="label of this repetition (part of every run path)")
@click.option("-mp", "processes", type=click.IntRange(min=1), default=None,
              help="worker processes fitting layers in parallel [default: 1]")
@click.option("--memory", default=None, help=_MEMORY_HELP)
@click.option("--solver", type=click.Choice(["torch", "sklearn"]), default=None, help=_SOLVER_HELP)
@click.option("-d", "--downsampling", "modes", multiple=True, help=_DOWNSAMPLING_HELP)
@click.option("--prefix", default=None, help="name outputs <prefix>_probe_performances.csv, …")
@click.option("--latents-dir", default=None,
              help="root of the latent datasets [default: latent_datasets/ next to logs_dir]")
@DEVICE_OPTION
@QUIET_OPTION
def probe_run(spec: str, run_id: str, processes: int | None, memory: str | None,
              solver: str | None, modes: tuple[str, ...], prefix: str | None,
              latents_dir: str | None, device: str | None, quiet: bool) -> None:
    """Train every run of SPEC (resuming / skipping as `labkit run` does), then extract
    its latents and fit the probes for each -d. A failed run is reported and skipped;
    the exit code is then 1."""
    from labkit import engine  # here: the other commands train nothing (no torchvision)

    _check_memory(memory)
    runs = load_runs(spec, run_id, device)
    check_device(runs[0].config["device"])
    failed = 0
    for i, run in enumerate(labelled(runs), 1):
        state = engine.train(run, plugins.registries(), run.config["device"], progress=not quiet)
        click.echo(f"[{i}/{len(runs)}] {state}: {run.directory}")
        if state == "failed":
            failed += 1
            continue
        _probe(FinishedRun(run, plugins.registries(), run.config["device"]), _modes(modes),
               not quiet, processes=processes, memory=memory, solver=solver, prefix=prefix,
               latents_dir=latents_dir)
    if failed:
        click.echo(f"{failed} run(s) failed; see status.json and error.txt in their "
                   f"directories", err=True)
        sys.exit(1)


COMMANDS: list[click.Command] = [receptive_field, extract, probes, probe_run]

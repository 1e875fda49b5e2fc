"""The ``labkit`` command line.

User mistakes raise :class:`labkit.errors.UserError`; :func:`main` prints its message
on one line (no traceback) and exits with code 2. A grid in which some run failed
exits with code 1 after every other run has had its turn.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pandas as pd

from labkit import plugins, runinfo
from labkit.commands import layers as layer_commands
from labkit.commands import evaluate as evaluate_commands
from labkit.commands import plot as plot_commands
from labkit.commands import report as report_commands
from labkit.commands import saturation as saturation_commands
from labkit.analyses import FinishedRun
from labkit.analyses.layerwise import Latents
from labkit.commands.common import check_device, load_runs
from labkit.errors import UserError
from labkit.identity import RunConfig, flatten, varying_keys
from labkit.launch import INVALID, RunTask, run_local, submit_array, submitit_folder
from labkit.spec import LauncherConfig
from labkit.spec import json_schema


SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="override a spec value: dotted key, JSON value (a list is a grid axis), "
         "e.g. --set optimizer.lr=0.01 --set 'seed=[0,1,2]'; repeatable")


def plan_table(runs: list[RunConfig]) -> pd.DataFrame:
    """One row per run: hash, readable name, and the values that vary across the grid."""
    keys = varying_keys([r.config for r in runs])
    rows = []
    for i, run in enumerate(runs, 1):
        flat = flatten(run.config)
        row = {"#": i, "hash": run.hash, "name": run.name, "status": _state(run)}
        row.update({k: flat.get(k, "-") for k in keys})
        rows.append(row)
    return pd.DataFrame(rows)


def _state(run: RunConfig) -> str:
    status = runinfo.training_state(run)
    return f"{status['state']}@{status.get('epoch', 0)}" if status else "new"


class LabkitGroup(click.Group):
    """Turns :class:`UserError` into one line on stderr and exit code 2, and a file
    system that refuses a write or read (disk full, read-only, permissions) into one
    line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}; free space or fix the "
                       f"permissions, then run the command again (finished work is kept)",
                       err=True)
            sys.exit(1)


@click.group(cls=LabkitGroup)
@click.version_option(package_name="labkit")
def cli() -> None:
    """labkit: spec grids of trained networks, measured layer by layer."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="label of this repetition (part of every run path)")
@click.option("--device", default=None, help="torch device (cpu, cuda:0); overrides the spec")
@click.option("--dry-run", is_flag=True, help="validate and show the runs, train nothing")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="train this many runs at once in local worker processes")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default=None,
              help="where runs execute (default: the spec's launcher, else local)")
@click.option("--partition", default=None, help="slurm partition")
@click.option("--gpus-per-task", type=click.IntRange(min=0), default=None, help="GPUs per run")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="CPU cores per run")
@click.option("--time", "time_min", type=click.IntRange(min=1), default=None,
              help="time limit per run in minutes; on timeout a run is requeued and resumes")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=None,
              help="array tasks running at once")
@click.option("--wait", is_flag=True, help="slurm: wait for the job array and report the states")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="processes that train each run together (one per GPU, or CPU processes); "
                   "the same as --set nproc=N")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads per run (the spec's threads, default 1; part of run "
                   "identity, as CPU results depend on it); the same as --set threads=N")
@SET_OPTION
def run(spec: str, run_id: str, device: str | None, dry_run: bool, quiet: bool,
        jobs: int | None, launcher: str | None, partition: str | None,
        gpus_per_task: int | None, cpus_per_task: int | None, time_min: int | None,
        array_parallelism: int | None, wait: bool, nproc: int | None, threads: int | None,
        overrides: tuple[str, ...]) -> None:
    """Train every run of SPEC; finished runs are skipped, unfinished ones resumed."""
    for key, value in (("nproc", nproc), ("threads", threads)):
        if value is not None:
            overrides = (*overrides, f"{key}={value}")
    runs = load_runs(spec, run_id, device, overrides)
    click.echo(plan_table(runs).to_string(index=False))
    if dry_run:
        for run in runs:
            for what, size in latent_plan(run):
                click.echo(f"{run.name}-{run.hash}: {what} will write {size / 1e6:,.1f} MB")
        click.echo(f"dry run: {len(runs)} run(s) validated, nothing trained")
        return
    overrides = {"name": launcher, "jobs": jobs, "partition": partition,
                 "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task,
                 "time": time_min, "array_parallelism": array_parallelism}
    settings = LauncherConfig.model_validate(
        {**runs[0].config["launcher"], **{k: v for k, v in overrides.items() if v is not None}})
    tasks = [RunTask(r.config, r.run_id, r.config["device"], progress=not quiet) for r in runs]

    def report(i: int, state: str) -> None:
        click.echo(f"[{i + 1}/{len(runs)}] {state}: {runs[i].directory}")

    if settings.name == "local":
        check_device(runs[0].config["device"])
        summarize(run_local(tasks, settings.jobs, report))
        return
    folder = submitit_folder(runs[0].config["logs_dir"], run_id)
    submitted = submit_array(tasks, settings, folder)
    click.echo(f"submitted {len(submitted)} task(s) as job array "
               f"{submitted[0].job_id.split('_')[0]}; submitit files in {folder}")
    if not wait:
        click.echo(f"follow them with: labkit status {spec} --run-id {run_id}")
        return
    states = []
    for i, job in enumerate(submitted):
        states.append(job.results()[0])  # a run on several tasks: rank 0 reports
        report(i, states[-1])
    summarize(states)


def latent_plan(run: RunConfig) -> list[tuple[str, int]]:
    """``(what, bytes)`` of every latent extraction the run's analyses will write."""
    finished = FinishedRun(run, plugins.registries())
    plans = []
    for spec in run.config["analyses"]:
        if spec["name"] not in ("latents", "probes"):
            continue
        params = {k: spec[k] for k in ("downsampling", "layers", "dtype", "latents_dir")
                  if k in spec}
        extraction = Latents(finished, Latents.Params(**params))
        plans.append((f"latents (downsampling {extraction.params.downsampling})",
                      extraction.planned_bytes()))
    return plans


def summarize(states: list[str]) -> None:
    """Print the count of each final state; exit with code 2 when a run hit a mistake in
    the input (its message was printed when it happened), else 1 when a run failed."""
    failed, invalid = states.count("failed"), states.count(INVALID)
    click.echo(f"{len(states)} run(s): {states.count('finished')} finished, "
               f"{states.count('skipped')} already finished, {failed} failed"
               + (f", {invalid} with a mistake in the input (see above)" if invalid else ""))
    if failed:
        click.echo("see `labkit status`, and error.txt in the failed run directories", err=True)
    if invalid or failed:
        sys.exit(2 if invalid else 1)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="the run-id the grid was run with")
@SET_OPTION
def status(spec: str, run_id: str, overrides: tuple[str, ...]) -> None:
    """Per run of SPEC: training finished / running / failed (reason) / not started, the
    epoch, and the state of each analysis that ran."""
    runs = load_runs(spec, run_id, overrides=overrides)
    rows = []
    for i, r in enumerate(runs, 1):
        st = runinfo.training_state(r)
        analyses = runinfo.read_analyses(r.directory)
        failed = [f"{label}: {a['reason']}" for label, a in analyses.items()
                  if a["state"] == "failed"]
        rows.append({"#": i, "hash": r.hash, "name": r.name,
                     "state": st.get("state", "not started"),
                     "epoch": f"{st.get('epoch', 0)}/{r.config['epochs']}",
                     "analyses": ", ".join(f"{label} {a['state']}"
                                           for label, a in analyses.items()) or "-",
                     "updated": st.get("updated", "-"),
                     "reason": "; ".join(filter(None, [st.get("reason"), *failed]))})
    table = pd.DataFrame(rows)
    click.echo(table.to_string(index=False))
    counts = table["state"].value_counts()
    click.echo(", ".join(f"{n} {state}" for state, n in counts.items()))
    if (table["state"] == "not started").all():
        known = sorted({p.name for r in runs if r.directory.parent.parent.is_dir()
                        for p in r.directory.parent.parent.iterdir() if p.is_dir()})
        click.echo(f"no run of {spec} has started under run-id {run_id!r}"
                   + (f"; run-ids found for its runs: {', '.join(known)}" if known else ""),
                   err=True)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", default="RUN_ID", show_default=True, help="run-id to show paths for")
@SET_OPTION
def plan(spec: str, run_id: str, overrides: tuple[str, ...]) -> None:
    """Print the runs of SPEC (hash, name, status, varying values) without running."""
    runs = load_runs(spec, run_id, overrides=overrides)
    click.echo(plan_table(runs).to_string(index=False))
    click.echo(f"{len(runs)} run(s) under {Path(runs[0].config['logs_dir'])}")


@cli.command()
def schema() -> None:
    """Print the JSON schema of a spec (for editor completion)."""
    click.echo(json.dumps(json_schema(), indent=2))


@cli.command("list")
@click.argument("kind")
@click.argument("pattern", default="*")
def list_(kind: str, pattern: str) -> None:
    """List registered names of KIND (models, datasets, optimizers, schedulers,
    metrics, methods, analyses) matching a wildcard PATTERN."""
    registry = plugins.registries()[kind]
    entries = [e for e in registry.entries() if e.name in registry.names(pattern)]
    for e in entries:
        params = ", ".join(f"{n}={_default_text(f)}" for n, f in e.params.model_fields.items())
        suffix = "<torchvision model name>" if e.prefix else ""
        click.echo(f"{e.name}{suffix}  [{e.plugin}]  {params}")
    if not entries:
        raise UserError(f"no {kind} match {pattern!r}; run `labkit list {kind}` for all names")


def _default_text(field) -> str:
    """A parameter's default as a user would write it in a spec (JSON)."""
    if field.is_required():
        return "<required>"
    value = field.default.model_dump(mode="json") if hasattr(field.default, "model_dump") \
        else field.default
    return json.dumps(value, default=str)


@cli.command("plugins")
def plugins_() -> None:
    """List loaded plugins with their distributions and versions."""
    pm = plugins.plugin_manager()
    for info in plugins.plugin_infos(pm):
        click.echo(f"{info.name}  {info.distribution} {info.version}")


@cli.command()
@click.argument("logs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="CSV file (default: stdout)")
@click.option("--run-id", "run_ids", multiple=True, help="only these run-ids (repeatable)")
@click.option("--table", "table_name", default="log", show_default=True,
              help="which table: log, probes, projection, receptive_field, evaluations, "
                   "saturation, or a plugin's (the stem of its CSV in the run directories)")
def results(logs: tuple[str, ...], output: str | None, run_ids: tuple[str, ...],
            table_name: str) -> None:
    """Every run under LOGS (default: logs/) as one tidy CSV: a table of each run (default
    its per-epoch log) with the run's hash, run-id and config values on every row."""
    from labkit.atomic import write_csv
    from labkit.results import collect

    table = collect([Path(p) for p in (logs or ("logs",))], run_ids,
                    on_damaged=lambda message: click.echo(f"warning: {message}", err=True),
                    table=table_name)
    if table.empty:
        raise UserError(f"no runs found under {', '.join(logs or ('logs',))}; "
                        f"train with `labkit run SPEC --run-id ID` first")
    if output:
        write_csv(output, table)
        click.echo(f"{len(table)} rows from {table['run_dir'].nunique()} run(s) -> {output}")
    else:
        table.to_csv(sys.stdout, index=False)


for command in [*saturation_commands.COMMANDS, *layer_commands.COMMANDS,
                *evaluate_commands.COMMANDS, *plot_commands.COMMANDS, *report_commands.COMMANDS]:
    cli.add_command(command)


def add_plugin_commands() -> None:
    """Add the commands plugins return from ``labkit_commands``."""
    for commands in plugins.plugin_manager().hook.labkit_commands():
        for command in commands:
            if command.name in cli.commands:
                raise UserError(f"a plugin adds the command {command.name!r}, which already "
                                f"exists; rename it in the plugin")
            cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    try:
        add_plugin_commands()
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    cli(prog_name="labkit")

"""``labkit run``: training a grid (``status`` and ``plan``, which need no torch, are
:mod:`labkit.cli.commands.status`).

Runs are shown by short labels of the values that vary across the grid
(:func:`labkit.store.identity.display_labels`); their directories keep the full readable name.
``run`` ends with a summary: each run's state, final eval metrics, failure reason and
directory, and the commands to look at the results.
"""
from __future__ import annotations

import shlex
import sys

import click
import pandas as pd

from labkit.analyses import FinishedRun
from labkit.analyses.layerwise import Latents
from labkit.cli import plugins
from labkit.cli.commands.analysis_common import progress_labels
from labkit.cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, SET_OPTION, check_devices,
                                        load_runs)
from labkit.cli.commands.status import labels, print_plan
from labkit.cli.launch import INVALID, RunTask, run_local, submit_array, submitit_folder
from labkit.core.errors import DamagedFile
from labkit.outputs.figure_sets import run_titles
from labkit.spec import LauncherConfig
from labkit.store import runinfo
from labkit.store.identity import RunConfig


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="label of this repetition (part of every run path)")
@DEVICE_OPTION
@click.option("--dry-run", is_flag=True, help="validate and show the runs, train nothing")
@QUIET_OPTION
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="train this many runs at once in local worker processes; each shows "
                   "its progress (one line per worker on a terminal, else lines "
                   "prefixed [worker k])")
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
    launch = {"name": launcher, "jobs": jobs, "partition": partition,
              "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task,
              "time": time_min, "array_parallelism": array_parallelism}
    settings = LauncherConfig.model_validate(
        {**runs[0].config["launcher"], **{k: v for k, v in launch.items() if v is not None}})
    if settings.name == "local":  # on a cluster the nodes' devices count, checked there
        check_devices(runs)
    print_plan(runs)
    if dry_run:
        for run in runs:
            for what, size in latent_plan(run):
                click.echo(f"{run.name}-{run.hash}: {what} will write {size / 1e6:,.1f} MB")
        click.echo(f"dry run: {len(runs)} run(s) validated, nothing trained")
        return
    titles = run_titles(runs)
    tasks = [RunTask(r.config, r.run_id, r.config["device"], progress=not quiet, label=label,
                     figure_title=titles[r.hash])
             for r, label in zip(runs, progress_labels(runs))]
    names = labels(runs)

    def report(i: int, state: str) -> None:
        click.echo(f"[{i + 1}/{len(runs)}] {names[i]}: {state}: {runs[i].directory}")

    next_steps = NextSteps(spec, run_id, overrides)
    if settings.name == "local":
        summarize(run_local(tasks, settings.jobs, report), runs, next_steps)
        return
    folder = submitit_folder(runs[0].config["logs_dir"], run_id)
    submitted = submit_array(tasks, settings, folder)
    click.echo(f"submitted {len(submitted)} task(s) as job array "
               f"{submitted[0].job_id.split('_')[0]}; submitit files in {folder}")
    if not wait:
        click.echo(f"follow them with: {next_steps.command('status')}")
        return
    states = []
    for i, job in enumerate(submitted):
        states.append(job.results()[0])  # a run on several tasks: rank 0 reports
        report(i, states[-1])
    summarize(states, runs, next_steps)


def latent_plan(run: RunConfig) -> list[tuple[str, int]]:
    """``(what, bytes)`` of every latent extraction the run's analyses will write."""
    finished = FinishedRun(run, plugins.registries())
    plans = []
    for spec in run.config["analyses"]:
        if spec["name"] not in ("latents", "probes") or spec.get("stream"):
            continue  # streamed probes write no latents
        params = {k: spec[k] for k in ("downsampling", "layers", "dtype", "latents_dir")
                  if k in spec}
        extraction = Latents(finished, Latents.Params(**params))
        plans.append((f"latents (downsampling {extraction.params.downsampling})",
                      extraction.planned_bytes()))
    return plans


class NextSteps:
    """The commands that look at a grid's results, with its spec, run-id and overrides."""

    def __init__(self, spec: str, run_id: str, overrides: tuple[str, ...] = ()) -> None:
        self.args = " ".join(shlex.quote(a) for a in
                             (spec, "--run-id", run_id,
                              *(x for o in overrides for x in ("--set", o))))
        self.run_id = run_id

    def command(self, name: str) -> str:
        return f"labkit {name} {self.args}"

    def lines(self, logs_dir: str) -> list[str]:
        results = (f"labkit results {shlex.quote(logs_dir)} --run-id {shlex.quote(self.run_id)} "
                   f"-o results.csv")
        return [f"  {self.command('status'):<60} # state and failure reasons per run",
                f"  {self.command('plot'):<60} # figures (PNG, SVG)",
                f"  {self.command('report'):<60} # one HTML page of the grid",
                f"  {results:<60} # every epoch of every run as one CSV"]


def final_metrics(run: RunConfig) -> str:
    """Loss and the first metric of every eval split in the last row of log.csv ("-"
    without a readable one)."""
    try:
        log = runinfo.read_log(run.directory)
    except DamagedFile:
        return "-"
    if log is None:
        return "-"
    last = {column: "" if pd.isna(value) else str(value)
            for column, value in log.iloc[-1].items()}
    metrics = run.config.get("metrics") or []
    first = metrics[0] if metrics else None
    metric = first.get("name") if isinstance(first, dict) else first
    parts = []
    for column in last:
        split = column.removesuffix("-loss")
        if column.endswith("-loss") and split != "train" and last[column] not in ("", None):
            text = f"{split} loss {_number(last[column])}"
            if metric and last.get(f"{split}-{metric}") not in (None, ""):
                text += f" {metric} {_number(last[f'{split}-{metric}'])}"
            parts.append(text)
    return ", ".join(parts) or "-"


def _number(text: str) -> str:
    try:
        return f"{float(text):.4f}"
    except ValueError:
        return text


def summary_table(runs: list[RunConfig], states: list[str]) -> pd.DataFrame:
    """One row per run: label, final state, final eval metrics, failure reason, directory."""
    rows = []
    for name, run, state in zip(labels(runs), runs, states):
        reason = runinfo.read_status(run.directory).get("reason") if state != "finished" \
            and state != "skipped" else None
        rows.append({"run": name, "state": state, "final eval": final_metrics(run),
                     "reason": reason or "-", "directory": str(run.directory)})
    return pd.DataFrame(rows)


def summarize(states: list[str], runs: list[RunConfig] | None = None,
              next_steps: NextSteps | None = None) -> None:
    """Print, with ``runs``, the closing summary (:func:`summary_table`) and the
    ``next_steps``, then the count of each final state; exit with code 2 when a run hit
    a mistake in the input (its message was printed when it happened), else 1 when a
    run failed."""
    if runs:
        click.echo("\n" + summary_table(runs, states).to_string(index=False))
        if next_steps is not None:
            click.echo("next:\n" + "\n".join(next_steps.lines(runs[0].config["logs_dir"])))
    failed, invalid = states.count("failed"), states.count(INVALID)
    click.echo(f"{len(states)} run(s): {states.count('finished')} finished, "
               f"{states.count('skipped')} already finished, {failed} failed"
               + (f", {invalid} with a mistake in the input (see above)" if invalid else ""))
    if failed:
        click.echo("see `labkit status`, and error.txt in the failed run directories", err=True)
    if invalid or failed:
        sys.exit(2 if invalid else 1)


COMMANDS: list[click.Command] = [run]

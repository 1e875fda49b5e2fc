"""One run from config to finished directory: train it (resuming, on one process or
several) unless its final checkpoint is intact, keep log.csv and the figures in step
with the checkpoint, then run its analyses."""
from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Collection, Iterator

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from labkit.core.errors import RunFailed, UserError
from labkit.core.registry import Registries
from labkit.engine.loop import train_run
from labkit.measures.saturation import SaturationConfig
from labkit.measures.spectra import saturation_view
from labkit.outputs.figure_sets import LOG_FIGURES, RUN_FIGURES_DIR, FigureFolder, run_jobs
from labkit.outputs.saturation_plot import plot_saturation
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.training import distributed
from labkit.training.build import build_component
from labkit.training.progress import relaying, track, working_on


def train(run: RunConfig, registries: Registries, device: str = "cpu",
          progress: bool = True, figure_title: str | None = None) -> str:
    """Train one run to completion (resuming when possible), then run its analyses.

    Returns ``"finished"``, ``"skipped"`` (training was already finished; incomplete
    analyses still run) or ``"failed"``; a failure is recorded with its reason in
    ``status.json`` and does not raise, so a grid goes on. User mistakes (missing
    dataset, …) raise :class:`~labkit.core.errors.UserError`. When another process is
    working on the run, this waits for it first.

    A run with ``nproc`` above 1 is trained by that many processes: started here like
    ``torchrun --standalone`` would, or, when this process is already one of them (a
    submitit job's tasks, torchrun), as that process's share (:func:`train_as_rank`).

    ``figure_title`` titles the run's own figures (:func:`draw_plots`); ``labkit run``
    gives the title ``labkit plot`` gives them in the run's grid
    (:func:`labkit.outputs.figure_sets.run_titles`), so that ``plot`` copies them.
    """
    with working_on(run.name, default=True):  # unless the caller named it shorter
        if distributed.started_as_rank(run.config["nproc"]):
            return train_as_rank(run, registries, device, progress, figure_title)
        with runinfo.exclusive(run.directory), intra_op_threads(run.config["threads"]):
            return _train_and_analyse(run, registries, device, progress, figure_title)


def train_as_rank(run: RunConfig, registries: Registries, device: str, progress: bool,
                  figure_title: str | None = None) -> str:
    """This process's share of a run whose ``nproc`` processes something else started:
    rank 0 holds the run's lock, decides whether it needs training, and afterwards runs
    the analyses alone; the others train and return ``"finished"`` (the run's state is
    rank 0's to report)."""
    device = distributed.init(device)
    try:
        with intra_op_threads(run.config["threads"]):
            if distributed.is_main():
                with runinfo.exclusive(run.directory):
                    distributed.gather(_final_state(run) is None)
                    return _train_and_analyse(run, registries, device, progress,
                                              figure_title)
            if distributed.gather(None)[0]:
                train_run(run, registries, torch.device(device), progress=False)
            return "finished"
    finally:
        distributed.shutdown()


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, then restore the previous count.

    CPU results depend on the count (it changes the order of floating-point sums), so
    the run's config fixes it: sequential, ``--jobs`` and resumed runs all agree.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_and_analyse(run: RunConfig, registries: Registries, device: str,
                       progress: bool, figure_title: str | None = None) -> str:
    run_dir = run.directory
    final = _final_state(run)
    runinfo.write_config(run_dir, run, registries.plugin_versions)  # or repair it
    if final is None:
        runinfo.write_status(run_dir, "running")
        try:
            if run.config["nproc"] > 1 and not distributed.active():
                # its processes cannot relay to a --jobs parent: quiet there
                train_on_processes(run, registries, device, progress and not relaying())
            else:
                train_run(run, registries, torch.device(device), progress)
            distributed.shutdown()  # analyses run in this process alone
        except UserError as exc:  # a mistake found only now (a missing dataset): recorded
            runinfo.write_status(run_dir, "failed", reason=str(exc))
            raise
        except KeyboardInterrupt:
            runinfo.write_status(run_dir, "interrupted", reason="stopped before finishing")
            raise
        except Exception as exc:  # any other failure ends this run only
            reason = str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
            runinfo.write_status(run_dir, "failed", reason=reason)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            return "failed"
        draw_plots(run, figure_title, redraw=True, progress=progress)
    elif sync_log(run, final["history"]):
        # the saturation columns were read anew
        draw_plots(run, figure_title, redraw=True, progress=progress)
    else:
        draw_plots(run, figure_title, progress=progress)
    if runinfo.read_status(run_dir).get("state") != "finished":
        runinfo.write_status(run_dir, "finished",
                             epoch=checkpoint.epoch_of(runinfo.final_checkpoint(run).name))
    failed = run_analyses(run, registries, device, progress=progress).failed
    draw_figures(run, figure_title, progress)  # and those of the analyses (tail, projection)
    if failed:
        return "failed"
    return "skipped" if final is not None else "finished"


def train_on_processes(run: RunConfig, registries: Registries, device: str,
                       progress: bool) -> None:
    """Train ``run`` with ``nproc`` processes (see :mod:`labkit.training.distributed`), started
    like ``torchrun --standalone``; this process holds the run's lock meanwhile and runs
    the analyses afterwards.

    Raises:
        UserError: the registries cannot be rebuilt in another process, or a process
            met a user mistake (its message).
        RunFailed: a process failed (the reason the run's status records).
    """
    if registries.rebuild is None:
        raise UserError("these registries hold components registered in this process only, "
                        "which other processes cannot see; train with nproc 1, or register "
                        "the plugin through an entry point")
    try:
        distributed.launch(_rank_main, run.config["nproc"], run.config, run.run_id, device,
                           progress, registries.rebuild)
    except ChildFailedError as exc:
        status = runinfo.read_status(run.directory)
        if status.get("state") == "failed" and status.get("reason"):
            if status.get("mistake"):
                raise UserError(status["reason"]) from None
            raise RunFailed(status["reason"]) from None
        first = next(iter(exc.failures.values()), None)
        raise RunFailed(f"a training process failed: {first.message if first else exc}") from None


@record
def _rank_main(config: dict[str, Any], run_id: str, device: str, progress: bool,
               rebuild: Callable[[], Registries]) -> None:
    """One process of a run on several: join the group, train, leave. Rank 0 records
    a failure's reason in the run's status (``mistake`` for a user mistake)."""
    run = RunConfig(config, run_id)
    try:
        device = distributed.init(device)
        with intra_op_threads(config["threads"]):
            train_run(run, rebuild(), torch.device(device), progress and distributed.is_main())
    except Exception as exc:  # noqa: BLE001 - recorded; the launcher reports the run failed
        if distributed.is_main():
            reason = str(exc) if isinstance(exc, (RunFailed, UserError)) else \
                f"{type(exc).__name__}: {exc}"
            runinfo.write_status(run.directory, "failed", reason=reason,
                                 mistake=isinstance(exc, UserError))
            if not isinstance(exc, UserError):
                (run.directory / "error.txt").write_text(traceback.format_exc())
        raise SystemExit(2 if isinstance(exc, UserError) else 1) from None
    finally:
        distributed.shutdown()


def _final_state(run: RunConfig) -> dict[str, Any] | None:
    """The verified final checkpoint of a trained run; ``None`` when the run is not
    trained (no final checkpoint, or a damaged one: the last epoch is then retrained
    from the previous checkpoint, which exact resume makes identical).

    Raises:
        UserError: the final checkpoint belongs to another run (copied files).
    """
    path = runinfo.final_checkpoint(run)
    if not path.exists():
        return None
    try:
        state = checkpoint.read(path)
    except ValueError as exc:
        print(f"{run.name}: final checkpoint unusable ({exc}); retraining its last epoch",
              file=sys.stderr, flush=True)
        return None
    checkpoint.check_owner(state, run.hash, path)
    return state


def sync_log(run: RunConfig, history: list[dict[str, Any]]) -> bool:
    """Rewrite log.csv from the checkpointed ``history`` (saturation columns read at the
    requested delta and rule) whenever the file on disk differs: missing, truncated, a
    crash before its last row, edited. Returns whether it was rewritten."""
    return runinfo.write_log(run, saturation_view(run.directory, history, run.config["saturation"]))


RUN_FIGURES_ENV = "LABKIT_RUN_FIGURES"


def draw_plots(run: RunConfig, title: str | None = None, redraw: bool = False,
               progress: bool = False) -> None:
    """The run's figures from log.csv, drawn after training rather than inside the epoch
    loop, so figures never slow training down: :func:`draw_figures` of those, and the
    per-epoch saturation plots (``plots/saturation_epoch_NNNN.png``), only missing
    ones unless ``redraw``. ``progress``: say which (:mod:`labkit.training.progress`).

    None is drawn while the environment sets ``LABKIT_RUN_FIGURES=0`` (large grids on a
    cluster, the test suite): the missing ones are drawn by the next ``labkit run`` of
    the spec without it."""
    if not draw_figures(run, title, progress, LOG_FIGURES):
        return
    config = run.config["saturation"]
    if config is None or "lsat" not in SaturationConfig.model_validate(config).stats:
        return
    plots = run.directory / RUN_FIGURES_DIR
    log = runinfo.read_log(run.directory)  # just synced with the final checkpoint's history
    todo = {}
    for _, row in log.iterrows() if log is not None else ():
        path = plots / f"saturation_epoch_{int(row['epoch']):04d}.png"
        if redraw or not path.exists():
            todo[path] = row
    for path in track(todo, "saturation plots", unit="figure", progress=progress,
                      label=lambda path: path.name):
        plot_saturation(todo[path], path, title or default_title(run), run.config)


def draw_figures(run: RunConfig, title: str | None = None, progress: bool = False,
                 only: Collection[str] | None = None) -> bool:
    """Draw the run's figures (:func:`labkit.outputs.figure_sets.run_jobs`: learning
    curves, saturation over epochs, …, tail pattern, projection curves; ``only`` those
    named) into its own figure folder (``plots/``), titled ``title`` (default
    :func:`default_title`), those whose inputs changed (a
    :class:`~labkit.outputs.figure_sets.FigureFolder`); ``False`` while
    ``LABKIT_RUN_FIGURES=0`` says to draw none."""
    if os.environ.get(RUN_FIGURES_ENV, "").strip() == "0":
        return False
    jobs = run_jobs(run, title or default_title(run))
    FigureFolder(run.directory / RUN_FIGURES_DIR).draw(
        [job for job in jobs if only is None or job.stem in only], progress=progress)
    return True


def default_title(run: RunConfig) -> str:
    """The title of the figures of a run trained outside a grid's ``labkit run``."""
    return f"run {run.name}"


class AnalysesRun(list):
    """Names of the analyses that ran; ``failed`` lists ``(label, reason)`` of failures."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str]] = []


def run_analyses(run: RunConfig, registries: Registries, device: str = "cpu",
                 progress: bool = True) -> AnalysesRun:
    """Run the spec's analyses on a trained run; returns the names of those that ran.

    An analysis whose outputs are complete is skipped. Each records its own state in
    ``analyses.json``; one that fails (any error but a user mistake, which raises) is
    recorded there with its reason, the others still run, and the training state stays
    as it is.
    """
    from labkit.analyses import FinishedRun

    finished = FinishedRun(run, registries, device)
    done = AnalysesRun()
    names = [spec["name"] for spec in run.config["analyses"]]
    for spec in run.config["analyses"]:
        analysis = build_component(registries, "analyses", spec, run=finished)
        label = spec["name"]
        if names.count(label) > 1:  # e.g. probes at two downsamplings: tell them apart
            label += " " + json.dumps({k: v for k, v in spec.items() if k != "name"},
                                      sort_keys=True)
        if analysis.is_complete():
            runinfo.confirm_analysis(run.directory, label)  # a damaged analyses.json is rebuilt
            continue
        try:
            analysis.produce(progress)
        except UserError as exc:
            runinfo.write_analysis_state(run.directory, label, "failed", str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, and the next analysis runs
            reason = f"{type(exc).__name__}: {exc}"
            print(f"error: {run.directory}: analysis {label} failed: {reason}",
                  file=sys.stderr, flush=True)
            runinfo.write_analysis_state(run.directory, label, "failed", reason)
            (run.directory / "error.txt").write_text(traceback.format_exc())
            done.failed.append((label, reason))
            continue
        runinfo.write_analysis_state(run.directory, label, "finished")
        done.append(spec["name"])
    return done



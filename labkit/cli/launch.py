"""Where the runs of a grid execute: this process, N local workers, or a job array.

Every launcher hands a worker a :class:`RunTask` — the run's resolved config (plain JSON
data and paths, never a pickled model) — and the worker trains it with
:func:`labkit.engine.train`, which resumes from the run's newest checkpoint. That is
also what makes cluster requeueing safe: a task stopped by a timeout or a preemption is
requeued by submitit unchanged and simply resumes.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit

from labkit.core.errors import UserError
from labkit.spec import LauncherConfig
from labkit.training import distributed
from labkit.training.progress import Board, relayed, working_on


@dataclass
class RunTask(submitit.helpers.Checkpointable):
    """Train one run in whatever process calls it; requeued unchanged on timeout.

    Attributes:
        config: the run's resolved config.
        run_id: the run-id.
        device: torch device.
        progress: show progress (:mod:`labkit.training.progress`): epochs, analyses.
        label: what progress calls the run (``cnn_s lr=0.1``); default its directory name.
        figure_title: the title of the run's own figures: the one ``labkit plot`` gives
            them in its grid (:func:`labkit.outputs.figure_sets.run_titles`), so that
            ``plot`` copies them instead of drawing them again.
    """

    config: dict[str, Any]
    run_id: str
    device: str
    progress: bool = False
    label: str = ""
    figure_title: str = ""

    def __call__(self) -> str:
        """Train the run; returns its state: ``finished``, ``skipped``, ``failed``, or
        ``invalid`` (a mistake in the input found only now, such as a missing dataset:
        the message is printed at once and recorded in status.json)."""
        from labkit import engine
        from labkit.cli import plugins
        from labkit.store.identity import RunConfig

        run = RunConfig(self.config, self.run_id)
        if self.config["nproc"] > 1:  # one of a job's nproc tasks: join the others
            os.environ.update(distributed.task_environment())
        try:
            with working_on(self.name()):
                return engine.train(run, plugins.registries(), self.device,
                                    progress=self.progress,
                                    figure_title=self.figure_title or None)
        except UserError as exc:
            print(f"error: {run.directory}: {exc}", file=sys.stderr, flush=True)
            return INVALID

    def name(self) -> str:
        """What progress calls the run: its label, else its directory name."""
        from labkit.store.identity import RunConfig

        return self.label or RunConfig(self.config, self.run_id).name

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on a timeout or preemption, before it requeues the task: the
        run's status says so (a requeued task resumes from its last checkpoint)."""
        from labkit.store import runinfo
        from labkit.store.identity import RunConfig

        runinfo.write_status(RunConfig(self.config, self.run_id).directory, "interrupted",
                             reason="stopped by the scheduler (time limit or preemption); "
                                    "requeued while requeues remain, else run the grid again")
        return super().checkpoint(*args, **kwargs)


INVALID = "invalid"


def run_local(tasks: list[RunTask], jobs: int,
              on_done: Callable[[int, str], None]) -> list[str]:
    """Run ``tasks`` in ``jobs`` worker processes (in this process when ``jobs`` is 1).

    Each task runs in a process of its own (spawned: forking a process that already
    initialised torch's thread pools or CUDA is unsafe), so a worker that dies (killed,
    out of memory) fails its run only: its status says so and the grid goes on.
    Workers relay their progress here (:func:`labkit.training.progress.relayed`), which a
    :class:`~labkit.training.progress.Board` shows: one line per worker on a terminal,
    else their lines prefixed ``[worker k]``; nothing for tasks without ``progress``.
    ``on_done(index, state)`` is called as each run ends, in completion order; the
    returned states are in task order.
    """
    if jobs == 1:
        states = []
        for i, task in enumerate(tasks):
            states.append(task())
            on_done(i, states[-1])
        return states
    context = multiprocessing.get_context("spawn")
    states: list[str] = [""] * len(tasks)
    waiting = list(enumerate(tasks))
    board = Board(min(jobs, len(tasks)), enabled=any(task.progress for task in tasks))
    running: dict[Any, _Worker] = {}  # sentinel -> worker
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                i, task = waiting.pop(0)
                slot = min(set(range(jobs)) - {w.slot for w in running.values()})
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_work, args=(task, send),
                                          name=f"labkit-run-{i}")
                process.start()
                send.close()
                running[process.sentinel] = _Worker(i, slot, process, receive)
                board.start(slot, task.name())
            ready = multiprocessing.connection.wait(
                [*running, *(w.receive for w in running.values() if w.open)])
            for worker in running.values():
                if worker.receive in ready:
                    worker.read(board)
            for sentinel in [s for s in ready if s in running]:
                worker = running.pop(sentinel)
                worker.process.join()
                while worker.open:  # what it sent before it ended
                    worker.read(board)
                i = worker.index
                states[i] = worker.state or _died(tasks[i], worker.process.exitcode)
                board.finish(worker.slot)
                with board.paused():
                    on_done(i, states[i])
    finally:
        board.close()
    return states


@dataclass
class _Worker:
    """A worker process of :func:`run_local`, running task ``index`` in place ``slot``."""

    index: int
    slot: int
    process: Any
    receive: Any  # its end of the pipe: progress events, then the run's state
    state: str | None = None
    open: bool = True

    def read(self, board: Board) -> None:
        """Take one message from the worker: a progress event (shown on ``board``) or
        its run's state; the end of the pipe closes it."""
        try:
            message = self.receive.recv()
        except (EOFError, OSError):  # it ended (or died) and all it sent is read
            self.open = False
            self.receive.close()
            return
        if isinstance(message, str):
            self.state = message
        else:
            board.show(self.slot, message)


def _work(task: RunTask, send: Any) -> None:
    """A worker process: train one run, relaying its progress, and send its state back.
    An error that escapes the engine (a file system refusing a status write) fails the
    run with one line.

    A spawned process inherits ``spawn`` as its default start method; the platform's
    default is restored, so that the run's data loader workers start as they would in a
    run trained alone (forked on Linux, not a fresh interpreter importing torch for every
    loader of every epoch: 6x slower for a small grid on CPU).
    """
    multiprocessing.set_start_method(None, force=True)
    try:
        with relayed(send.send):
            state = task()
    except Exception as exc:  # noqa: BLE001 - reported as one line, the grid goes on
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"error: {type(exc).__name__}: {exc}{where}", file=sys.stderr, flush=True)
        state = "failed"
    send.send(state)
    send.close()


def _died(task: RunTask, exitcode: int | None) -> str:
    """Record that the worker of ``task`` ended without reporting (signal, crash)."""
    from labkit.store import runinfo
    from labkit.store.identity import RunConfig

    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    reason = (f"its worker process died ({how}: killed, or out of memory); run the grid "
              f"again to resume it from its last checkpoint")
    directory = RunConfig(task.config, task.run_id).directory
    runinfo.write_status(directory, "failed", reason=reason)
    print(f"error: {directory}: {reason}", file=sys.stderr, flush=True)
    return "failed"


def submitit_folder(logs_dir: str, run_id: str) -> Path:
    """Where submitit keeps the job scripts, pickles and logs of a grid."""
    return Path(logs_dir) / ".submitit" / run_id


def submit_array(tasks: list[RunTask], launcher: LauncherConfig, folder: Path) -> list[Any]:
    """Submit ``tasks`` as one submitit job array (SLURM, or submitit's local executor).

    Returns the submitit jobs (``job.job_id``, ``job.result()``, ``job.stdout()``).
    """
    cluster = "local" if launcher.name == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster,
                                     slurm_max_num_timeout=launcher.max_requeues)
    params: dict[str, Any] = {"timeout_min": launcher.time, "cpus_per_task": launcher.cpus_per_task,
                              "name": "labkit"}
    if launcher.gpus_per_task:
        params["gpus_per_node"] = launcher.gpus_per_task
    if launcher.mem_gb is not None:
        params["mem_gb"] = launcher.mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = launcher.array_parallelism
        if launcher.partition:
            params["slurm_partition"] = launcher.partition
    nproc = {t.config["nproc"] for t in tasks}
    if len(nproc) > 1:
        raise UserError(f"the runs of one job array need the same nproc; this grid has "
                        f"{sorted(nproc)}: submit each nproc value as its own grid")
    if nproc != {1}:  # each array task runs nproc tasks on one node, one per process
        params["tasks_per_node"] = nproc.pop()
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(t) for t in tasks]  # progress as lines in the job's log
    return jobs

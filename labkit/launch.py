"""Where the runs of a grid execute: this process, N local workers, or a job array.

Every launcher hands a worker a :class:`RunTask` — the run's resolved config (plain JSON
data and paths, never a pickled model) — and the worker trains it with
:func:`labkit.engine.train`, which resumes from the run's newest checkpoint. That is
also what makes cluster requeueing safe: a task stopped by a timeout or a preemption is
requeued by submitit unchanged and simply resumes.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import submitit

from labkit.spec import LauncherConfig


@dataclass
class RunTask(submitit.helpers.Checkpointable):
    """Train one run in whatever process calls it; requeued unchanged on timeout.

    Attributes:
        config: the run's resolved config.
        run_id: the run-id.
        device: torch device.
        progress: show progress bars.
    """

    config: dict[str, Any]
    run_id: str
    device: str
    progress: bool = False

    def __call__(self) -> str:
        from labkit import engine, plugins
        from labkit.identity import RunConfig

        run = RunConfig(self.config, self.run_id)
        return engine.train(run, plugins.registries(), self.device, progress=self.progress)


def run_local(tasks: list[RunTask], jobs: int,
              on_done: Callable[[int, str], None]) -> list[str]:
    """Run ``tasks`` in ``jobs`` worker processes (in this process when ``jobs`` is 1).

    ``on_done(index, state)`` is called as each run ends, in completion order; the
    returned states are in task order.
    """
    if jobs == 1:
        states = []
        for i, task in enumerate(tasks):
            states.append(task())
            on_done(i, states[-1])
        return states
    # spawn, not fork: forking a process that already initialised torch's thread pools
    # (or CUDA) is unsafe
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(replace(t, progress=False)): i
                   for i, t in enumerate(tasks)}
        states: list[str] = [""] * len(tasks)
        for future in as_completed(futures):
            i = futures[future]
            states[i] = future.result()  # a UserError in a worker is re-raised here
            on_done(i, states[i])
    return states


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
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(replace(t, progress=False))
                for t in tasks]
    return jobs

"""Scale-out: local worker processes and submitit job arrays with requeue (no mocks)."""
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from submitit.local.local import LocalJobEnvironment

from labkit.cli import plugins
from labkit.cli.commands.common import load_runs
from labkit.cli.launch import RunTask, _work, submit_array, submitit_folder
from labkit.spec import LauncherConfig, expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import run_cli, run_here

GRID = {"model": "cnn_xs", "dataset": {"name": "digits", "augment": "flip_crop"},
        "batch_size": 64, "epochs": 2,
        "optimizer": {"name": "sgd", "lr": [0.05, 0.02]}, "seed": [0, 1]}


def final_weights(run_dir):
    epochs = checkpoint.epochs_on_disk(run_dir / "checkpoints")
    path = checkpoint.checkpoint_path(run_dir / "checkpoints", epochs[-1])
    return checkpoint.read(path)["modules"]["model"]


def weights_by_hash(logs):
    return {runinfo.read_config(p.parent)["hash"]: final_weights(p.parent)
            for p in logs.rglob(runinfo.CONFIG_JSON)}


def test_jobs_2_gives_the_same_runs_as_sequential(tmp_path):
    spec = tmp_path / "grid.json"
    grid = {**GRID, "dataset": {**GRID["dataset"], "subset": 512},  # two runs, one per worker
            "optimizer": {"name": "sgd", "lr": 0.05}}
    # the sequential process has torch's default of 2 threads, each worker 1: the runs'
    # own thread count decides, and worker processes do not change the augmentation
    for name, extra, threads, workers in (("seq", [], "2", 0), ("par", ["--jobs", "2"], "1", 1)):
        spec.write_text(json.dumps({**grid, "logs_dir": str(tmp_path / name),
                                    "num_workers": workers}))
        result = run_cli("run", str(spec), "--run-id", "J", "--quiet", *extra,
                         env={"OMP_NUM_THREADS": threads})
        assert result.returncode == 0, result.stderr
        assert "2 run(s): 2 finished" in result.stdout
    seq, par = weights_by_hash(tmp_path / "seq"), weights_by_hash(tmp_path / "par")
    assert seq.keys() == par.keys() and len(seq) == 2
    for run_hash, weights in seq.items():
        for key, tensor in weights.items():
            assert torch.equal(tensor, par[run_hash][key]), (run_hash, key)

    status = run_here("status", str(spec), "--run-id", "J")
    assert status.returncode == 0 and "2 finished" in status.stdout and "2/2" in status.stdout
    other = run_here("status", str(spec), "--run-id", "other")
    assert "2 not started" in other.stdout


def test_launcher_settings_come_from_the_spec_and_the_command_line_wins(tmp_path, write_spec):
    spec = write_spec({**GRID, "launcher": {"name": "local", "jobs": 3}})
    (run, *_) = load_runs(str(spec), "L")
    assert run.config["launcher"]["jobs"] == 3
    typo = write_spec({**GRID, "launcher": {"name": "slurm", "partiton": "gpu"}})
    result = run_here("run", str(typo), "--run-id", "L", "--dry-run")
    assert result.returncode == 2 and "did you mean 'partition'" in result.stderr.lower()


def test_submitit_task_interrupted_and_requeued_resumes_to_identical_weights(tmp_path):
    plugins.use()
    spec = {**GRID, "epochs": 6, "optimizer": {"name": "sgd", "lr": 0.05}, "seed": 0}
    reference_spec = tmp_path / "ref.json"
    reference_spec.write_text(json.dumps({**spec, "logs_dir": str(tmp_path / "ref")}))
    assert run_here("run", str(reference_spec), "--run-id", "S", "--quiet").returncode == 0

    array_spec = tmp_path / "array.json"
    array_spec.write_text(json.dumps({**spec, "logs_dir": str(tmp_path / "array")}))
    (run,) = load_runs(str(array_spec), "S")
    launcher = LauncherConfig(name="submitit-local", time=10, cpus_per_task=1)
    (job,) = submit_array([RunTask(run.config, "S", "cpu")], launcher,
                          submitit_folder(run.config["logs_dir"], "S"))
    ckpts = run.directory / "checkpoints"
    deadline = time.time() + 600  # generous: a loaded machine starts the task slowly
    # a complete checkpoint (a signal between the file and its digest leaves nothing to
    # resume from, rightly)
    while not checkpoint.saved_epochs(ckpts) and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.saved_epochs(ckpts), "the task wrote no checkpoint in time"
    assert checkpoint.epochs_on_disk(ckpts)[-1] < 6 and job.state == "RUNNING"
    # what SLURM does before a time limit: submitit's signal to the task process itself;
    # submitit's handler requeues the task and its controller starts it again
    controller = job._process.pid
    tasks = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert tasks, "submitit's task process not found"
    for pid in tasks:
        os.kill(int(pid), LocalJobEnvironment._usr_sig())
    assert job.result() == "finished"
    log = job.stdout() + job.stderr()
    assert "Requeued job" in log and log.count("Starting with JobEnvironment") == 2
    assert re.search(r"resuming after epoch [1-5]\b", log)  # from its checkpoint, not from scratch

    reference = final_weights(next((tmp_path / "ref").rglob(runinfo.CONFIG_JSON)).parent)
    resumed = final_weights(run.directory)
    for key, tensor in reference.items():
        assert torch.equal(tensor, resumed[key]), key
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert list(log["epoch"]) == [1, 2, 3, 4, 5, 6]


def test_two_processes_on_one_run_train_it_once(tmp_path, write_spec):
    spec = write_spec({**GRID, "optimizer": {"name": "sgd", "lr": 0.05}, "seed": 0})
    procs = [subprocess.Popen([sys.executable, "-m", "labkit", "run", str(spec), "--run-id", "T",
                               "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    summary = sorted(line for out in outs for line in out.splitlines() if "run(s):" in line)
    assert summary == ["1 run(s): 0 finished, 1 already finished, 0 failed",
                       "1 run(s): 1 finished, 0 already finished, 0 failed"]
    log = pd.read_csv(next((tmp_path / "logs").rglob(runinfo.LOG_CSV)))
    assert list(log["epoch"]) == [1, 2]


def test_a_second_process_says_it_waits_for_the_run_lock_and_epochs_are_reported(
        tmp_path, write_spec):
    spec = write_spec({**GRID, "optimizer": {"name": "sgd", "lr": 0.05}, "seed": 0})
    (config,) = expand(json.loads(spec.read_text()), plugins.registries())
    run = RunConfig(config, "W")
    with runinfo.exclusive(run.directory):
        proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(spec), "--run-id",
                                 "W"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stderr.readline()
        assert "waiting for another labkit process" in first and str(run.directory) in first
        assert proc.poll() is None  # still waiting while the lock is held
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    epochs = run.config["epochs"]
    for epoch in range(1, epochs + 1):
        assert f"epoch {epoch}/{epochs}: train loss" in err
    assert "eval loss" in err and "accuracy" in err


def test_jobs_with_probes_exits_as_soon_as_its_work_is_done(tmp_path, write_spec):
    """The probe worker pool is shut down with the runs: no process lingers after the
    summary (it used to hang for minutes)."""
    spec = write_spec({"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64,
                       "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}, "seed": [0, 1],
                       "analyses": [{"name": "probes", "downsampling": 2}]})
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(spec), "--run-id", "H",
                             "--jobs", "2", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    summary_at = None
    for line in proc.stdout:
        if "run(s):" in line:
            summary_at = time.monotonic()
    proc.wait(timeout=300)
    assert proc.returncode == 0 and summary_at is not None
    assert time.monotonic() - summary_at < 10, "the process lingered after its work was done"


class StartMethod:
    """A stand-in task that reports the start method its data loaders would use."""

    def __call__(self) -> str:
        return multiprocessing.get_start_method()


def test_a_jobs_worker_starts_its_loader_workers_as_a_run_alone_would():
    """A spawned worker inherits ``spawn``; its run's DataLoader workers would then import
    torch afresh for every loader of every epoch (a small grid 4x slower)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=_work, args=(StartMethod(), send))
    worker.start()
    send.close()
    messages = []
    while True:
        try:
            messages.append(receive.recv())
        except EOFError:
            break
    worker.join()
    assert messages[-1] == multiprocessing.get_start_method() != "spawn"

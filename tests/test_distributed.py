"""One run on two CPU processes (torch.distributed, gloo), started by `labkit run --nproc 2`
as torchrun would start them, or as the two tasks of a submitit job: the same log as one
process, the same numbers where the math is the same, and a kill -9 resumed bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from test_engine import assert_states_identical, final

from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import run_here

BASE = {"dataset": {"name": "digits"}, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05}, "scheduler": {"name": "cosine"}}


def write_spec(tmp_path, name, **fields):
    spec = {**BASE, "logs_dir": str(tmp_path / name / "logs"), **fields}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path, spec


def run_of(registries, spec, run_id):
    (config,) = expand(spec, registries)
    return RunConfig(config, run_id)


def test_two_processes_without_batch_statistics_compute_what_one_process_computes(
        registries, tmp_path):
    # random crops too: each sample is augmented as in the one-process run, wherever
    # its shard is loaded
    fields = {"model": "mlp_s", "epochs": 2, "saturation": {},
              "dataset": {"name": "digits", "augment": "crop"}}
    one_path, one_spec = write_spec(tmp_path, "one", **fields)
    two_path, two_spec = write_spec(tmp_path, "two", **fields)
    assert run_here("run", str(one_path), "--run-id", "A", "--quiet").returncode == 0
    # the cluster path: a submitit job of two tasks (SLURM's tasks per node), here run by
    # submitit's local executor; the kill test below covers the torchrun-style path
    result = run_here("run", str(two_path), "--run-id", "A", "--quiet", "--nproc", "2",
                      "--launcher", "submitit-local", "--wait")
    assert result.returncode == 0, result.stderr
    assert "1 finished" in result.stdout
    one = run_of(registries, one_spec, "A")
    two = run_of(registries, {**two_spec, "nproc": 2}, "A")
    assert one.hash != two.hash  # the process count is identity above 1
    assert runinfo.read_config(two.directory)["config"]["nproc"] == 2
    # the gradients of the global batch are the same up to the order of float sums
    a, b = final(one)["modules"]["model"], final(two)["modules"]["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    log_one = pd.read_csv(one.directory / runinfo.LOG_CSV)
    log_two = pd.read_csv(two.directory / runinfo.LOG_CSV)
    assert list(log_one.columns) == list(log_two.columns)
    # train loss, metrics and saturation summed over both processes' shards
    for column in log_one.columns:
        if column != "epoch_seconds":
            assert log_two[column].to_numpy() == pytest.approx(
                log_one[column].to_numpy(), rel=1e-4, abs=1e-4), column


def test_two_process_run_killed_with_sigkill_resumes_bit_identical(registries, tmp_path):
    fields = {"model": "cnn_xs", "epochs": 3, "saturation": {}}  # BatchNorm: buffers shared
    ref_path, ref_spec = write_spec(tmp_path, "ref", **fields)
    result = run_here("run", str(ref_path), "--run-id", "R", "--quiet", "--nproc", "2")
    assert result.returncode == 0, result.stderr
    reference = run_of(registries, {**ref_spec, "nproc": 2}, "R")

    killed_path, killed_spec = write_spec(tmp_path, "killed", **fields)
    killed = run_of(registries, {**killed_spec, "nproc": 2}, "R")
    ckpt_dir = killed.directory / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(killed_path),
                             "--run-id", "R", "--quiet", "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    # a complete checkpoint: killed between the file and its digest, it would rightly
    # start over, and "resuming after epoch" below would not be printed
    while not checkpoint.saved_epochs(ckpt_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the next epoch
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    assert checkpoint.epochs_on_disk(ckpt_dir)[-1] < 3
    assert runinfo.read_status(killed.directory)["state"] == "running"
    result = run_here("run", str(killed_path), "--run-id", "R", "--quiet", "--nproc", "2")
    assert result.returncode == 0, result.stderr
    # the second segment resumed after a checkpoint (its processes' stderr is their own)
    (first, resumed) = runinfo.read_provenance(killed.directory)
    assert first["first_epoch"] == 1 and 1 < resumed["first_epoch"] <= 3
    assert_states_identical(final(reference), final(killed))
    ref_log = pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    res_log = pd.read_csv(killed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    pd.testing.assert_frame_equal(ref_log, res_log)
    assert len(final(killed)["rng_ranks"]) == 2  # each process's random streams resumed


def test_a_batch_that_does_not_split_over_the_processes_is_a_clear_error(tmp_path):
    path, _ = write_spec(tmp_path, "odd", model="mlp_s", epochs=1, batch_size=63)
    result = run_here("run", str(path), "--run-id", "A", "--quiet", "--nproc", "2")
    assert result.returncode == 2
    assert "divisible by nproc 2" in result.stderr and "Traceback" not in result.stderr

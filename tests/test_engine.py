"""The training engine end to end on the embedded digits data, no mocks."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef

from labkit import engine
from labkit.analyses import FinishedRun
from labkit.engine.run import RUN_FIGURES_ENV
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import run_here
from labkit.training.build import build_component

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05}, "scheduler": {"name": "cosine"}}


def make_run(registries, tmp_path, run_id="A", base=TINY, **overrides):
    """The one run of ``base`` with ``overrides``, logged under ``tmp_path``."""
    spec = {**base, "logs_dir": str(tmp_path / "logs"), **overrides}
    (config,) = expand(spec, registries)
    return RunConfig(config, run_id)


def final(run):
    """The checkpoint the run finished with (``runinfo.final_checkpoint``)."""
    return checkpoint.read(runinfo.final_checkpoint(run))


def final_state(run):
    epochs = checkpoint.epochs_on_disk(run.directory / "checkpoints")
    return checkpoint.read(checkpoint.checkpoint_path(run.directory / "checkpoints", epochs[-1]))


def assert_states_identical(a, b):
    for name in a["modules"]:
        for key, tensor in a["modules"][name].items():
            assert torch.equal(tensor, b["modules"][name][key]), f"{name}.{key} differs"
    flat_a = [t for s in a["optimizer"]["state"].values() for t in s.values()
              if isinstance(t, torch.Tensor)]
    flat_b = [t for s in b["optimizer"]["state"].values() for t in s.values()
              if isinstance(t, torch.Tensor)]
    assert len(flat_a) == len(flat_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))


def test_run_logs_match_an_independent_evaluation_of_the_saved_model(registries, tmp_path,
                                                                     run_figures):
    run = make_run(registries, tmp_path, epochs=2)
    assert engine.train(run, registries, progress=False) == "finished"

    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert list(log["epoch"]) == [1, 2]
    for split in ("train", "eval"):
        for metric in ("loss", "accuracy", "top5_accuracy", "mcc", "balanced_accuracy"):
            assert f"{split}-{metric}" in log.columns
    assert log["lr"].iloc[0] == 0.05 and log["lr"].iloc[1] < 0.05  # cosine schedule stepped

    state = torch.load(checkpoint.checkpoint_path(run.directory / "checkpoints", 2),
                       weights_only=True)
    data = build_component(registries, "datasets", run.config["dataset"])
    model = build_component(registries, "models", run.config["model"], num_classes=10,
                                   in_channels=1, resolution=8)
    model.load_state_dict(state["modules"]["model"])
    model.eval()
    images = torch.stack([x for x, _ in data.evals["eval"]])
    labels = np.array([y for _, y in data.evals["eval"]])
    with torch.no_grad():
        logits = model(images)
    pred = logits.argmax(1).numpy()
    last = log.iloc[-1]
    assert last["eval-accuracy"] == pytest.approx((pred == labels).mean(), abs=1e-12)
    assert last["eval-mcc"] == pytest.approx(matthews_corrcoef(labels, pred), abs=1e-9)
    assert last["eval-balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, pred), abs=1e-9)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
    assert last["eval-loss"] == pytest.approx(loss, rel=1e-5)
    assert last["eval-accuracy"] > 0.5  # it learned something in two epochs

    status = runinfo.read_status(run.directory)
    assert status["state"] == "finished" and status["epoch"] == 2
    for figure in ("learning_curves.png", "learning_curves.svg"):  # drawn after training
        assert (run.directory / "plots" / figure).stat().st_size > 1000
    info = runinfo.read_config(run.directory)
    assert info["hash"] == run.hash and info["plugins"]["labkit"]
    compute = json.loads((run.directory / runinfo.COMPUTE_JSON).read_text())
    assert compute["parameters"] == sum(p.numel() for p in model.parameters())
    assert compute["flops_per_image"] > 0
    assert compute["training_flops"] == 3 * compute["flops_per_image"] * len(data.train) * 2

    finished = FinishedRun.from_directory(run.directory, registries)
    assert finished.directory == run.directory and finished.run.hash == run.hash
    assert torch.equal(finished.model.state_dict()["block1.conv1.weight"],
                       state["modules"]["model"]["block1.conv1.weight"])

    mtime = (run.directory / runinfo.LOG_CSV).stat().st_mtime_ns
    assert engine.train(run, registries, progress=False) == "skipped"
    assert (run.directory / runinfo.LOG_CSV).stat().st_mtime_ns == mtime


def test_without_run_figures_a_run_draws_none_and_the_next_run_draws_them(registries, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv(RUN_FIGURES_ENV, "0")
    run = make_run(registries, tmp_path, epochs=1)
    assert engine.train(run, registries, progress=False) == "finished"
    assert not (run.directory / "plots").exists()
    monkeypatch.setenv(RUN_FIGURES_ENV, "1")
    assert engine.train(run, registries, progress=False) == "skipped"
    for figure in ("learning_curves.png", "learning_curves.svg"):
        assert (run.directory / "plots" / figure).stat().st_size > 1000


def test_kill_9_at_random_points_then_resume_is_bit_identical(registries, tmp_path):
    epochs = 6
    reference = make_run(registries, tmp_path / "ref", epochs=epochs)
    assert engine.train(reference, registries, progress=False) == "finished"

    spec = {**TINY, "epochs": epochs, "logs_dir": str(tmp_path / "killed" / "logs")}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    killed = make_run(registries, tmp_path / "killed", run_id="K", epochs=epochs)
    ckpt_dir = killed.directory / "checkpoints"
    rng = random.Random(1234)
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(spec_path),
                                 "--run-id", "K", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = checkpoint.epochs_on_disk(ckpt_dir)[-1:]
        deadline = time.time() + 120
        while (checkpoint.epochs_on_disk(ckpt_dir)[-1:] == seen and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next epoch (or its save)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert runinfo.read_status(killed.directory)["state"] == "running"  # it really died
    assert checkpoint.epochs_on_disk(ckpt_dir)[-1] < epochs
    result = run_here("run", str(spec_path), "--run-id", "K", "--quiet")
    assert result.returncode == 0, result.stderr
    assert_states_identical(final_state(reference), final_state(killed))
    ref_log = pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    res_log = pd.read_csv(killed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    pd.testing.assert_frame_equal(ref_log, res_log)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(registries, tmp_path):
    reference = make_run(registries, tmp_path / "ref", epochs=3)
    engine.train(reference, registries, progress=False)

    run = make_run(registries, tmp_path / "dmg", epochs=3)
    engine.train(run, registries, progress=False)
    newest = checkpoint.checkpoint_path(run.directory / "checkpoints", 3)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still a readable zip, wrong weights
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="epoch_0003.pt"):
        assert checkpoint.load_latest(run.directory / "checkpoints")["epoch"] == 2

    (run.directory / runinfo.STATUS_JSON).unlink()  # as if it died before finishing
    with pytest.warns(UserWarning, match="falling back"):
        assert engine.train(run, registries, progress=False) == "finished"
    assert_states_identical(final_state(reference), final_state(run))


def test_diverging_run_fails_with_its_reason_and_the_grid_goes_on(tmp_path, write_spec):
    spec = write_spec({**TINY, "epochs": 2, "optimizer": {"name": "sgd", "lr": [0.05, 1e12]}})
    result = run_here("run", str(spec), "--run-id", "D", "--quiet")
    assert result.returncode == 1
    assert "1 finished" in result.stdout and "1 failed" in result.stdout
    states = {}
    for status in (tmp_path / "logs").rglob(runinfo.STATUS_JSON):
        config = runinfo.read_config(status.parent)["config"]
        states[config["optimizer"]["lr"]] = json.loads(status.read_text())
    assert states[0.05]["state"] == "finished"
    assert states[1e12]["state"] == "failed"
    assert "non-finite training loss" in states[1e12]["reason"]


def test_results_table_is_tidy_and_filterable(tmp_path, write_spec):
    spec = write_spec({**TINY, "epochs": 2, "seed": [0, 1]})
    assert run_here("run", str(spec), "--run-id", "R", "--quiet").returncode == 0
    out = tmp_path / "results.csv"
    result = run_here("results", str(tmp_path / "logs"), "-o", str(out), "--run-id", "R")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert len(table) == 4 and set(table["config.seed"]) == {0, 1}
    assert set(table["state"]) == {"finished"} and table["run_hash"].nunique() == 2
    assert {"epoch", "eval-accuracy", "config.optimizer.lr"} <= set(table.columns)
    none = run_here("results", str(tmp_path / "logs"), "--run-id", "nope")
    assert none.returncode == 2 and "no runs found" in none.stderr

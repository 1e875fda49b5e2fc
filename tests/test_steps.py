"""The engine's step clock: mid-epoch checkpoints resumed exactly, the step budget,
per-step warm-up and weight decay, checkpoint retention, channels_last — real runs on
the embedded digits data, killed with SIGKILL where a crash is the point."""
import functools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import test_engine as engine_tests
import torch
from test_engine import TINY, assert_states_identical, final

from labkit import engine
from labkit.methods import Method, RunContext
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import ADDED_LATER, run_hash
from labkit.testing import run_here
from labkit.training import optimizers as optim
from labkit.training.build import build_component
from labkit.training.epoch import channels_last
from labkit.training.metrics import METRICS
from labkit.training.schedules import Schedule, value_at
from labkit.training.stepper import Stepper

STEPPED = {**TINY, "batch_size": 32, "accumulate": 2, "scheduler_interval": "step",
           "scheduler": {"name": "cosine", "warmup_steps": 3}, "saturation": {},
           "method": {"name": "supervised", "label_smoothing": 0.1}}


make_run = functools.partial(engine_tests.make_run, base=STEPPED)


def log_of(run):
    return pd.read_csv(run.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")


def test_killed_mid_epoch_and_resumed_ends_bit_identical_to_a_run_never_interrupted(
        registries, tmp_path):
    epochs = 3
    reference = make_run(registries, tmp_path / "ref", epochs=epochs)
    assert engine.train(reference, registries, progress=False) == "finished"

    spec = {**STEPPED, "epochs": epochs, "checkpoint_steps": 2,
            "logs_dir": str(tmp_path / "killed" / "logs")}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    killed = make_run(registries, tmp_path / "killed", run_id="K", epochs=epochs,
                      checkpoint_steps=2)
    assert killed.hash == reference.hash  # mid-epoch checkpoints are not identity
    ckpt_dir = killed.directory / "checkpoints"
    rng = random.Random(7)
    resumed_mid_epoch = 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(spec_path),
                                 "--run-id", "K", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        before = checkpoint.partials_on_disk(ckpt_dir)[-1:]
        deadline = time.time() + 120
        while (checkpoint.partials_on_disk(ckpt_dir)[-1:] in (before, [])
               and proc.poll() is None and time.time() < deadline):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # between two mid-epoch saves, or inside one
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        resumed_mid_epoch += "batches" in err and "resuming epoch" in err
    assert runinfo.read_status(killed.directory)["state"] == "running"
    result = run_here("run", str(spec_path), "--run-id", "K")
    assert result.returncode == 0, result.stderr
    resumed_mid_epoch += "resuming epoch" in result.stderr
    assert resumed_mid_epoch >= 2, "the kills should have left mid-epoch checkpoints to resume"
    assert_states_identical(final(reference), final(killed))
    pd.testing.assert_frame_equal(log_of(reference), log_of(killed))
    assert checkpoint.partials_on_disk(ckpt_dir) == []  # the last epoch's removed them


def test_a_damaged_mid_epoch_checkpoint_falls_back_to_the_epoch_checkpoint(registries, tmp_path):
    run = make_run(registries, tmp_path, epochs=2, checkpoint_steps=1)
    ckpt_dir = run.directory / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    reference = make_run(registries, tmp_path / "ref", epochs=2)
    engine.train(reference, registries, progress=False)
    state = checkpoint.read(checkpoint.checkpoint_path(reference.directory / "checkpoints", 1))
    checkpoint.save(ckpt_dir, 1, state)
    damaged = checkpoint.partial_path(ckpt_dir, 30)
    damaged.write_bytes(b"half a checkpoint")
    damaged.with_name(damaged.name + ".sha256").write_text("0" * 64 + "\n")
    with pytest.warns(UserWarning, match="partial_00000030.pt is unusable"):
        assert checkpoint.load_latest(ckpt_dir)["epoch"] == 1
    assert engine.train(run, registries, progress=False) == "finished"
    assert_states_identical(final(reference), final(run))


class Stopped(Exception):
    """Raised in place of a kill, right after a mid-epoch checkpoint is written whole."""


@pytest.mark.parametrize("every, stop_after, expected", [
    (25, 50, [25, 50, 75, 100, 125]),  # and a resume keeps the schedule
    (60, None, [60, 120]),  # more steps than an epoch has
])
def test_checkpoint_steps_counts_the_runs_optimizer_steps(
        registries, tmp_path, monkeypatch, every, stop_after, expected):
    # 1437 digits in batches of 32: 45 optimizer steps an epoch, 135 in 3 epochs; a step
    # that ends an epoch (45, 90, 135) gets the epoch's checkpoint, no partial
    run = engine_tests.make_run(registries, tmp_path, model="mlp_s", batch_size=32, epochs=3,
                                checkpoint_steps=every)
    written, save_partial = [], checkpoint.save_partial

    def recording(directory, step, state):
        path = save_partial(directory, step, state)
        written.append(step)
        if step == stop_after:
            raise Stopped
        return path

    monkeypatch.setattr(checkpoint, "save_partial", recording)
    if stop_after is not None:
        assert engine.train(run, registries, progress=False) == "failed"
        assert checkpoint.partials_on_disk(run.directory / "checkpoints")
    assert engine.train(run, registries, progress=False) == "finished"
    assert final(run)["step"] == 135
    assert written == expected  # resumed from the partial of step 50, not the epoch's start


def steps_per_epoch(registries):
    (config,) = expand(STEPPED, registries)
    train = build_component(registries, "datasets", config["dataset"]).train
    batches = len(train) // STEPPED["batch_size"] + (len(train) % STEPPED["batch_size"] > 1)
    return math.ceil(batches / STEPPED["accumulate"])


def test_the_step_budget_ends_training_mid_epoch_and_marks_the_final_checkpoint(
        registries, tmp_path):
    per_epoch = steps_per_epoch(registries)
    budget = per_epoch + per_epoch // 2  # one and a half epochs
    run = make_run(registries, tmp_path, epochs=5, steps=budget)
    assert engine.train(run, registries, progress=False) == "finished"
    assert final(run)["step"] == budget
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert list(log["epoch"]) == [1, 2]
    assert runinfo.final_checkpoint(run).name == "epoch_0002.pt"
    assert runinfo.read_status(run.directory)["epoch"] == 2
    assert runinfo.is_trained(run)
    assert engine.train(run, registries, progress=False) == "skipped"

    # a budget past the last epoch changes nothing but the identity
    whole = make_run(registries, tmp_path / "whole", epochs=2)
    long = make_run(registries, tmp_path / "long", epochs=2, steps=10_000)
    assert whole.hash != long.hash
    for r in (whole, long):
        assert engine.train(r, registries, progress=False) == "finished"
    assert_states_identical(final(whole), final(long))


def test_warm_up_counts_optimizer_steps_and_epochs_under_a_per_step_schedule():
    param = torch.nn.Parameter(torch.zeros(1))

    def lrs(**params):
        opt = torch.optim.SGD([param], lr=1.0)
        schedule = optim.cosine(opt, **params)
        rates = []
        for _ in range(params["epochs"]):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        return rates

    by_steps = lrs(epochs=40, warmup_steps=8, warmup_start=0.2, steps_per_epoch=4)
    assert by_steps[:9] == pytest.approx([0.2 + 0.8 * k / 8 for k in range(9)])
    after = by_steps[8:]
    assert after == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 32)) for k in range(32)])
    # two warm-up epochs of four steps are the same eight steps
    assert lrs(epochs=40, warmup_epochs=2, warmup_start=0.2, steps_per_epoch=4) == \
        pytest.approx(by_steps)
    # milestones and step sizes stay in epochs when the schedule steps per optimizer step
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = optim.step(opt, epochs=40, step_size=3, gamma=0.5, steps_per_epoch=4)
    rates = []
    for _ in range(13):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates == [1.0] * 12 + [0.5]


def test_warm_up_in_steps_needs_a_per_step_schedule(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**TINY, "epochs": 1, "logs_dir": str(tmp_path / "logs"),
                                "scheduler": {"name": "cosine", "warmup_steps": 5}}))
    result = run_here("run", str(spec), "--run-id", "A", "--dry-run")
    assert result.returncode == 2
    assert "scheduler_interval" in result.stderr and "Traceback" not in result.stderr


def test_weight_decay_follows_its_schedule_per_step(registries, tmp_path):
    schedule = {"shape": "cosine", "start": 0.04, "end": 0.4}
    run = make_run(registries, tmp_path, epochs=2, weight_decay_schedule=schedule)
    assert engine.train(run, registries, progress=False) == "finished"
    state = final(run)
    total = state["step"]
    decay = state["optimizer"]["param_groups"][0]["weight_decay"]
    per_epoch = total // 2
    assert decay == pytest.approx(value_at(Schedule(**schedule), total - 1, per_epoch, total))
    assert decay != pytest.approx(0.04) and decay > 0.39
    plain = make_run(registries, tmp_path / "plain", epochs=2)
    engine.train(plain, registries, progress=False)
    assert not torch.equal(final(plain)["modules"]["model"]["fc.weight"],
                           state["modules"]["model"]["fc.weight"])


def test_keep_checkpoints_keeps_the_newest_epochs(registries, tmp_path):
    run = make_run(registries, tmp_path, epochs=5, keep_checkpoints=3, saturation=None)
    engine.train(run, registries, progress=False)
    assert checkpoint.epochs_on_disk(run.directory / "checkpoints") == [3, 4, 5]


def test_channels_last_trains_the_same_network_in_another_layout(registries, tmp_path):
    plain = make_run(registries, tmp_path / "plain", epochs=2, saturation=None)
    fast = make_run(registries, tmp_path / "cl", epochs=2, saturation=None, channels_last=True)
    assert plain.hash != fast.hash
    for r in (plain, fast):
        assert engine.train(r, registries, progress=False) == "finished"
    a, b = final(plain)["modules"]["model"], final(fast)["modules"]["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-3), key
    batch = channels_last([torch.zeros(2, 3, 4, 5), torch.zeros(2)])
    assert batch[0].is_contiguous(memory_format=torch.channels_last)


def test_settings_added_later_keep_existing_run_hashes_at_their_neutral_values(registries):
    (config,) = expand(TINY, registries)
    before = {k: v for k, v in config.items() if k not in ADDED_LATER}
    assert run_hash(config) == run_hash(before)
    assert run_hash({**config, "channels_last": True}) != run_hash(config)
    assert run_hash({**config, "checkpoint_steps": 5}) == run_hash(config)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_states_add_up_to_the_joined_pass(name):
    torch.manual_seed(0)
    logits, targets = torch.randn(60, 10), torch.randint(0, 10, (60,))
    whole, first, second = (METRICS[name](10) for _ in range(3))
    whole.update(logits, targets)
    first.update(logits[:25], targets[:25])
    second.update(logits[25:], targets[25:])
    joined = {k: first.state_dict()[k] + second.state_dict()[k] for k in first.state_dict()}
    resumed = METRICS[name](10)
    resumed.load_state_dict(joined)
    assert resumed.compute() == whole.compute()
    resumed.load_state_dict(first.state_dict())
    resumed.update(logits[25:], targets[25:])
    assert resumed.compute() == whole.compute()


def test_a_weight_decay_schedule_leaves_a_group_built_without_decay_at_zero():
    model = torch.nn.Linear(3, 2)
    context = RunContext({}, model, None, torch.device("cpu"), Path("."), None)
    context.steps_per_epoch, context.total_steps = 4, 8
    method = Method(context, Method.Params())
    optimizer = torch.optim.SGD([{"params": [model.weight]},
                                 {"params": [model.bias], "weight_decay": 0.0}],
                                lr=0.1, weight_decay=1e-4)
    schedule = {"shape": "linear", "start": 0.1, "end": 0.5}
    stepper = Stepper(optimizer, [model.weight, model.bias], 1, None, "32",
                             torch.device("cpu"), method, schedule)
    for _ in range(3):
        stepper.backward(model(torch.ones(2, 3)).sum(), 2)
        stepper.step()
    assert context.step == 3
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.1 + 0.4 * 2 / 7)
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_the_device_loader_trains_what_the_dataloader_trains_and_resumes_mid_epoch(
        registries, tmp_path):
    plain = make_run(registries, tmp_path / "torch", epochs=2, saturation=None)
    device = make_run(registries, tmp_path / "device", epochs=2, saturation=None,
                      data_loader="device")
    assert plain.hash != device.hash
    for r in (plain, device):
        assert engine.train(r, registries, progress=False) == "finished"
    # digits are normalised only: the device path draws the same batches, bit for bit
    assert_states_identical(final(plain), final(device))

    # augmented on the device, killed mid-epoch, resumed: the run never interrupted
    augmented = {"dataset": {"name": "digits", "augment": "flip_crop"}, "epochs": 2,
                 "data_loader": "device"}
    reference = make_run(registries, tmp_path / "ref", **augmented)
    engine.train(reference, registries, progress=False)
    spec = {**STEPPED, **augmented, "checkpoint_steps": 1,
            "logs_dir": str(tmp_path / "killed" / "logs")}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    killed = make_run(registries, tmp_path / "killed", run_id="K", checkpoint_steps=1,
                      **augmented)
    ckpt_dir = killed.directory / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(path), "--run-id", "K",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # a second mid-epoch checkpoint written whole: an intact one exists whenever it dies
    while ((checkpoint.partials_on_disk(ckpt_dir)[-1:] or [0])[0] < 2
           and proc.poll() is None and time.time() < deadline):
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = run_here("run", str(path), "--run-id", "K")
    assert result.returncode == 0, result.stderr
    assert "resuming epoch" in result.stderr
    assert_states_identical(final(reference), final(killed))
    pd.testing.assert_frame_equal(log_of(reference), log_of(killed))


def test_compile_trains_the_network_eager_mode_trains(registries, tmp_path):
    """torch.compile through inductor (needs a C++ compiler): close to eager, same keys."""
    eager = make_run(registries, tmp_path / "eager", epochs=1, steps=4, saturation=None,
                     scheduler=None, accumulate=1)
    compiled = make_run(registries, tmp_path / "compiled", epochs=1, steps=4, saturation=None,
                        scheduler=None, accumulate=1, compile=True)
    for r in (eager, compiled):
        assert engine.train(r, registries, progress=False) == "finished"
    a, b = final(eager)["modules"]["model"], final(compiled)["modules"]["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key


def test_checkpoint_minutes_writes_mid_epoch_checkpoints_by_time_and_resumes_exactly(
        registries, tmp_path, monkeypatch):
    from labkit.methods.supervised import Supervised

    reference = make_run(registries, tmp_path / "ref", epochs=2)
    engine.train(reference, registries, progress=False)
    run = make_run(registries, tmp_path / "timed", epochs=2, checkpoint_minutes=1e-9)
    assert run.hash == reference.hash
    original = Supervised.training_step

    def interrupted(self, batch):  # stopped in the middle of the second epoch
        if self.context.step == self.context.steps_per_epoch + 3:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Supervised, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.train(run, registries, progress=False)
    partials = checkpoint.partials_on_disk(run.directory / "checkpoints")
    assert partials == [steps_per_epoch(registries) + 3]  # the newest only, by time
    monkeypatch.setattr(Supervised, "training_step", original)
    assert engine.train(run, registries, progress=False) == "finished"
    assert_states_identical(final(reference), final(run))
    pd.testing.assert_frame_equal(log_of(reference), log_of(run))

"""Teacher updates (EMA, frozen, previous epoch), BatchNorm modes, and the exact resume."""
import math

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.api import build_component, checkpoint, runinfo, train
from labkit_dino.method import Dino


def snapshot(net):
    return {n: p.detach().clone() for n, p in net.dino_parameters()}


def one_step(method, batch_size=64):
    """Train one batch as the engine does, with plain SGD; returns the batch."""
    method.train(True)
    batch = next(iter(DataLoader(method.train_dataset(method.context.data.train),
                                 batch_size=batch_size)))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    result = method.training_step(batch)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    method.after_step()
    return batch


def test_ema_update_follows_the_formula_with_the_scheduled_momentum(dino_method):
    schedule = {"shape": "linear", "start": 0.5, "end": 0.9}
    method = dino_method(teacher_mode="ema", teacher_momentum=schedule,
                         student_init="random", freeze_last_layer_epochs=0, clip_grad=0)
    method.step = 7  # momentum at step 7 of the run
    m = 0.5 + 0.4 * 7 / (method.total_steps - 1)
    teacher_before = snapshot(method.teacher)
    one_step(method)
    student_after = snapshot(method.student)
    assert method.step == 8
    moved = 0
    for name, t in snapshot(method.teacher).items():
        expected = m * teacher_before[name] + (1 - m) * student_after[name]
        assert torch.allclose(t, expected, rtol=1e-6, atol=1e-7), name
        moved += not torch.equal(t, teacher_before[name])
    assert moved > 0
    # probes are not part of the average
    probe = method.teacher.network.fc.weight
    assert torch.equal(probe, torch.zeros_like(probe))


def test_batchnorm_from_student_moves_with_the_weights_from_data_stays_teachers(dino_method):
    method = dino_method(teacher_mode="ema", teacher_momentum=0.75, teacher_bn="from_student",
                         teacher_eval=True, student_init="random")
    (name, teacher_bn), = method.teacher.batch_norms()[:1]
    before = teacher_bn.running_mean.clone()
    one_step(method)
    student_bn = dict(method.student.batch_norms())[name]
    assert torch.allclose(teacher_bn.running_mean, 0.75 * before + 0.25 * student_bn.running_mean)
    assert not method.teacher.training  # teacher_eval

    frozen_stats = dino_method(teacher_mode="no_update", teacher_eval=True)
    stats = frozen_stats.teacher.batch_norms()[0][1].running_mean.clone()
    one_step(frozen_stats)
    assert torch.equal(frozen_stats.teacher.batch_norms()[0][1].running_mean, stats)

    from_data = dino_method(teacher_mode="no_update", teacher_eval=False)
    one_step(from_data)  # the teacher ran in train mode: its statistics come from the batch
    assert not torch.equal(from_data.teacher.batch_norms()[0][1].running_mean, stats)


def weights(state, prefix=""):
    """Encoder and head parameters of a checkpointed state dict (no buffers, no probe)."""
    skip = ("running_", "num_batches_tracked", "center")
    probe = (prefix + "fc.", prefix + "network.fc.")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
            and not k.startswith(probe) and not any(s in k for s in skip)}


def test_frozen_teacher_never_changes_and_prev_epoch_teacher_copies_the_student(
        dino_run, dino_registries):
    frozen = dino_run(epochs=2, teacher_mode="no_update", student_init="random", probe_every=0,
                      subset=400)
    copies = dino_run(epochs=2, teacher_mode="prev_epoch", teacher_update_every=2,
                      student_init="random", probe_every=0, subset=400)
    for run in (frozen, copies):
        assert train(run, dino_registries, progress=False) == "finished"

    def modules(run, epoch):
        return checkpoint.read(checkpoint.checkpoint_path(run.directory / "checkpoints",
                                                          epoch))["modules"]
    first, last = weights(modules(frozen, 1)["teacher"]), weights(modules(frozen, 2)["teacher"])
    assert first.keys() == last.keys() and len(first) > 4
    assert all(torch.equal(t, first[k]) for k, t in last.items())
    student_2 = modules(frozen, 2)["model"]
    assert not torch.equal(student_2["block1.conv1.weight"], last["network.block1.conv1.weight"])

    one, two = modules(copies, 1), modules(copies, 2)
    assert all(torch.equal(t, first[k]) for k, t in weights(one["teacher"]).items())  # not yet
    # after epoch 2 the teacher is the student: encoder ...
    student = weights(two["model"])
    assert student.keys() and all(torch.equal(two["teacher"][f"network.{k}"], v)
                                  for k, v in student.items())
    # ... and head
    assert all(torch.equal(two["teacher"][f"head.{k}"], v) for k, v in weights(two["head"]).items())


def test_ema_run_resumed_after_interruption_is_bit_identical(dino_run, dino_registries,
                                                             monkeypatch):
    method = {"teacher_mode": "ema", "crops": "2x8+2x4", "crop_augment": "dino",
              "student_init": "interpolated", "init_alpha": 0.5, "clip_grad": 1.0,
              "teacher_center_momentum": {"shape": "linear", "start": 0.8, "end": 0.95},
              "probe_every": 1}
    reference = dino_run(epochs=3, batch_size=100, subset=400, logs="ref", **method)
    assert train(reference, dino_registries, progress=False) == "finished"

    resumed = dino_run(epochs=3, batch_size=100, subset=400, logs="res", **method)
    original = Dino.training_step

    def interrupted(self, batch):
        if self.step == 2 * self.steps_per_epoch + 2:  # mid-way through epoch 3
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Dino, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, dino_registries, progress=False)
    assert runinfo.read_status(resumed.directory)["state"] == "interrupted"
    monkeypatch.setattr(Dino, "training_step", original)
    assert train(resumed, dino_registries, progress=False) == "finished"

    path = checkpoint.checkpoint_path
    want = checkpoint.read(path(reference.directory / "checkpoints", 3))
    got = checkpoint.read(path(resumed.directory / "checkpoints", 3))
    assert set(got["modules"]) == {"model", "head", "teacher"}
    for name in want["modules"]:
        for key, tensor in want["modules"][name].items():
            assert torch.equal(tensor, got["modules"][name][key]), (name, key)
    steps = 3 * steps_per_epoch(resumed, dino_registries)
    assert got["method"] == want["method"] == {"step": steps}
    want_log = pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    got_log = pd.read_csv(resumed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    pd.testing.assert_frame_equal(want_log, got_log)


def steps_per_epoch(run, registries):
    n = len(build_component(registries, "datasets", run.config["dataset"]).train)
    return math.ceil(n / run.config["batch_size"])

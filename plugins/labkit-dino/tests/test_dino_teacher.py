"""Teacher updates (EMA, frozen, previous epoch), BatchNorm modes, and the exact resume."""
import io

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.api import checkpoint, runinfo, train
from labkit_dino.method import Dino


def snapshot(net):
    return {n: p.detach().clone() for n, p in net.dino_parameters()}


def one_step(method, batch_size=64, batch=None):
    """Train one batch in the engine's order, with plain SGD; returns the batch."""
    method.train(True)
    if batch is None:
        batch = next(iter(DataLoader(method.train_dataset(method.context.data.train),
                                     batch_size=batch_size)))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    result = method.training_step(batch)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    method.before_optimizer_step()
    optimizer.step()
    method.after_step()
    method.context.step += 1  # the engine's clock
    return batch


def test_ema_update_follows_the_formula_with_the_scheduled_momentum(dino_method):
    schedule = {"shape": "linear", "start": 0.5, "end": 0.9}
    method = dino_method(teacher_mode="ema", teacher_momentum=schedule,
                         student_init="random", freeze_last_layer_epochs=0)
    context = method.context  # the engine's clock: step 7 of 40
    context.step, context.steps_per_epoch, context.total_steps = 7, 10, 40
    m = 0.5 + 0.4 * 7 / 39
    teacher_before = snapshot(method.teacher)
    one_step(method)
    student_after = snapshot(method.student)
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


def test_method_state_round_trip_mid_epoch_keeps_the_loss_sums(dino_method):
    def made():
        method = dino_method(teacher_mode="ema", student_init="random", probe_every=0)
        method.context.steps_per_epoch, method.context.total_steps = 10, 20
        return method
    running, restored = made(), made()
    loader = iter(DataLoader(running.train_dataset(running.context.data.train),
                             batch_size=50))
    batches = [next(loader) for _ in range(3)]
    for batch in batches[:2]:
        one_step(running, batch=batch)
    # what a mid-epoch checkpoint holds, through torch's safe loader
    buffer = io.BytesIO()
    torch.save({"method": running.state_dict(),
                "modules": {k: m.state_dict() for k, m in running.modules().items()}}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored.load_state_dict(state["method"])
    for name, module in restored.modules().items():
        module.load_state_dict(state["modules"][name])
    restored.context.step = running.context.step
    assert state["method"]["seen"] == 100 and set(state["method"]["loss_sums"]) >= {"CE", "KL"}
    for method in (running, restored):
        one_step(method, batch=batches[2])
    want, got = running.end_epoch(1), restored.end_epoch(1)
    assert got == want and want["dino-ce"] > 0
    assert running.state_dict() == {"loss_sums": {}, "seen": 0}  # an epoch's end resets them


def test_old_method_state_with_its_own_step_counter_still_loads(dino_method):
    method = dino_method()
    method.load_state_dict({"step": 30})  # checkpoints before the engine's step clock
    assert method.state_dict() == {"loss_sums": {}, "seen": 0}


@pytest.mark.parametrize("checkpoint_steps", [None, 1])
def test_ema_run_resumed_after_interruption_is_bit_identical(dino_run, dino_registries,
                                                             monkeypatch, checkpoint_steps):
    # checkpoint_steps 1: the resume starts from the mid-epoch checkpoint, so the epoch's
    # loss sums (logged as dino-*) must come back from the method's state
    method = {"teacher_mode": "ema", "crops": "2x8+2x4", "crop_augment": "dino",
              "student_init": "interpolated", "init_alpha": 0.5,
              "teacher_center_momentum": {"shape": "linear", "start": 0.8, "end": 0.95},
              "probe_every": 1}
    top = {"clip_grad_norm": 1.0, "checkpoint_steps": checkpoint_steps}
    reference = dino_run(epochs=3, batch_size=100, subset=400, logs="ref", top=top, **method)
    assert train(reference, dino_registries, progress=False) == "finished"

    resumed = dino_run(epochs=3, batch_size=100, subset=400, logs="res", top=top, **method)
    original = Dino.training_step

    def interrupted(self, batch):
        if self.context.step == 2 * self.context.steps_per_epoch + 2:  # mid-way, epoch 3
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Dino, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, dino_registries, progress=False)
    assert runinfo.read_status(resumed.directory)["state"] == "interrupted"
    partials = checkpoint.partials_on_disk(resumed.directory / "checkpoints")
    assert bool(partials) == (checkpoint_steps is not None)
    monkeypatch.setattr(Dino, "training_step", original)
    assert train(resumed, dino_registries, progress=False) == "finished"

    path = checkpoint.checkpoint_path
    want = checkpoint.read(path(reference.directory / "checkpoints", 3))
    got = checkpoint.read(path(resumed.directory / "checkpoints", 3))
    assert set(got["modules"]) == {"model", "head", "teacher"}
    for name in want["modules"]:
        for key, tensor in want["modules"][name].items():
            assert torch.equal(tensor, got["modules"][name][key]), (name, key)
    assert got["method"] == want["method"] == {"loss_sums": {}, "seen": 0}
    want_log = pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    got_log = pd.read_csv(resumed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    pd.testing.assert_frame_equal(want_log, got_log)

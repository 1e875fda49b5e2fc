"""Mixup / cutmix for every method (the spec's ``batch_augment``): the mixed batch and its
soft targets, the supervised loss on them, run identity, a refusing method, and a
supervised run with mixup killed mid-epoch and resumed bit for bit."""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import test_engine as engine_tests
import torch
import torch.nn.functional as F
from test_engine import TINY, assert_states_identical, final

from labkit import engine
from labkit.core.errors import UserError
from labkit.data.mixing import BatchMixer, hard_labels, mix_images, mix_targets
from labkit.methods import Method, RunContext, StepResult
from labkit.methods.supervised import Supervised
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import run_here
from labkit.training.build import build_component

MIXED = {**TINY, "batch_size": 32, "epochs": 1, "method": {"name": "supervised",
                                                              "label_smoothing": 0.1},
         "batch_augment": {"name": "mixup", "alpha": 0.4}}


make_run = functools.partial(engine_tests.make_run, base=MIXED)


def test_mixup_is_the_convex_combination_of_each_image_and_its_partner_drawn_from_torch():
    images = torch.randn(8, 3, 5, 5)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    mixed, perm, lam = mix_images(images, "mixup", 0.4)
    assert sorted(perm.tolist()) == list(range(8)) and 0 < lam < 1
    for i in range(8):
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[perm[i]],
                              atol=1e-6)
    torch.set_rng_state(state)  # the same draws from torch's generator: the same batch
    again, perm_again, lam_again = mix_images(images, "mixup", 0.4)
    assert torch.equal(again, mixed) and torch.equal(perm_again, perm) and lam_again == lam


@pytest.mark.parametrize("shape", [(12, 12), (9, 14)])
def test_cutmix_pastes_one_box_of_the_partner_whose_area_is_one_minus_lambda(shape):
    torch.manual_seed(0)
    # every image a distinct constant: each pixel tells which image it came from
    images = torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, *shape)
    for _ in range(20):
        mixed, perm, lam = mix_images(images, "cutmix", 1.0)
        for i in range(6):
            if perm[i] == i:
                continue
            from_partner = mixed[i, 0] == images[perm[i], 0, 0, 0]
            kept = mixed[i, 0] == images[i, 0, 0, 0]
            assert bool((from_partner | kept).all())
            assert int(from_partner.sum()) == round((1 - lam) * shape[0] * shape[1])
            rows, cols = from_partner.any(1).nonzero(), from_partner.any(0).nonzero()
            if len(rows):  # a rectangle: its bounding box is all partner
                box = from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
                assert bool(box.all())
            assert torch.equal(mixed[i, 1], mixed[i, 0])  # the same box in every channel


def test_soft_targets_mix_the_labels_with_the_images_and_sum_to_one():
    images, labels = torch.randn(16, 1, 4, 4), torch.randint(0, 5, (16,))
    index = torch.arange(16)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    mixer = BatchMixer([{"name": "mixup", "alpha": 0.3}, {"name": "cutmix", "alpha": 1.0}], 5)
    mixed, soft, passed = mixer((images, labels, index))
    assert passed is index and soft.shape == (16, 5)
    assert torch.allclose(soft.sum(1), torch.ones(16))
    # replay the draws: the choice, then λ and π of that augmentation
    torch.set_rng_state(state)
    kind = ("mixup", "cutmix")[int(torch.randint(2, ()))]
    expected, perm, lam = mix_images(images, kind, {"mixup": 0.3, "cutmix": 1.0}[kind])
    assert torch.equal(mixed, expected)
    onehot = F.one_hot(labels, 5).float()
    assert torch.allclose(soft, lam * onehot + (1 - lam) * onehot[perm])
    assert torch.equal(hard_labels(soft), soft.argmax(1))
    # a list draws both kinds over the batches
    kinds = set()
    for _ in range(30):
        state = torch.get_rng_state()
        kinds.add(int(torch.randint(2, ())))
        torch.set_rng_state(state)
        mixer((images, labels))
    assert kinds == {0, 1}


def test_prob_zero_leaves_the_batch_unmixed_with_one_hot_targets():
    images, labels = torch.randn(6, 1, 3, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = BatchMixer({"name": "cutmix", "prob": 0.0}, 3)((images, labels))
    assert torch.equal(mixed, images)
    assert torch.equal(soft, F.one_hot(labels, 3).float())
    assert torch.equal(hard_labels(labels), labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_supervised_loss_on_soft_targets_is_the_lambda_weighted_cross_entropy(
        registries, tmp_path, smoothing):
    run = make_run(registries, tmp_path, method={"name": "supervised",
                                                 "label_smoothing": smoothing})
    data = build_component(registries, "datasets", run.config["dataset"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    context = RunContext(run.config, model, data, torch.device("cpu"), tmp_path, registries)
    method = Supervised(context, Supervised.Params(label_smoothing=smoothing))
    images = torch.stack([data.train[i][0] for i in range(8)])
    labels = torch.tensor([data.train[i][1] for i in range(8)])
    torch.manual_seed(2)
    mixed, perm, lam = mix_images(images, "mixup", 0.4)
    result = method.training_step((mixed, mix_targets(labels, perm, lam, 10)))
    logits = model(mixed)
    expected = (lam * F.cross_entropy(logits, labels, label_smoothing=smoothing)
                + (1 - lam) * F.cross_entropy(logits, labels[perm], label_smoothing=smoothing))
    assert torch.allclose(result.loss, expected, atol=1e-6)


def test_batch_augment_is_identity_only_when_set_and_a_list_of_lists_is_an_axis(registries):
    (plain,) = expand(TINY, registries)
    (off,) = expand({**TINY, "batch_augment": None}, registries)
    (mixup,) = expand({**TINY, "batch_augment": {"name": "mixup"}}, registries)
    assert RunConfig(plain, "A").hash == RunConfig(off, "A").hash  # old runs keep their hash
    assert RunConfig(mixup, "A").hash != RunConfig(plain, "A").hash
    assert mixup["batch_augment"] == {"name": "mixup", "alpha": 0.2, "prob": 1.0}
    both = [{"name": "mixup"}, {"name": "cutmix"}]
    (one_point,) = expand({**TINY, "batch_augment": both}, registries)  # one per batch
    assert [a["name"] for a in one_point["batch_augment"]] == ["mixup", "cutmix"]
    grid = expand({**TINY, "batch_augment": {"name": "mixup", "alpha": [0.2, 0.4]}}, registries)
    assert [c["batch_augment"]["alpha"] for c in grid] == [0.2, 0.4]
    assert len(expand({**TINY, "batch_augment": [[{"name": "mixup"}], both]}, registries)) == 2
    with pytest.raises(UserError, match="batch_augment"):
        expand({**TINY, "batch_augment": {"name": "mixpu"}}, registries)


class HardLabelsOnly(Method):
    """A method whose step needs integer labels (it indexes with them)."""

    def training_step(self, batch):
        images, targets = batch
        logits = self.context.model(images)
        return StepResult(F.nll_loss(logits.log_softmax(1), targets), len(targets), logits,
                          targets)


def test_a_method_that_cannot_take_soft_targets_is_refused_before_training(
        registries, tmp_path):
    registries.methods.register("hard_only", HardLabelsOnly)
    # when the grid is validated (plan, run --dry-run), before any run starts
    with pytest.raises(UserError, match="batch_augment: method 'hard_only' does not accept "
                                        "the soft targets.*batch_augment to null"):
        make_run(registries, tmp_path, method="hard_only")
    # and by the engine for a config that did not come through the spec
    run = make_run(registries, tmp_path, batch_augment=None, method="hard_only")
    config = {**run.config, "batch_augment": {"name": "mixup", "alpha": 0.2, "prob": 1.0}}
    with pytest.raises(UserError, match="'hard_only' does not accept the soft targets"):
        engine.train(RunConfig(config, "M"), registries, progress=False)
    assert not list(RunConfig(config, "M").directory.glob("checkpoints/*.pt"))


def test_supervised_with_mixup_trains_and_resumes_bit_identically_after_a_mid_epoch_kill(
        registries, tmp_path):
    reference = make_run(registries, tmp_path / "ref")
    assert engine.train(reference, registries, progress=False) == "finished"
    unmixed = make_run(registries, tmp_path / "plain", batch_augment=None)
    assert engine.train(unmixed, registries, progress=False) == "finished"
    log = pd.read_csv(reference.directory / runinfo.LOG_CSV)
    # mixing changes what is learnt, and the train metrics score the soft targets' argmax
    mixed_w, plain_w = final(reference)["modules"]["model"], final(unmixed)["modules"]["model"]
    assert any(not torch.equal(mixed_w[k], plain_w[k]) for k in mixed_w)
    assert log["train-accuracy"].between(0, 1).all() and log["eval-accuracy"].iloc[-1] > 0.5

    spec = {**MIXED, "checkpoint_steps": 1, "logs_dir": str(tmp_path / "killed" / "logs")}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    killed = make_run(registries, tmp_path / "killed", run_id="K", checkpoint_steps=1)
    assert killed.hash == reference.hash
    ckpt_dir = killed.directory / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "run", str(path), "--run-id", "K",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while ((checkpoint.partials_on_disk(ckpt_dir)[-1:] or [0])[0] < 5
           and proc.poll() is None and time.time() < deadline):
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not checkpoint.epochs_on_disk(ckpt_dir)  # killed inside the first epoch
    result = run_here("run", str(path), "--run-id", "K")
    assert result.returncode == 0, result.stderr
    assert "resuming epoch 1 after" in result.stderr
    assert_states_identical(final(reference), final(killed))
    pd.testing.assert_frame_equal(log.drop(columns="epoch_seconds"),
                                  pd.read_csv(killed.directory / runinfo.LOG_CSV)
                                  .drop(columns="epoch_seconds"))

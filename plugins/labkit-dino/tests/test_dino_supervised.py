"""Supervised comparison runs: label targets, label noise and logit noise."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from labkit.api import UserError
from labkit_dino.targets import NoisyTargets


def labelled(n=1000, classes=10):
    labels = torch.arange(n) % classes
    return TensorDataset(torch.zeros(n, 1), labels)


def test_label_noise_relabels_the_chosen_share_of_samples_once():
    base = labelled()
    noisy = NoisyTargets(base, num_classes=10, num_outputs=10, label_noise=0.3, seed=1)
    chosen = (noisy.random_labels >= 0).nonzero().flatten()
    assert len(chosen) == 300
    got = torch.tensor([noisy[i][1] for i in range(len(base))])
    true = base.tensors[1]
    assert torch.equal(got[chosen], noisy.random_labels[chosen])
    keep = torch.ones(len(base), dtype=torch.bool)
    keep[chosen] = False
    assert torch.equal(got[keep], true[keep])
    assert 0.8 * 270 < (got != true).sum() < 1.2 * 270  # a random label is right 1 time in 10
    again = NoisyTargets(base, 10, 10, label_noise=0.3, seed=1)
    assert torch.equal(again.random_labels, noisy.random_labels)


def test_logit_noise_targets_have_norm_one_over_temperature():
    noisy = NoisyTargets(labelled(), num_classes=10, num_outputs=64, logit_temp=0.25, seed=0)
    targets = torch.stack([noisy[i][1] for i in range(1000)])
    assert targets.shape == (1000, 64)
    assert targets.norm(dim=1).mean().item() == pytest.approx(4.0, rel=0.05)
    assert torch.equal(noisy[3][1], noisy[3][1])  # fixed per sample


def test_resampled_noise_changes_at_every_access_from_torchs_rng():
    noisy = NoisyTargets(labelled(), 10, 10, label_noise=1.0, resample=True)
    torch.manual_seed(0)
    first = [noisy[i][1] for i in range(50)]
    second = [noisy[i][1] for i in range(50)]
    torch.manual_seed(0)
    assert first != second and first == [noisy[i][1] for i in range(50)]


def test_supervised_loss_is_the_cross_entropy_of_the_student_logits(dino_method):
    method = dino_method(student_mode="supervised", out_dim=10, student_temp=0.5,
                         student_init="random", freeze_last_layer_epochs=0)
    dataset = method.train_dataset(method.context.data.train)
    views, labels = next(iter(DataLoader(dataset, batch_size=32)))
    method.train(True)
    result = method.training_step((views, labels))
    _, projections = method.student(views)
    expected = F.cross_entropy(projections[0] / 0.5, labels)
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)

    noisy = dino_method(student_mode="supervised", out_dim=16, logit_noise_temp=0.1)
    views, targets = next(iter(DataLoader(noisy.train_dataset(noisy.context.data.train),
                                          batch_size=8)))
    assert targets.shape == (8, 16)
    assert math.isfinite(noisy.training_step((views, targets)).loss.item())


def test_inconsistent_settings_are_spec_errors(dino_run):
    with pytest.raises(UserError, match="student_mode 'supervised'"):
        dino_run(label_noise=0.2)
    with pytest.raises(UserError, match="teacher_eval"):
        dino_run(teacher_bn="from_student")
    with pytest.raises(UserError, match="no pair"):
        dino_run(pairing="opposite")  # one view
    with pytest.raises(UserError, match="crop spec"):
        dino_run(crops="2x")
    with pytest.raises(UserError, match="temperature must be positive"):
        dino_run(student_temp=0)
    with pytest.raises(UserError, match="teacher_modee"):
        dino_run(teacher_modee="ema")
    with pytest.raises(UserError, match="method.teacher_mode"):
        dino_run(teacher_mode="emma")

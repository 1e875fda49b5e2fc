"""Teacher and student initialisation: seeds, and every student init against its formula."""
import math

import pytest
import torch

from labkit.api import UserError
from labkit_dino.student_init import student_weights


def params(net):
    return {name: p.detach().clone() for name, p in net.dino_parameters()}


def test_student_weights_formulas():
    t, r = torch.randn(1000), torch.randn(1000)
    assert torch.equal(student_weights(t, r, "teacher"), t)
    assert torch.equal(student_weights(t, r, "random"), r)
    a = 0.3
    assert torch.allclose(student_weights(t, r, "interpolated", alpha=a), 0.7 * t + 0.3 * r)
    assert torch.allclose(student_weights(t, r, "interpolated", alpha=a, variance_preserving=True),
                          (0.7 * t + 0.3 * r) / math.sqrt(0.49 + 0.09))
    assert torch.allclose(student_weights(t, r, "neighborhood", eps=0.5), t + 0.5 * r)
    assert torch.allclose(student_weights(t, r, "neighborhood", eps=0.5, variance_preserving=True),
                          (t + 0.5 * r) / math.sqrt(1.25))


def test_inits_of_a_built_method_follow_the_formulas(dino_method):
    seeds = {"teacher_seed": 5, "student_seed": 7}
    random = dino_method(student_init="random", **seeds)
    teacher = params(random.teacher)
    fresh = params(random.student)
    assert all(not torch.equal(teacher[n], fresh[n]) for n in teacher if fresh[n].std() > 0)

    copy = dino_method(student_init="teacher", **seeds)
    assert all(torch.equal(p, teacher[n]) for n, p in params(copy.student).items())
    assert all(torch.equal(p, teacher[n]) for n, p in params(copy.teacher).items())

    a = 0.3
    mixed = params(dino_method(student_init="interpolated", init_alpha=a,
                               variance_preserving=True, **seeds).student)
    for n, p in mixed.items():
        expected = ((1 - a) * teacher[n] + a * fresh[n]) / math.sqrt((1 - a) ** 2 + a ** 2)
        assert torch.allclose(p, expected, atol=1e-7), n

    eps = 0.5
    near = params(dino_method(student_init="neighborhood", init_eps=eps, **seeds).student)
    for n, p in near.items():
        assert torch.allclose(p, teacher[n] + eps * fresh[n], atol=1e-7), n


def test_variance_preserving_correction_keeps_the_weight_scale(dino_method):
    name = "network.block2.conv1.weight"  # 32·16·3·3 = 4608 weights
    seeds = {"teacher_seed": 1, "student_seed": 2}
    teacher = params(dino_method(**seeds).teacher)[name]
    plain = params(dino_method(student_init="interpolated", init_alpha=0.5, **seeds).student)[name]
    kept = params(dino_method(student_init="interpolated", init_alpha=0.5,
                              variance_preserving=True, **seeds).student)[name]
    assert plain.std() / teacher.std() == pytest.approx(math.sqrt(0.5), rel=0.05)
    assert kept.std() / teacher.std() == pytest.approx(1.0, rel=0.05)


def test_seeds_pick_the_networks(dino_method):
    base = params(dino_method(teacher_seed=3).teacher)
    same = params(dino_method(teacher_seed=3).teacher)
    assert all(torch.equal(p, base[n]) for n, p in same.items())
    other = params(dino_method(teacher_seed=4).teacher)
    assert not torch.equal(other["network.block1.conv1.weight"],
                           base["network.block1.conv1.weight"])
    # no teacher_seed: the spec's seed; no student_seed: drawn after the teacher, so different
    by_spec = dino_method(seed=3, student_init="random")
    assert all(torch.equal(p, base[n]) for n, p in params(by_spec.teacher).items())
    assert not torch.equal(params(by_spec.student)["network.block1.conv1.weight"],
                           base["network.block1.conv1.weight"])


def test_a_teacher_of_another_architecture_needs_a_random_student_and_a_frozen_teacher(
        dino_method):
    method = dino_method(teacher_model="mlp_s", student_init="random", teacher_mode="no_update")
    assert method.teacher.network.fc.in_features == 128  # mlp_s embeds in 128 dimensions
    assert method.student.network.fc.in_features == 32   # cnn_xs in 32
    views = [torch.randn(8, 1, 8, 8)]
    method.train(True)
    assert torch.isfinite(method.training_step((views, torch.zeros(8, dtype=torch.long))).loss)
    with pytest.raises(UserError, match="same architecture"):
        dino_method(teacher_model="mlp_s", student_init="teacher", teacher_mode="no_update")
    with pytest.raises(UserError, match="method.teacher_model: unknown model 'mlp_ss'"):
        dino_method(teacher_model="mlp_ss", student_init="random", teacher_mode="no_update")

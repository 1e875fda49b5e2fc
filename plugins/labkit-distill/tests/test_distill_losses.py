"""Loss values against independent NumPy implementations of the published formulas.

First each loss function on fixed tensors, then the ``distill`` method's whole training
loss on a real batch, with a real teacher run, recomputed in NumPy from the two
networks' logits (and, for the Jacobian, from per-sample Jacobians that torch computes
one sample at a time).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from distill_helpers import batch_of, distill_method
from torch import nn

from labkit.api import UserError, expand, mix_images
from labkit_distill.losses import (contrastive_loss, input_gradients, jacobian_loss, soft_term,
                                   tempered)
from labkit_distill.taps import Hint

RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(6, 5)) * 2.0
TEACHER = RNG.normal(size=(6, 5)) * 3.0


def np_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_divergence(p: np.ndarray, q: np.ndarray, kind: str) -> float:
    """Mean over rows of KL(p ‖ q) or of the cross-entropy −Σ p log q."""
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    cross = -(p * np.log(q)).sum(axis=1)
    return float(np.mean(cross + plogp.sum(axis=1) if kind == "kl" else cross))


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_term_is_t_squared_kl_from_teacher_to_student(temperature):
    p, q = np_softmax(TEACHER, temperature), np_softmax(STUDENT, temperature)
    kl = temperature ** 2 * np.mean((p * (np.log(p) - np.log(q))).sum(axis=1))
    reverse = temperature ** 2 * np.mean((q * (np.log(q) - np.log(p))).sum(axis=1))
    ce = temperature ** 2 * np.mean(-(p * np.log(q)).sum(axis=1))
    assert abs(kl - reverse) > 0.1  # the direction matters on these tensors
    assert soft_term(t64(STUDENT), t64(p), temperature, "kl").item() == pytest.approx(kl, rel=1e-9)
    assert soft_term(t64(STUDENT), t64(p), temperature, "ce").item() == pytest.approx(ce, rel=1e-9)
    # equal distributions: KL is zero, the cross-entropy is the entropy
    assert soft_term(t64(TEACHER), t64(p), temperature, "kl").item() == pytest.approx(0, abs=1e-9)


def test_tempered_human_labels_are_powers_of_the_probabilities():
    human = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    for temperature in (0.5, 1.0, 3.0):
        powered = human ** (1 / temperature)
        expected = powered / powered.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(tempered(t64(human), temperature).numpy(), expected,
                                   atol=1e-9)


def _linear(weight: np.ndarray) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0])).double()
    with torch.no_grad():
        net[1].weight.copy_(t64(weight))
        net[1].bias.normal_()
    return net


@pytest.mark.parametrize("top_k", [None, 2])
def test_jacobian_matching_of_linear_maps(top_k):
    # for f(x) = W x + b the input-gradient of logit c is W[c] for every sample
    w_student, w_teacher = RNG.normal(size=(5, 9)), RNG.normal(size=(5, 9))
    x = t64(RNG.normal(size=(4, 1, 3, 3))).requires_grad_(True)
    student, teacher = _linear(w_student), _linear(w_teacher)
    s_out, t_out = student(x), teacher(x)
    if top_k is None:
        classes = np.tile(np.arange(5), (4, 1))
    else:
        classes = np.argsort(-t_out.detach().numpy(), axis=1)[:, :top_k]
    unit = lambda w: w / np.linalg.norm(w, axis=1, keepdims=True)  # noqa: E731
    per_class = ((unit(w_teacher) - unit(w_student)) ** 2).sum(axis=1)
    expected = np.mean([per_class[row].sum() for row in classes])
    index = torch.from_numpy(classes)
    loss = jacobian_loss(input_gradients(s_out, x, index, create_graph=True),
                         input_gradients(t_out, x, index, create_graph=False))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()  # differentiable through the student's gradients
    assert student[1].weight.grad is not None


def test_input_gradients_are_per_sample_jacobian_rows():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([[0, 3], [2, 1], [3, 3]])
    got = input_gradients(net(x), x, classes, create_graph=False)
    for n in range(3):
        full = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x[n].detach())
        torch.testing.assert_close(got[n], full.flatten(1)[classes[n]])


def test_contrastive_loss_is_infonce_over_the_batch():
    s, t, tau = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4)), 0.5
    logits = (s / np.linalg.norm(s, axis=1, keepdims=True)) @ (
        t / np.linalg.norm(t, axis=1, keepdims=True)).T / tau
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))
    assert contrastive_loss(t64(s), t64(t), tau).item() == pytest.approx(expected, rel=1e-9)


def test_fitnets_hint_with_a_1x1_regressor_and_pooling():
    student, teacher = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 2, 2))
    hint = Hint(torch.Size((3, 4, 4)), torch.Size((5, 2, 2))).double()
    w, b = hint.regressor.weight.detach().numpy()[:, :, 0, 0], hint.regressor.bias.detach().numpy()
    regressed = np.einsum("oi,nihw->nohw", w, student) + b[None, :, None, None]
    pooled = regressed.reshape(2, 5, 2, 2, 2, 2).mean(axis=(3, 5))  # 4x4 -> 2x2 by 2x2 blocks
    expected = np.mean((pooled - teacher) ** 2)
    assert hint(t64(student), t64(teacher)).item() == pytest.approx(expected, rel=1e-9)

    vector_hint = Hint(torch.Size((6,)), torch.Size((4, 3, 3))).double()
    v_student = RNG.normal(size=(2, 6))
    w, b = vector_hint.regressor.weight.detach().numpy(), vector_hint.regressor.bias.detach().numpy()
    target = teacher_map = RNG.normal(size=(2, 4, 3, 3))
    expected = np.mean((v_student @ w.T + b - teacher_map.mean(axis=(2, 3))) ** 2)
    assert vector_hint(t64(v_student), t64(target)).item() == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- the method's whole loss

def np_loss(s, t, y, *, alpha=0.9, temperature=4.0, divergence="kl", human=None, gamma=0.0,
            human_temperature=1.0, mixed_with=None, m=1.0):
    """(1−λ)·CE + λ·[(1−γ)·T²·D(p_t^T ‖ p_s^T) + γ·T_h²·D(h^{T_h} ‖ p_s^{T_h})], from logits."""
    log_p = np.log(np_softmax(s))
    ce = -np.mean(log_p[np.arange(len(y)), y])
    if mixed_with is not None:
        ce = m * ce + (1 - m) * -np.mean(log_p[np.arange(len(y)), mixed_with])
    soft = temperature ** 2 * np_divergence(np_softmax(t, temperature),
                                            np_softmax(s, temperature), divergence)
    if human is not None:
        powered = human ** (1 / human_temperature)
        target = powered / powered.sum(axis=1, keepdims=True)
        soft = (1 - gamma) * soft + gamma * human_temperature ** 2 * np_divergence(
            target, np_softmax(s, human_temperature), divergence)
    return (1 - alpha) * ce + alpha * soft


def logits_of(method, images):
    with torch.no_grad():
        return (method.context.model(images).double().numpy(),
                method.teacher(images).double().numpy())


def test_kd_loss_of_a_training_step(registries, teacher_dir, tmp_path):
    method = distill_method(registries, teacher_dir, tmp_path, alpha=0.7, temperature=3.0)
    images, y, index = batch_of(method)
    loss = method.training_step((images, y, index)).loss.item()
    s, t = logits_of(method, images)
    assert loss == pytest.approx(np_loss(s, t, y.numpy(), alpha=0.7, temperature=3.0), rel=1e-5)


def soft_label_file(tmp_path, rows: int) -> tuple[str, np.ndarray]:
    probs = np.random.default_rng(1).dirichlet(np.ones(10), rows)
    probs[::3, :4] = 0.0  # human labels have exact zeros (CIFAR-10H does)
    probs /= probs.sum(axis=1, keepdims=True)
    path = tmp_path / "human-probs.npy"
    np.save(path, probs)
    return str(path), probs


@pytest.mark.parametrize("divergence", ["kl", "ce"])
def test_hkd_loss_with_soft_labels_aligned_to_the_source(registries, teacher_dir, tmp_path,
                                                         divergence):
    path, probs = soft_label_file(tmp_path, 1797)  # one row per digit of the whole source
    method = distill_method(registries, teacher_dir, tmp_path, divergence=divergence,
                         soft_labels={"file": path, "gamma": 0.3, "temperature": 2.0})
    images, y, index = batch_of(method)
    loss = method.training_step((images, y, index)).loss.item()
    human = probs[method.context.data.train.indices[index.numpy()]]
    s, t = logits_of(method, images)
    expected = np_loss(s, t, y.numpy(), divergence=divergence, human=human, gamma=0.3,
                       human_temperature=2.0)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_inputs_mix_labels_and_soft_labels(registries, teacher_dir, tmp_path, kind):
    path, probs = soft_label_file(tmp_path, 1438)  # one row per training item
    method = distill_method(registries, teacher_dir, tmp_path, mix={"kind": kind, "alpha": 0.5},
                         soft_labels={"file": path, "gamma": 0.5})
    images, y, index = batch_of(method)
    torch.manual_seed(4)
    state = torch.get_rng_state()
    loss = method.training_step((images, y, index)).loss.item()
    # replay the step's draws from torch's generator: whether to mix, then labkit's mixing
    torch.set_rng_state(state)
    torch.rand(())
    mixed, perm, m = mix_images(images, kind, 0.5)
    assert 0 < m < 1 and not torch.equal(perm, torch.arange(len(y)))
    human = probs[index.numpy()]
    s, t = logits_of(method, mixed)
    expected = np_loss(s, t, y.numpy(), human=m * human + (1 - m) * human[perm.numpy()],
                       gamma=0.5, mixed_with=y[perm].numpy(), m=m)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_batch_augment_is_refused_for_distill_which_mixes_itself(registries, teacher_dir,
                                                                 tmp_path):
    spec = {"model": "mlp_s", "dataset": "digits", "epochs": 1,
            "logs_dir": str(tmp_path / "logs"), "batch_augment": {"name": "mixup"},
            "method": {"name": "distill", "teacher": {"dir": str(teacher_dir)}}}
    with pytest.raises(UserError, match="'distill' does not accept the soft targets"):
        expand(spec, registries)  # when the grid is validated, before anything trains


@pytest.mark.parametrize("top_k", [None, 3])
def test_jacobian_loss_of_a_training_step(registries, teacher_dir, tmp_path, top_k):
    method = distill_method(registries, teacher_dir, tmp_path,
                         loss={"name": "jacobian", "weight": 0.5, "top_k": top_k})
    images, y, index = batch_of(method, n=6)
    loss = method.training_step((images, y, index)).loss.item()
    s, t = logits_of(method, images)

    def rows(net, n):  # all logits' gradients for one sample, (C, D)
        return torch.autograd.functional.jacobian(lambda v: net(v[None])[0],
                                                  images[n]).flatten(1).double().numpy()

    jac = 0.0
    for n in range(len(y)):
        js, jt = rows(method.context.model, n), rows(method.teacher, n)
        classes = np.argsort(-t[n])[:top_k] if top_k else np.arange(10)
        unit = lambda j: j / np.linalg.norm(j, axis=1, keepdims=True)  # noqa: E731
        jac += ((unit(jt[classes]) - unit(js[classes])) ** 2).sum() / len(y)
    assert loss == pytest.approx(np_loss(s, t, y.numpy()) + 0.5 * jac, rel=1e-5)


def penultimate(net, images):
    """Input of the classifier ``fc`` of a labkit Sequential network."""
    for name, module in net.named_children():
        if name == "fc":
            return images.detach().double().numpy()
        images = module(images)


def test_contrastive_loss_of_a_training_step(registries, teacher_dir, tmp_path):
    method = distill_method(registries, teacher_dir, tmp_path,
                         loss={"name": "contrastive", "weight": 2.0, "tau": 0.2, "dim": 8})
    images, y, index = batch_of(method)
    loss = method.training_step((images, y, index)).loss.item()
    s, t = logits_of(method, images)
    with torch.no_grad():
        fs, ft = penultimate(method.context.model, images), penultimate(method.teacher, images)
    head = {k: (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for k, m in method.heads.items()}
    es = fs @ head["student"][0].T + head["student"][1]
    et = ft @ head["teacher"][0].T + head["teacher"][1]
    es /= np.linalg.norm(es, axis=1, keepdims=True)
    et /= np.linalg.norm(et, axis=1, keepdims=True)
    logits = es @ et.T / 0.2
    crd = np.mean(np.log(np.exp(logits).sum(axis=1)) - np.diag(logits))
    assert loss == pytest.approx(np_loss(s, t, y.numpy()) + 2.0 * crd, rel=1e-5)


def test_feature_matching_of_named_layers_in_a_training_step(registries, teacher_dir, tmp_path):
    method = distill_method(registries, teacher_dir, tmp_path,
                         loss={"name": "features", "student_layer": "fc1",
                               "teacher_layer": "block2"})
    images, y, index = batch_of(method)
    loss = method.training_step((images, y, index)).loss.item()
    s, t = logits_of(method, images)
    with torch.no_grad():
        fs = method.context.model.fc1(method.context.model.flatten(images)).double().numpy()
        ft = method.teacher.block2(method.teacher.block1(images)).double().numpy()
    regressor = method.heads["hint"].regressor
    w, b = regressor.weight.detach().double().numpy(), regressor.bias.detach().double().numpy()
    hint = np.mean((fs @ w.T + b - ft.mean(axis=(2, 3))) ** 2)  # block2 is a map: averaged
    assert loss == pytest.approx(np_loss(s, t, y.numpy()) + hint, rel=1e-5)

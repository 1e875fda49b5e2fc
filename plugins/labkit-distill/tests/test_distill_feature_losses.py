"""AT, SP, PKT, RKD and CRD against written-out NumPy versions of the reference formulas.

The reference is RepDistiller (github.com/HobbitLong/RepDistiller, the benchmark of
Tian et al. 2020): ``distiller_zoo/AT.py`` (``Attention.at_loss``, ``Attention.at``),
``distiller_zoo/SP.py`` (``Similarity.similarity_loss``), ``distiller_zoo/PKT.py``
(``PKT.cosine_similarity_loss``), ``distiller_zoo/RKD.py`` (``RKDLoss.forward``,
``RKDLoss.pdist``), ``crd/criterion.py`` (``CRDLoss``, ``ContrastLoss``, ``Embed``) and
``crd/memory.py`` (``ContrastMemory.forward``). Every value below is recomputed here from
those functions' formulas, in float64 NumPy, on seeded random inputs; then each loss runs
in a training step of the ``distill`` method with a real teacher run and is checked
against the same NumPy formulas on the tapped features.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from distill_helpers import batch_of, distill_method, train_runs

from labkit.api import UserError
from labkit_distill.crd import ContrastMemory
from labkit_distill.losses import attention_loss, pkt_loss, rkd_loss, similarity_loss

RNG = np.random.default_rng(17)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.normalize: x / max(‖x‖₂, 1e-12), per row."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1, 0.5 * d ** 2, d - 0.5)))


# ---------------------------------------------------------------- reference formulas

def ref_attention(fs: np.ndarray, ft: np.ndarray, p: float = 2.0) -> float:
    """AT.py: pool the larger map to the smaller (square maps here: block means), then
    mean((normalize(mean_c f^p) − …)²)."""
    def pool(f, size):
        k = f.shape[2] // size
        n, c = f.shape[:2]
        return f.reshape(n, c, size, k, size, k).mean(axis=(3, 5))

    size = min(fs.shape[2], ft.shape[2])
    fs, ft = pool(fs, size), pool(ft, size)
    at = lambda f: unit_rows((f ** p).mean(axis=1).reshape(len(f), -1))  # noqa: E731
    return float(np.mean((at(fs) - at(ft)) ** 2))


def ref_similarity(fs: np.ndarray, ft: np.ndarray) -> float:
    """SP.py: G = f fᵀ, rows L2-normalised, sum of squared differences / bsz²."""
    n = len(fs)
    fs, ft = fs.reshape(n, -1), ft.reshape(n, -1)
    g_s, g_t = unit_rows(fs @ fs.T), unit_rows(ft @ ft.T)
    return float(((g_t - g_s) ** 2).sum() / (n * n))


def ref_pkt(fs: np.ndarray, ft: np.ndarray, eps: float = 1e-7) -> float:
    """PKT.py: cosine similarities scaled to [0, 1], rows made distributions, then the mean
    over all entries of t·log((t + eps) / (s + eps))."""
    def probs(f):
        f = f / (np.sqrt((f ** 2).sum(axis=1, keepdims=True)) + eps)
        sim = (f @ f.T + 1.0) / 2.0
        return sim / sim.sum(axis=1, keepdims=True)

    s, t = probs(fs.reshape(len(fs), -1)), probs(ft.reshape(len(ft), -1))
    return float(np.mean(t * np.log((t + eps) / (s + eps))))


def ref_rkd(fs: np.ndarray, ft: np.ndarray, w_d: float = 25.0, w_a: float = 50.0) -> float:
    """RKD.py: pdist (squared distances clamped at 1e-12, root, zero diagonal) over its mean
    positive value, smooth-L1; angles from unit difference vectors, smooth-L1."""
    def pdist(e):
        sq = (e ** 2).sum(axis=1)
        res = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, 1e-12))
        np.fill_diagonal(res, 0.0)
        return res / res[res > 0].mean()

    def angles(e):
        diff = e[None, :, :] - e[:, None, :]  # diff[a, b] = e[b] − e[a]
        unit = unit_rows(diff)
        return np.einsum("abd,acd->abc", unit, unit)

    s, t = fs.reshape(len(fs), -1), ft.reshape(len(ft), -1)
    return w_d * smooth_l1(pdist(s), pdist(t)) + w_a * smooth_l1(angles(s), angles(t))


def ref_contrast_loss(x: np.ndarray, n_data: int, eps: float = 1e-7) -> float:
    """criterion.py, ContrastLoss.forward: x (bsz, 1 + K), positive in column 0."""
    m = x.shape[1] - 1
    pn = 1.0 / n_data
    log_d1 = np.log(x[:, 0] / (x[:, 0] + m * pn + eps))
    log_d0 = np.log(m * pn / (x[:, 1:] + m * pn + eps))
    return float(-(log_d1.sum() + log_d0.sum()) / len(x))


class RefCRD:
    """CRDLoss + ContrastMemory in NumPy: v1 the student embedding, v2 the teacher's;
    memory_v1 holds students, memory_v2 teachers; Z set once, at the first call."""

    def __init__(self, head: ContrastMemory):
        as_np = lambda t: t.detach().double().numpy().copy()  # noqa: E731
        self.w_s, self.b_s = as_np(head.embed_student.weight), as_np(head.embed_student.bias)
        self.w_t, self.b_t = as_np(head.embed_teacher.weight), as_np(head.embed_teacher.bias)
        self.memory_v1, self.memory_v2 = as_np(head.memory_student), as_np(head.memory_teacher)
        self.tau, self.momentum, self.n = head.tau, head.momentum, head.n_data
        self.z_v1 = self.z_v2 = -1.0

    def __call__(self, fs, ft, idx, contrast_idx) -> float:
        v1 = unit_rows(fs.reshape(len(fs), -1) @ self.w_s.T + self.b_s)
        v2 = unit_rows(ft.reshape(len(ft), -1) @ self.w_t.T + self.b_t)
        rows = np.concatenate([idx[:, None], contrast_idx], axis=1)
        out_v2 = np.exp(np.einsum("bkd,bd->bk", self.memory_v1[rows], v2) / self.tau)
        out_v1 = np.exp(np.einsum("bkd,bd->bk", self.memory_v2[rows], v1) / self.tau)
        if self.z_v1 < 0:
            self.z_v1 = out_v1.mean() * self.n
        if self.z_v2 < 0:
            self.z_v2 = out_v2.mean() * self.n
        loss = (ref_contrast_loss(out_v1 / self.z_v1, self.n)
                + ref_contrast_loss(out_v2 / self.z_v2, self.n))
        for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
            pos = memory[idx] * self.momentum + v * (1 - self.momentum)
            memory[idx] = pos / np.sqrt((pos ** 2).sum(axis=1, keepdims=True))
        return loss


# ---------------------------------------------------------------- losses on fixed inputs

@pytest.mark.parametrize("shapes", [((5, 3, 4, 4), (5, 6, 4, 4)), ((5, 3, 8, 8), (5, 2, 4, 4)),
                                    ((4, 2, 2, 2), (4, 7, 6, 6))])
def test_attention_transfer_matches_repdistiller(shapes):
    fs, ft = np.abs(RNG.normal(size=shapes[0])), RNG.normal(size=shapes[1])
    got = attention_loss(t64(fs), t64(ft)).item()
    assert got == pytest.approx(ref_attention(fs, ft), rel=1e-10)
    assert got > 0 and attention_loss(t64(ft), t64(ft)).item() == pytest.approx(0, abs=1e-15)


def test_attention_power_p():
    fs, ft = np.abs(RNG.normal(size=(3, 4, 3, 3))), np.abs(RNG.normal(size=(3, 2, 3, 3)))
    assert attention_loss(t64(fs), t64(ft), p=4.0).item() == pytest.approx(
        ref_attention(fs, ft, 4.0), rel=1e-10)


@pytest.mark.parametrize("shapes", [((6, 3, 4, 4), (6, 5, 2, 2)), ((6, 7), (6, 4))])
def test_similarity_preserving_matches_repdistiller(shapes):
    fs, ft = RNG.normal(size=shapes[0]), RNG.normal(size=shapes[1])
    got = similarity_loss(t64(fs), t64(ft)).item()
    assert got == pytest.approx(ref_similarity(fs, ft), rel=1e-10) and got > 0


@pytest.mark.parametrize("shapes", [((7, 5), (7, 9)), ((4, 2, 3, 3), (4, 6))])
def test_pkt_matches_repdistiller(shapes):
    fs, ft = RNG.normal(size=shapes[0]), RNG.normal(size=shapes[1])
    got = pkt_loss(t64(fs), t64(ft)).item()
    assert got == pytest.approx(ref_pkt(fs, ft), rel=1e-10) and got > 0


def test_rkd_matches_repdistiller():
    fs, ft = RNG.normal(size=(6, 5)) * 3.0, RNG.normal(size=(6, 8))
    got = rkd_loss(t64(fs), t64(ft)).item()
    assert got == pytest.approx(ref_rkd(fs, ft), rel=1e-9)
    assert rkd_loss(t64(fs), t64(ft), 1.0, 0.0).item() == pytest.approx(
        ref_rkd(fs, ft, 1.0, 0.0), rel=1e-9)
    # a scaled copy of the teacher keeps every distance ratio and angle: zero loss
    assert rkd_loss(t64(ft * 7.0), t64(ft)).item() == pytest.approx(0, abs=1e-9)


def test_rkd_gives_the_student_a_gradient_and_the_teacher_none():
    fs = t64(RNG.normal(size=(5, 4))).requires_grad_(True)
    ft = t64(RNG.normal(size=(5, 4))).requires_grad_(True)
    rkd_loss(fs, ft).backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None


def crd_head(n_data=12, classes=3, dim=4, negatives=5, student_dim=6, teacher_dim=3,
             momentum=0.5, tau=0.07):
    torch.manual_seed(3)
    labels = torch.arange(n_data) % classes
    return ContrastMemory(student_dim, teacher_dim, labels, dim=dim, negatives=negatives,
                          tau=tau, momentum=momentum).double()


def test_crd_loss_and_memory_update_match_repdistiller():
    head = crd_head()
    ref = RefCRD(head)
    index = np.array([0, 5, 7, 10])
    negatives = RNG.integers(0, 12, size=(4, 5))
    for step in range(3):  # Z fixed at the first call, memories moving with momentum
        fs, ft = RNG.normal(size=(4, 6)), RNG.normal(size=(4, 3))
        got = head(t64(fs), t64(ft), torch.from_numpy(index), torch.from_numpy(negatives)).item()
        assert got == pytest.approx(ref(fs, ft, index, negatives), rel=1e-9), step
        np.testing.assert_allclose(head.memory_student.numpy(), ref.memory_v1, rtol=1e-12)
        np.testing.assert_allclose(head.memory_teacher.numpy(), ref.memory_v2, rtol=1e-12)
        assert head.normalisers.tolist() == pytest.approx([ref.z_v1, ref.z_v2], rel=1e-12)
    untouched = np.setdiff1d(np.arange(12), index)
    assert np.allclose(np.linalg.norm(ref.memory_v1[index], axis=1), 1.0)
    assert not np.allclose(np.linalg.norm(ref.memory_v1[untouched], axis=1), 1.0)


def test_crd_memory_starts_uniform_and_stays_put_in_eval_mode():
    head = crd_head(n_data=300, dim=12)
    bound = 1 / np.sqrt(12 / 3)
    memory = head.memory_student.numpy()
    assert memory.min() >= -bound and memory.max() <= bound and memory.std() > bound / 2
    before = head.memory_teacher.clone()
    head.eval()
    head(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64),
         torch.tensor([1, 2, 3, 4]))
    assert torch.equal(head.memory_teacher, before)
    assert "memory_student" in head.state_dict() and "labels" not in head.state_dict()


def test_crd_negatives_are_other_classes_drawn_uniformly():
    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 1])
    head = ContrastMemory(3, 3, labels, dim=2, negatives=4000, tau=0.1, momentum=0.5)
    torch.manual_seed(0)
    index = torch.tensor([0, 1, 2])
    negatives = head.draw_negatives(index)
    assert negatives.shape == (3, 4000)
    for row, i in enumerate(index):
        drawn = negatives[row]
        others = torch.nonzero(labels != labels[i]).flatten()
        assert set(drawn.tolist()) == set(others.tolist())  # every other-class item, no other
        counts = torch.bincount(drawn, minlength=10)[others].double()
        assert (counts / 4000 - 1 / len(others)).abs().max() < 0.03
    torch.manual_seed(0)
    assert torch.equal(head.draw_negatives(index), negatives)  # from torch's RNG


# ---------------------------------------------------------------- inside the method

def make_method(registries, teacher_dir, tmp_path, model="mlp_s", **loss):
    """A ``distill`` method whose loss is CE plus the auxiliary term ``loss`` (alpha 0)."""
    return distill_method(registries, teacher_dir, tmp_path, model, alpha=0.0, loss=loss)


def step(method, n=12):
    """One training step on the first n training items; returns (loss, images, labels, index)."""
    images, labels, index = batch_of(method, n)
    return method.training_step((images, labels, index)).loss.item(), images, labels, index


def outputs(net, images, names):
    """{module name: output as float64 NumPy} of one eval-free forward pass."""
    found = {}
    hooks = [net.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: found.__setitem__(name, o.detach().double().numpy()))
        for name in names]
    with torch.no_grad():
        logits = net(images).double().numpy()
    for hook in hooks:
        hook.remove()
    return logits, found


def cross_entropy(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(labels)), labels])


def test_attention_reads_paired_layers_and_defaults_to_the_last_map(registries, teacher_dir,
                                                                   tmp_path):
    # cnn_xs student and teacher: block1 (16 ch, 4x4) and block2 (32 ch, 2x2)
    method = make_method(registries, teacher_dir, tmp_path, model="cnn_xs", name="attention",
                         student_layers=["block1", "block2"], teacher_layers=["block2", "block2"])
    loss, images, labels, _ = step(method)
    s_logits, s = outputs(method.context.model.train(), images, ["block1", "block2"])
    _, t = outputs(method.teacher, images, ["block2"])
    expected = cross_entropy(s_logits, labels.numpy()) + 1000.0 * (
        ref_attention(s["block1"], t["block2"]) + ref_attention(s["block2"], t["block2"]))
    assert loss == pytest.approx(expected, rel=1e-5)

    default = make_method(registries, teacher_dir, tmp_path, model="cnn_xs", name="attention")
    assert len(default.student_taps) == len(default.teacher_taps) == 1
    loss, images, labels, _ = step(default)
    s_logits, s = outputs(default.context.model.train(), images, ["block2"])
    expected = cross_entropy(s_logits, labels.numpy()) + 1000.0 * ref_attention(s["block2"],
                                                                                t["block2"])
    assert loss == pytest.approx(expected, rel=1e-5)


def test_attention_refuses_vectors_and_unpaired_layers(registries, teacher_dir, tmp_path):
    with pytest.raises(UserError, match="spatial map"):
        make_method(registries, teacher_dir, tmp_path, model="cnn_xs", name="attention",
                    student_layers=["fc"], teacher_layers=["block2"])
    with pytest.raises(UserError, match="as many"):
        make_method(registries, teacher_dir, tmp_path, model="cnn_xs", name="attention",
                    student_layers=["block1", "block2"], teacher_layers=["block2"])
    with pytest.raises(UserError, match="no layer with a spatial map"):
        make_method(registries, teacher_dir, tmp_path, name="attention")  # mlp_s student


@pytest.mark.parametrize("loss, reference", [
    ({"name": "similarity", "weight": 2.0, "student_layer": "fc1"},
     lambda s, t: 2.0 * ref_similarity(s, t)),
    ({"name": "pkt", "weight": 3.0}, lambda s, t: 3.0 * ref_pkt(s, t)),
    ({"name": "rkd", "weight": 0.5, "distance_weight": 2.0, "angle_weight": 3.0},
     lambda s, t: 0.5 * ref_rkd(s, t, 2.0, 3.0)),
])
def test_relational_losses_in_a_training_step(registries, teacher_dir, tmp_path, loss, reference):
    method = make_method(registries, teacher_dir, tmp_path, **loss)
    value, images, labels, _ = step(method)
    student_layer = loss.get("student_layer", "relu2")  # pkt/rkd: the input of fc (mlp_s)
    teacher_layer = "block2" if loss["name"] == "similarity" else "flatten"  # SP: last map
    s_logits, s = outputs(method.context.model.train(), images, [student_layer])
    _, t = outputs(method.teacher, images, [teacher_layer])
    expected = cross_entropy(s_logits, labels.numpy()) + reference(s[student_layer],
                                                                   t[teacher_layer])
    assert value == pytest.approx(expected, rel=1e-5)


def test_crd_in_a_training_step_uses_a_memory_of_the_training_set(registries, teacher_dir,
                                                                  tmp_path):
    method = make_method(registries, teacher_dir, tmp_path, name="crd", dim=16, negatives=50)
    head = method.heads["crd"]
    assert head.memory_student.shape == (len(method.context.data.train), 16)
    ref = RefCRD(head)
    state = torch.random.get_rng_state()
    loss, images, labels, index = step(method)
    torch.random.set_rng_state(state)
    negatives = head.draw_negatives(index).numpy()  # the same draw as inside the step
    s_logits, s = outputs(method.context.model.train(), images, ["relu2"])
    _, t = outputs(method.teacher, images, ["flatten"])
    expected = cross_entropy(s_logits, labels.numpy()) + 0.8 * ref(
        s["relu2"], t["flatten"], index.numpy(), negatives)
    assert loss == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(head.memory_student.numpy(), ref.memory_v1, rtol=1e-5, atol=1e-6)
    assert "crd.memory_teacher" in method.modules()["heads"].state_dict()  # checkpointed


def test_every_feature_loss_trains_a_student_end_to_end(registries, teacher_dir, tmp_path):
    losses = [{"name": "attention"}, {"name": "similarity"}, {"name": "pkt"}, {"name": "rkd"},
              {"name": "crd", "dim": 16, "negatives": 64}]
    spec = {"model": "cnn_xs", "dataset": "digits", "epochs": 1, "batch_size": 64,
            "logs_dir": str(tmp_path / "logs"), "optimizer": {"name": "sgd", "lr": 0.05},
            "metrics": ["accuracy"],
            "method": {"name": "distill", "teacher": {"dir": str(teacher_dir)}, "loss": losses}}
    runs = train_runs(spec, registries)
    assert len(runs) == 5
    for run in runs:
        log = (run.directory / "log.csv").read_text().splitlines()
        assert len(log) == 2 and "eval-agreement" in log[0]

"""The multi-crop losses against a plain NumPy implementation on fixed tensors."""
import numpy as np
import pytest
import torch

from labkit_dino.losses import Targets, multicrop_loss, view_pairs


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference(student, teacher, teacher_crops, pairing):
    """Loop-by-loop losses; ``student`` (V_s, N, K) over all crops, ``teacher`` (V_t, N, K)."""
    ps, pt = softmax(student), softmax(teacher)
    ce, kl, mse = [], [], []
    for i, crop_t in enumerate(teacher_crops):
        for j in range(len(student)):
            if pairing == "same" and crop_t != j or pairing == "opposite" and crop_t == j:
                continue
            per_sample_ce = [-(pt[i, n] * np.log(ps[j, n])).sum() for n in range(student.shape[1])]
            per_sample_h = [-(pt[i, n] * np.log(pt[i, n])).sum() for n in range(student.shape[1])]
            ce.append(np.mean(per_sample_ce))
            kl.append(np.mean(np.array(per_sample_ce) - np.array(per_sample_h)))
            mse.append(np.mean((student[j] - teacher[i]) ** 2))
    h_pred = np.mean(-(ps * np.log(ps)).sum(axis=-1))
    return {"CE": np.mean(ce), "KL": np.mean(kl), "MSE": np.mean(mse), "H_pred": h_pred}


@pytest.mark.parametrize("pairing", ["all", "same", "opposite"])
def test_losses_match_an_independent_implementation(pairing):
    rng = np.random.default_rng(0)
    student = rng.normal(size=(4, 5, 7)) * 3   # 2 global + 2 local crops, 5 samples, 7 outputs
    teacher = rng.normal(size=(2, 5, 7)) * 3   # the 2 global crops
    pairs = view_pairs([0, 1], [0, 1, 2, 3], pairing)
    got = multicrop_loss(torch.tensor(student), Targets.from_logits(torch.tensor(teacher)), pairs)
    want = reference(student, teacher, [0, 1], pairing)
    for name, value in want.items():
        assert got[name].item() == pytest.approx(value, rel=1e-10), name


def test_pairings_pick_the_documented_views():
    assert view_pairs([0, 1], [0, 1, 2], "same") == [(0, 0), (1, 1)]
    assert view_pairs([0, 1], [0, 1, 2], "opposite") == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert len(view_pairs([0, 1], [0, 1, 2], "all")) == 6
    assert view_pairs([0], [0], "opposite") == []


def test_label_targets_are_one_hot_with_zero_entropy():
    student = torch.randn(1, 3, 4)
    labels = torch.tensor([0, 3, 1])
    out = multicrop_loss(student, Targets.from_labels(labels, 4, views=1), [(0, 0)])
    expected = torch.nn.functional.cross_entropy(student[0], labels)
    assert out["CE"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["KL"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["H_target"].item() == 0.0

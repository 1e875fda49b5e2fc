"""CKA against an independent NumPy transcription of the published formulas, and its
invariances."""
import itertools

import numpy as np
import pytest
import torch

from labkit_stitch import cka

# ---- reference: the formulas as published, written for clarity, not speed

def ref_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, linear kernel in feature space: ||YᵀX||² / (||XᵀX|| ||YᵀY||)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def ref_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Gretton et al. 2005: tr(K H L H) / (n - 1)²."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_rbf_gram(x: np.ndarray, threshold: float) -> np.ndarray:
    """exp(-d² / (2σ²)), σ² = threshold² · median of all n² squared distances."""
    d2 = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return np.exp(-d2 / (2 * threshold ** 2 * np.median(d2)))


def ref_rbf_cka(x: np.ndarray, y: np.ndarray, threshold: float) -> float:
    k, l = ref_rbf_gram(x, threshold), ref_rbf_gram(y, threshold)  # noqa: E741
    return ref_hsic(k, l) / np.sqrt(ref_hsic(k, k) * ref_hsic(l, l))


def ref_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """The U-statistic of HSIC (Song et al. 2012): the mean over ordered distinct
    (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = len(k)
    terms = [k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
             for i, j, q, r in itertools.permutations(range(n), 4)]
    return float(np.mean(terms))


def ref_minibatch_cka(x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """Nguyen et al. 2021: mean unbiased HSIC over minibatches, linear kernel."""
    pairs = [(xb @ xb.T, yb @ yb.T) for xb, yb in zip(np.split(x, len(x) // batch),
                                                      np.split(y, len(y) // batch))]
    xy = np.mean([ref_unbiased_hsic(k, l) for k, l in pairs])  # noqa: E741
    xx = np.mean([ref_unbiased_hsic(k, k) for k, _ in pairs])
    yy = np.mean([ref_unbiased_hsic(l, l) for _, l in pairs])  # noqa: E741
    return xy / np.sqrt(xx * yy)


# ---- data: two related representations of the same samples

def representations(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) + 0.5
    y = np.tanh(x @ rng.normal(size=(6, 9))) + 0.3 * rng.normal(size=(n, 9))
    return x, y


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def test_linear_and_rbf_cka_match_the_published_formulas():
    x, y = representations(40)
    assert cka.linear_cka(t(x), t(y)) == pytest.approx(ref_linear_cka(x, y), rel=1e-10)
    for threshold in (0.5, 1.0, 2.0):
        assert cka.rbf_cka(t(x), t(y), threshold) == pytest.approx(
            ref_rbf_cka(x, y, threshold), rel=1e-10)
    assert 0.2 < cka.linear_cka(t(x), t(y)) < 0.95  # related, not identical


def test_unbiased_hsic_is_the_u_statistic_and_minibatch_cka_matches():
    x, y = representations(16, seed=1)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    ours = cka.unbiased_hsic_matrix(t(k)[None], t(l)[None])[0, 0]
    assert float(ours) == pytest.approx(ref_unbiased_hsic(k, l), rel=1e-9)
    assert cka.minibatch_cka(t(x), t(y), batch_size=8) == pytest.approx(
        ref_minibatch_cka(x, y, 8), rel=1e-9)


def test_cka_matrix_compares_every_pair():
    x, y = representations(30)
    z = x[:, :3] ** 2
    grams_a = torch.stack([cka.gram_linear(t(a)) for a in (x, z)])
    grams_b = torch.stack([cka.gram_linear(t(b)) for b in (y, x, z)])
    table = cka.cka_matrix(grams_a, grams_b)
    for i, a in enumerate((x, z)):
        for j, b in enumerate((y, x, z)):
            assert float(table[i, j]) == pytest.approx(ref_linear_cka(a, b), rel=1e-10)


MEASURES = {
    "linear": cka.linear_cka,
    "rbf": cka.rbf_cka,
    "minibatch": lambda a, b: cka.minibatch_cka(a, b, batch_size=10),
}


@pytest.mark.parametrize("measure", MEASURES)
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(measure):
    similarity = MEASURES[measure]
    x, y = representations(40, seed=2)
    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    base = similarity(t(x), t(y))
    assert similarity(t(x), t(x)) == pytest.approx(1.0, abs=1e-12)
    assert similarity(t(x), t(y @ q)) == pytest.approx(base, abs=1e-10)
    assert similarity(t(4.5 * x), t(y)) == pytest.approx(base, abs=1e-10)
    assert similarity(t(x), t(0.01 * y @ q)) == pytest.approx(base, abs=1e-10)
    # and not invariant to everything: stretching one direction changes the value
    stretch = np.ones(9)
    stretch[0] = 10.0
    assert abs(similarity(t(x), t(y * stretch)) - base) > 1e-3


# ---- debiased CKA: the unbiased HSIC on all samples (Song et al. 2012, eq. 5)

def ref_unbiased_hsic_closed_form(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) − 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3)),
    K̃, L̃: the Gram matrices with their diagonals set to zero."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return float((np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3)))


def ref_debiased_cka(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """CKA₁ = HSIC₁(K, L) / sqrt(HSIC₁(K, K) · HSIC₁(L, L))."""
    return ref_unbiased_hsic_closed_form(k, l) / np.sqrt(
        ref_unbiased_hsic_closed_form(k, k) * ref_unbiased_hsic_closed_form(l, l))


# fixed inputs written out: 6 samples, 3 and 2 features
X_FIXED = np.array([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [2.0, 1.0, 1.0],
                    [-1.0, 0.5, 0.0], [0.0, 2.0, -1.0], [1.5, -0.5, 0.5]])
Y_FIXED = np.array([[1.0, 2.0], [-0.5, 0.0], [2.5, 1.0], [-1.0, -0.5], [1.0, -2.0],
                    [0.5, 1.5]])


def test_debiased_cka_matches_the_unbiased_hsic_written_out_on_fixed_inputs():
    x, y = X_FIXED, Y_FIXED
    k, l = x @ x.T, y @ y.T  # noqa: E741
    # the closed form is the U-statistic over ordered 4-tuples (two transcriptions agree)
    assert ref_unbiased_hsic_closed_form(k, l) == pytest.approx(ref_unbiased_hsic(k, l),
                                                                rel=1e-10)
    expected = ref_debiased_cka(k, l)
    assert cka.debiased_linear_cka(t(x), t(y)) == pytest.approx(expected, rel=1e-10)
    for threshold in (0.5, 1.0):
        kr, lr = ref_rbf_gram(x, threshold), ref_rbf_gram(y, threshold)
        assert cka.debiased_rbf_cka(t(x), t(y), threshold) == pytest.approx(
            ref_debiased_cka(kr, lr), rel=1e-10)
    # debiasing changes the value: it is not the biased CKA under another name
    assert abs(cka.debiased_linear_cka(t(x), t(y)) - cka.linear_cka(t(x), t(y))) > 1e-3


def test_debiased_cka_matrix_compares_every_pair():
    x, y = representations(20, seed=4)
    reps = (x, y, x[:, :2] ** 2)
    grams = torch.stack([cka.gram_linear(t(r)) for r in reps])
    table = cka.debiased_cka_matrix(grams, grams)
    for i, a in enumerate(reps):
        for j, b in enumerate(reps):
            assert float(table[i, j]) == pytest.approx(ref_debiased_cka(a @ a.T, b @ b.T),
                                                       rel=1e-9)


@pytest.mark.parametrize("measure", ["linear", "rbf"])
def test_debiased_cka_is_one_for_identical_inputs_and_invariant(measure):
    similarity = cka.debiased_linear_cka if measure == "linear" else cka.debiased_rbf_cka
    x, y = representations(40, seed=5)
    q = np.linalg.qr(np.random.default_rng(6).normal(size=(9, 9)))[0]
    base = similarity(t(x), t(y))
    assert similarity(t(x), t(x)) == pytest.approx(1.0, abs=1e-12)
    assert similarity(t(x), t(y @ q)) == pytest.approx(base, abs=1e-10)
    assert similarity(t(3.0 * x), t(0.2 * y)) == pytest.approx(base, abs=1e-10)
    stretch = np.ones(9)
    stretch[0] = 10.0
    assert abs(similarity(t(x), t(y * stretch)) - base) > 1e-3


def test_debiased_linear_cka_of_independent_wide_representations_is_near_zero():
    # few samples, many features: the biased estimator reports similarity where none is
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(30, 2000)), rng.normal(size=(30, 2000))
    assert cka.linear_cka(t(x), t(y)) > 0.9
    assert abs(cka.debiased_linear_cka(t(x), t(y))) < 0.15

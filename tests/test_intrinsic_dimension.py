"""Intrinsic dimension estimators: TwoNN and the Levina–Bickel MLE against transcriptions
of the published procedures (scikit-learn neighbours and regression), and ~d on points of
a known d-dimensional linear subspace or curved manifold in a wider space."""
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import NearestNeighbors

from labkit.measures.intrinsic_dimension import (duplicate_points, levina_bickel, nearest_distances,
                                                 subsample, twonn)


def embed(points: np.ndarray, width: int, seed: int) -> np.ndarray:
    """``points`` ``(n, q)`` rotated into ``width`` dimensions, shifted off the origin."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(width, points.shape[1])))[0]
    return points @ basis.T + rng.normal(size=width)


def linear_subspace(n: int, d: int, width: int, seed: int) -> np.ndarray:
    """Gaussian points (no boundary to bias the estimates) of a d-dimensional subspace."""
    return embed(np.random.default_rng(seed).normal(size=(n, d)), width, seed)


def swiss_roll(n: int, width: int, seed: int) -> np.ndarray:
    """A 2-dimensional curved sheet (rolled up in 3 dimensions), in ``width`` dimensions."""
    rng = np.random.default_rng(seed)
    t, h = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n)), 20 * rng.uniform(size=n)
    return embed(np.column_stack([t * np.cos(t), h, t * np.sin(t)]), width, seed)


def sphere(n: int, d: int, width: int, seed: int) -> np.ndarray:
    """Uniform points on the d-dimensional unit sphere (in d + 1 dimensions), in ``width``."""
    points = np.random.default_rng(seed).normal(size=(n, d + 1))
    return embed(points / np.linalg.norm(points, axis=1, keepdims=True), width, seed)


# ---- references: the procedures as published, with scikit-learn's neighbours

def ref_distances(x: np.ndarray, k: int) -> np.ndarray:
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return distances[:, 1:]  # the point itself first


def ref_twonn(x: np.ndarray, discard_fraction: float = 0.1) -> float:
    """Facco et al. 2017 (as scikit-dimension's TwoNN): fit −log(1 − i/N) = d log μ_(i)
    through the origin on the smallest ⌊N(1 − f)⌋ ratios."""
    r = ref_distances(x, 2)
    mu = np.sort(r[:, 1] / r[:, 0])
    n = len(mu)
    m = int(n * (1 - discard_fraction))
    fit = LinearRegression(fit_intercept=False).fit(
        np.log(mu[:m]).reshape(-1, 1), -np.log(1 - np.arange(1, m + 1) / n))
    return float(fit.coef_[0])


def ref_mle(x: np.ndarray, k: int) -> float:
    """Levina and Bickel's local estimates, combined by the mean of their inverses."""
    t = ref_distances(x, k)
    local = [(k - 1) / sum(np.log(row[-1] / row[j]) for j in range(k - 1)) for row in t]
    return float(1 / np.mean(1 / np.array(local)))


def test_both_estimators_equal_the_published_procedures_on_fixed_inputs():
    x = swiss_roll(400, 10, seed=0)
    np.testing.assert_allclose(nearest_distances(x, 5), ref_distances(x, 5), rtol=1e-10)
    for fraction in (0.05, 0.1, 0.25):
        assert twonn(x, fraction) == pytest.approx(ref_twonn(x, fraction), rel=1e-10)
    for k in (2, 5, 20):
        assert levina_bickel(x, k) == pytest.approx(ref_mle(x, k), rel=1e-10)


@pytest.mark.parametrize("d", [2, 5])
def test_points_on_a_linear_subspace_give_its_dimension(d):
    x = linear_subspace(2000, d, 40, seed=d)
    assert twonn(x) == pytest.approx(d, rel=0.1)
    assert levina_bickel(x, k=20) == pytest.approx(d, rel=0.1)
    assert np.linalg.matrix_rank(x - x.mean(0)) == d  # PCA agrees here


def test_curved_manifolds_give_their_dimension_where_pca_does_not():
    roll = swiss_roll(2000, 30, seed=1)
    assert np.linalg.matrix_rank(roll - roll.mean(0)) == 3  # the linear span is 3
    assert twonn(roll) == pytest.approx(2, rel=0.12)
    assert levina_bickel(roll, k=10) == pytest.approx(2, rel=0.12)
    ball = sphere(2000, 3, 30, seed=2)
    assert twonn(ball) == pytest.approx(3, rel=0.12)
    assert levina_bickel(ball, k=20) == pytest.approx(3, rel=0.12)


def test_seeded_subsampling_and_duplicates():
    x = linear_subspace(1500, 3, 20, seed=3)
    assert subsample(x, 500, seed=7).shape == (500, 20)
    assert twonn(x, max_points=500, seed=7) == twonn(x, max_points=500, seed=7)
    assert twonn(x, max_points=500, seed=7) != twonn(x, max_points=500, seed=8)
    assert twonn(x, max_points=500, seed=7) == twonn(subsample(x, 500, seed=7))
    assert twonn(x, max_points=5000) == twonn(x)  # no sample when n ≤ max_points
    doubled = np.vstack([x[:300], x[:10]])  # 10 points twice
    assert duplicate_points(doubled) == 10
    # a repeated point counts once: the estimates are those of the 300 distinct points
    assert twonn(doubled) == pytest.approx(twonn(x[:300]), rel=1e-10)
    assert levina_bickel(doubled, k=5) == pytest.approx(levina_bickel(x[:300], k=5), rel=1e-10)
    with pytest.raises(ValueError, match="more points than neighbours"):
        levina_bickel(x[:10], k=10)
    assert np.isfinite(twonn(x, discard_fraction=0.0))  # the largest ratio never fits
    with pytest.raises(ValueError, match="discard_fraction"):
        twonn(x, discard_fraction=1.0)

"""Every similarity measure against an independent reference on fixed inputs, its declared
invariances checked both ways on random data, metric axioms where claimed, the
permutation-null calibration, and `labkit similarity` on a trained run."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch
from click.testing import CliRunner
from sklearn.cross_decomposition import CCA
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.neighbors import NearestNeighbors
from stitch_helpers import net_spec, one_run
from test_stitch_cka import (ref_debiased_cka, ref_linear_cka, ref_minibatch_cka, ref_rbf_cka,
                             ref_rbf_gram)
from torch.utils.data import DataLoader

from labkit.api import UserError, build_component, train
from labkit_stitch import cut, measures
from labkit_stitch.calibration import calibrated, calibrated_table
from labkit_stitch.catalogue import (LINEAR, MEASURES, ORTHOGONAL, PERMUTATION, SCALING, TRANSFORMS,
                                     TRANSLATION, choose)
from labkit_stitch.commands import similarity_command
from labkit_stitch.measures import Representation
from labkit_stitch.refs import trained_network


def sample(seed: int, n: int = 60, p1: int = 9, p2: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations of n examples, with decaying spectra (so that SVCCA's
    99 % keeps fewer directions than there are) and nonzero means."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 5))
    x = (latent @ rng.normal(size=(5, p1)) + 0.5 * rng.normal(size=(n, p1)))
    y = np.tanh(latent @ rng.normal(size=(5, p2))) + 0.3 * rng.normal(size=(n, p2))
    return x * np.logspace(0, -1.5, p1) + 1.0, y * np.logspace(0, -1.5, p2) - 0.5


# ---- references: the published definitions, written independently of labkit_stitch

def centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(0)


def ref_cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hotelling's CCA from sample covariances: the SVD of Σxx^-½ Σxy Σyy^-½. Returns the
    canonical correlations and X's canonical weights (columns)."""
    p = x.shape[1]
    c = np.cov(x, y, rowvar=False)
    wx = scipy.linalg.inv(scipy.linalg.sqrtm(c[:p, :p])).real
    wy = scipy.linalg.inv(scipy.linalg.sqrtm(c[p:, p:])).real
    u, rho, _ = scipy.linalg.svd(wx @ c[:p, p:] @ wy, full_matrices=False)
    return rho, wx @ u


def ref_svd_reduce(x: np.ndarray, keep) -> np.ndarray:
    u, s, _ = np.linalg.svd(centred(x), full_matrices=False)
    k = keep if isinstance(keep, int) else 1 + np.argmax(np.cumsum(s**2) / np.sum(s**2) >= keep)
    return u[:, :k] * s[:k]


def ref_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018: α̃_i = Σ_j |⟨h_i, x_j⟩| with h_i the canonical variates of X."""
    rho, weights = ref_cca(x, y)
    h = centred(x) @ weights
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ centred(x)).sum(axis=1)
    return float(np.sum(alpha * rho) / np.sum(alpha))


def ref_procrustes(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """scipy's orthogonal Procrustes on centred, unit-norm, zero-padded matrices: (angle,
    distance)."""
    width = max(x.shape[1], y.shape[1])
    a, b = (np.pad(centred(m) / np.linalg.norm(centred(m)), ((0, 0), (0, width - m.shape[1])))
            for m in (x, y))
    rotation, _ = scipy.linalg.orthogonal_procrustes(a, b)
    return float(np.arccos(np.sum(a @ rotation * b))), float(np.linalg.norm(a @ rotation - b))


def ref_r2(x: np.ndarray, y: np.ndarray) -> float:
    prediction = LinearRegression().fit(x, y).predict(x)
    return float(r2_score(y, prediction, multioutput="variance_weighted"))


def ref_neighbours(a: np.ndarray, k: int) -> list[set]:
    """k nearest other examples by cosine distance (scikit-learn)."""
    _, found = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(a).kneighbors(a)
    return [set(row) - {i} for i, row in enumerate(found)]


def ref_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean([len(a & b) / k for a, b in zip(ref_neighbours(x, k),
                                                         ref_neighbours(y, k))]))


def ref_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """platonic-rep's cknna (unbiased) on row-normalised features, written out."""
    n = len(x)

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def mask(g):
        mask = np.zeros((n, n))
        for i in range(n):
            others = [j for j in np.argsort(-g[i]) if j != i]
            mask[i, others[:k]] = 1
        return mask

    def hsic(k_, l_):  # Song et al. 2012, eq. 5
        kt, lt, one = k_ - np.diag(np.diag(k_)), l_ - np.diag(np.diag(l_)), np.ones(n)
        return (np.trace(kt @ lt) + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))

    def align(k_, l_):
        m = mask(k_) * mask(l_)
        return hsic(m * k_, m * l_)

    kx, ly = unit(x) @ unit(x).T, unit(y) @ unit(y).T
    return float(align(kx, ly) / np.sqrt(align(kx, kx) * align(ly, ly)))


def ref_rsa(x: np.ndarray, y: np.ndarray, kind: str, method: str) -> float:
    def rdm(a):
        if kind == "euclidean":  # rsatoolbox: squared Euclidean over the channel count
            return scipy.spatial.distance.pdist(a, "sqeuclidean") / a.shape[1]
        return scipy.spatial.distance.pdist(a, "correlation")

    a, b = rdm(x), rdm(y)
    if method == "spearman":
        return float(scipy.stats.spearmanr(a, b).statistic)
    if method == "pearson":
        return float(scipy.stats.pearsonr(a, b).statistic)
    return float(1 - scipy.spatial.distance.cosine(a, b))


REFERENCES = {
    "linear_cka": ref_linear_cka,
    "rbf_cka": lambda x, y: ref_rbf_cka(x, y, 1.0),
    "debiased_linear_cka": lambda x, y: ref_debiased_cka(x @ x.T, y @ y.T),
    "debiased_rbf_cka": lambda x, y: ref_debiased_cka(ref_rbf_gram(x, 1.0),
                                                      ref_rbf_gram(y, 1.0)),
    "minibatch_cka": None,  # below, with batches that divide n
    "mean_cca": lambda x, y: float(np.mean(ref_cca(x, y)[0])),
    "r2_cca": lambda x, y: float(np.mean(ref_cca(x, y)[0] ** 2)),
    "svcca": lambda x, y: float(np.mean(ref_cca(ref_svd_reduce(x, 0.99),
                                                ref_svd_reduce(y, 0.99))[0])),
    "pwcca": ref_pwcca,
    "procrustes_angular": lambda x, y: ref_procrustes(x, y)[0],
    "procrustes_distance": lambda x, y: ref_procrustes(x, y)[1],
    "linear_r2_x_to_y": ref_r2,
    "linear_r2_y_to_x": lambda x, y: ref_r2(y, x),
    "mutual_knn": lambda x, y: ref_mutual_knn(x, y, 10),
    "cknna": lambda x, y: ref_cknna(x, y, 10),
    **{f"rsa_{kind}_{method}": (lambda x, y, kind=kind, method=method:
                                ref_rsa(x, y, kind, method))
       for kind in ("euclidean", "correlation") for method in ("spearman", "pearson", "cosine")},
}


def test_every_measure_has_a_reference():
    assert set(REFERENCES) == set(MEASURES)


@pytest.mark.parametrize("name", [name for name, ref in REFERENCES.items() if ref])
def test_each_measure_equals_its_reference_on_fixed_inputs(name):
    x, y = sample(0)
    for a, b in ((x, y), (y, x), (x[:, :4], y)):
        assert choose(name)(a, b) == pytest.approx(REFERENCES[name](a, b), rel=1e-8, abs=1e-10)


def test_minibatch_cka_equals_its_reference():
    x, y = sample(1, n=24)
    assert choose("minibatch_cka:batch_size=8")(x, y) == pytest.approx(
        ref_minibatch_cka(x, y, 8), rel=1e-9)


def test_canonical_correlations_agree_with_principal_angles_and_scikit_learn():
    x, y = sample(2)
    rho = measures.canonical_correlations(x, y)
    angles = scipy.linalg.subspace_angles(centred(x), centred(y))
    np.testing.assert_allclose(rho, np.sort(np.cos(angles))[::-1], atol=1e-10)
    np.testing.assert_allclose(rho, ref_cca(x, y)[0][:len(rho)], atol=1e-8)
    first = CCA(n_components=1, max_iter=5000, tol=1e-12).fit(x, y)
    u, v = first.transform(x, y)
    assert np.corrcoef(u[:, 0], v[:, 0])[0, 1] == pytest.approx(rho[0], abs=1e-6)
    # Kornblith et al.'s normalisations by p1 (full rank, p1 ≤ p2)
    small = x[:, :5]
    qx, qy = np.linalg.qr(centred(small))[0], np.linalg.qr(centred(y))[0]
    assert measures.mean_cca(small, y) == pytest.approx(
        np.linalg.norm(qy.T @ qx, "nuc") / 5, rel=1e-10)
    assert measures.r2_cca(small, y) == pytest.approx(np.linalg.norm(qy.T @ qx) ** 2 / 5,
                                                      rel=1e-10)


def test_svcca_keeps_a_count_or_a_share_of_variance():
    x, y = sample(3)
    for keep in (1, 3, 5):
        expected = np.mean(ref_cca(ref_svd_reduce(x, keep), ref_svd_reduce(y, keep))[0])
        assert measures.svcca(x, y, keep) == pytest.approx(expected, rel=1e-8)
    assert measures.svd_reduce(x, 1.0).shape == (60, 9)
    assert measures.svd_reduce(x, 0.5).shape[1] < measures.svd_reduce(x, 0.99).shape[1] < 9
    assert measures.svcca(x, y, 1.0) == pytest.approx(measures.mean_cca(x, y), rel=1e-10)
    with pytest.raises(ValueError, match="share of variance"):
        measures.svd_reduce(x, 1.5)


def test_measures_on_handwritten_inputs():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    rotated = x @ np.array([[0.0, -1.0], [1.0, 0.0]]) * 2.0 + 5.0
    assert measures.procrustes_angular(x, rotated) == pytest.approx(0.0, abs=1e-7)
    assert measures.mean_cca(x, rotated) == pytest.approx(1.0)
    assert measures.linear_r2(x, rotated) == pytest.approx(1.0)
    # condensed RDMs in scipy's pair order: (0,1), (0,2), (0,3), ...
    assert measures.rdm(x)[:3] == pytest.approx([0.5, 0.5, 1.0])


# ---- declared invariances, both ways

def transformed(kind: str, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = a.shape[1]
    if kind == ORTHOGONAL:
        return a @ scipy.stats.ortho_group.rvs(p, random_state=rng)
    if kind == SCALING:
        return 3.7 * a
    if kind == TRANSLATION:
        return a + 2.0 * a.std() * rng.normal(size=p)
    if kind == LINEAR:  # condition number 10
        q1, q2 = (scipy.stats.ortho_group.rvs(p, random_state=rng) for _ in range(2))
        return a @ (q1 * np.logspace(0, 1, p)) @ q2
    assert kind == PERMUTATION
    return a[:, rng.permutation(p)]


@pytest.mark.parametrize("seed", [10, 11])
@pytest.mark.parametrize("name", list(MEASURES))
def test_declared_invariances_hold_and_undeclared_ones_do_not(name, seed):
    measure = MEASURES[name]
    x, y = sample(seed)
    rng = np.random.default_rng(seed)
    base = measure.function(x, y)
    for side in ("x", "y"):
        for kind in TRANSFORMS:
            value = (measure.function(transformed(kind, x, rng), y) if side == "x"
                     else measure.function(x, transformed(kind, y, rng)))
            if kind in measure.invariant(side):
                assert value == pytest.approx(base, rel=1e-8, abs=1e-8), (side, kind)
            else:
                assert abs(value - base) > 1e-6, f"{name} is invariant to {kind} of {side}"


@pytest.mark.parametrize("name", list(MEASURES))
def test_declared_symmetry(name):
    measure = MEASURES[name]
    x, y = sample(12)
    if measure.symmetric:
        assert measure.function(x, y) == pytest.approx(measure.function(y, x), rel=1e-10)
    else:
        assert abs(measure.function(x, y) - measure.function(y, x)) > 1e-6


def test_declarations_are_consistent():
    for measure in MEASURES.values():
        for side in ("x", "y"):
            if LINEAR in measure.invariant(side):  # an invertible map includes these
                assert {ORTHOGONAL, SCALING, PERMUTATION} <= measure.invariant(side)
        assert measure.kind in ("similarity", "distance")
        assert not measure.metric or (measure.symmetric and measure.kind == "distance")
        assert measure.function.__doc__


@pytest.mark.parametrize("name", [n for n, m in MEASURES.items() if m.metric])
def test_metric_axioms(name):
    distance = MEASURES[name].function
    rng = np.random.default_rng(13)
    shapes = [rng.normal(size=(30, p)) * rng.uniform(0.1, 3, size=p) for p in (3, 5, 8)] * 2
    shapes = [s + rng.normal(size=s.shape) * 0.5 * i for i, s in enumerate(shapes)]
    for a in shapes:
        assert distance(a, a) == pytest.approx(0.0, abs=1e-6)
        same = 2.0 * a @ scipy.stats.ortho_group.rvs(a.shape[1], random_state=rng) + 1.0
        assert distance(a, same) == pytest.approx(0.0, abs=1e-6)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            assert distance(a, b) > 1e-3
            assert distance(a, b) == pytest.approx(distance(b, a), rel=1e-10)
            for c in shapes:
                assert distance(a, c) <= distance(a, b) + distance(b, c) + 1e-10


# ---- calibrated scores

@pytest.mark.parametrize("name", ["linear_cka", "svcca", "rsa_euclidean_spearman", "pwcca"])
def test_permutation_null_is_the_documented_one(name):
    x, y = sample(14, n=40)
    choice, permutations, seed, reference = choose(name), 30, 5, REFERENCES[name]
    result = calibrated(choice, x, y, permutations, seed)
    rng = np.random.default_rng(seed)
    null = np.array([reference(x, y[rng.permutation(40)]) for _ in range(permutations)])
    assert result["value"] == pytest.approx(reference(x, y))
    assert result["null_mean"] == pytest.approx(null.mean(), rel=1e-8)
    assert result["null_sd"] == pytest.approx(null.std(ddof=1), rel=1e-6)
    assert result["z"] == pytest.approx((result["value"] - null.mean()) / null.std(ddof=1))
    assert result["p"] == pytest.approx((1 + np.sum(null >= result["value"])) / 31)
    assert result["p"] == pytest.approx(1 / 31)  # related: no shuffle does as well
    assert calibrated(choice, x, y, permutations, seed) == result  # seeded
    assert calibrated(choice, x, y, permutations, seed + 1) != result


def test_calibration_of_unrelated_representations_and_of_distances():
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    unrelated = calibrated(choose("mean_cca"), x, y, 50, 0)
    assert unrelated["null_mean"] > 0.1  # what unrelated data score at this size
    assert abs(unrelated["z"]) < 3 and unrelated["p"] > 0.01
    # a distance is significant when small: p counts null values at or below it
    a, b = sample(16, n=40)
    close = calibrated(choose("procrustes_angular"), a, b, 20, 0)
    assert close["z"] < 0 and close["p"] == pytest.approx(1 / 21)
    table = calibrated_table(choose("procrustes_angular"), [a, b], [b], 20, 0)
    assert table["p"].shape == (2, 1) and table["value"][0, 0] == close["value"]
    with pytest.raises(ValueError, match="at least 2"):
        calibrated(choose("mean_cca"), x, y, 1)


def test_tables_equal_the_pairwise_values():
    x, y = sample(17, n=30)
    xs, ys = [x, x[:, :3]], [y, y ** 2, x]
    for name in MEASURES:
        choice = choose(name)
        expected = [[choice(a, b) for b in ys] for a in xs]
        np.testing.assert_allclose(choice.table(xs, ys), expected, rtol=1e-10, atol=1e-12)


def test_reordered_representations_equal_reordered_activations():
    # what a layer's Representation has derived follows a permutation of its rows
    x, y = sample(18, n=30)
    order = np.random.default_rng(18).permutation(30)
    for name in MEASURES:
        choice = choose(name)
        px, py = choice.prepare([x, y])
        choice(px, py)  # derive everything once
        moved = py.rows(order) if isinstance(py, Representation) else py[order]
        assert choice(px, moved) == pytest.approx(choice(x, y[order]), rel=1e-9, abs=1e-12)


def test_choosing_measures_by_name():
    choice = choose("svcca:keep=20")
    assert choice.params == {"keep": 20} and choice.column == "svcca:keep=20"
    assert choose("mutual_knn:k=10").column == "mutual_knn"  # the default is not spelt out
    assert choose("rbf_cka:threshold=0.5").params == {"threshold": 0.5}
    for text, message in [("svca", "did you mean 'svcca'"), ("svcca:kep=3", "parameters: keep"),
                          ("mutual_knn:k=2.5", "is not int")]:
        with pytest.raises(ValueError, match=message):
            choose(text)


# ---- `labkit similarity` on a trained run

def test_similarity_command_writes_one_table_per_measure_with_its_null(registries, tmp_path):
    run = one_run(net_spec("cnn_xs", tmp_path / "logs", epochs=1), registries)
    assert train(run, registries, progress=False) == "finished"
    out = tmp_path / "similarity"
    arguments = [str(run.directory), str(run.directory), "--layers-a", "block1,block2",
                 "--layers-b", "block2", "--measure", "pwcca", "--measure",
                 "mutual_knn:k=5", "--measure", "procrustes_angular", "--permutations", "4",
                 "--seed", "3", "--max-samples", "120", "-o", str(out)]
    result = CliRunner().invoke(similarity_command, arguments)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "similarity_table.csv")
    assert list(table.columns[:7]) == ["layer_a", "layer_b", "pwcca", "pwcca_null_mean",
                                       "pwcca_null_sd", "pwcca_z", "pwcca_p"]
    assert (table["samples"] == 120).all() and (table["permutations"] == 4).all()
    # the values are the measures of the layers' activations on the first 120 images
    data = build_component(registries, "datasets", run.config["dataset"])
    images, _ = next(iter(DataLoader(data.evals["eval"], batch_size=120)))
    with torch.no_grad():
        outputs = cut.bottom(trained_network(run), ["block1", "block2"]).eval()(images)
    acts = {layer: value.flatten(1).double().numpy() for layer, value in outputs.items()}
    for (layer, _), row in zip([("block1", 0), ("block2", 1)], table.itertuples()):
        assert row.pwcca == pytest.approx(measures.pwcca(acts[layer], acts["block2"]))
    same = table[table["layer_a"] == "block2"].iloc[0]
    assert same["mutual_knn:k=5"] == 1.0 and same["procrustes_angular"] < 1e-6
    assert same["mutual_knn:k=5_p"] == pytest.approx(1 / 5)  # nothing beats identity
    record = json.loads((out / "similarity_table.provenance.json").read_text())
    assert record["command"] == "similarity"
    assert record["parameters"]["measures"] == {"pwcca": {}, "mutual_knn:k=5": {
        "k": 5, "normalize": True}, "procrustes_angular": {}}
    assert (out / "similarity.png").stat().st_size > 0

    bad = CliRunner().invoke(similarity_command, [*arguments[:2], "--measure", "cka"])
    assert isinstance(bad.exception, UserError)
    assert str(bad.exception).startswith("--measure: unknown measure 'cka'")

"""k-NN and linear probes, their folding into the network's fc, and their log columns."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labkit.api import build_component, runinfo
from labkit.api import train as labkit_train
from labkit_dino.probing import fit_probes
from labkit_dino.report import report_sections


def blobs(n, classes, dim, seed, scale):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(classes, dim)) * scale
    y = rng.integers(classes, size=n)
    # features on very different scales: standardisation matters
    x = (centers[y] + rng.normal(size=(n, dim))) * np.geomspace(0.01, 100, dim)
    return x, y


def test_probes_match_scikit_learn_pipelines_and_the_folded_map_decides_alike():
    train, test = blobs(300, 4, 6, 0, 1.5), blobs(200, 4, 6, 1, 1.5)
    result = fit_probes(train, {"eval": test}, num_classes=4, k=7)
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(7)).fit(*train)
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(*train)
    assert result.knn["eval"] == knn.score(*test)
    assert result.linear["eval"] == linear.score(*test)
    assert 0.5 < result.linear["eval"] < 1.0
    folded = torch.from_numpy(test[0]).float() @ result.weight.T + result.bias
    assert (folded.argmax(1).numpy() == linear.predict(test[0])).mean() >= 0.995


def test_folding_handles_two_classes_and_classes_missing_from_training():
    x, y = blobs(200, 2, 3, 0, 3.0)
    y = y * 2  # labels 0 and 2 of 3 classes: class 1 never seen
    result = fit_probes((x, y), {"eval": (x, y)}, num_classes=3, k=5)
    logits = torch.from_numpy(x).float() @ result.weight.T + result.bias
    assert (logits.argmax(1).numpy() == y).mean() == pytest.approx(result.linear["eval"], abs=0.01)
    assert (logits.argmax(1) != 1).all()


def test_without_standardisation_distances_use_raw_features():
    train, test = blobs(300, 3, 6, 0, 1.5), blobs(100, 3, 6, 1, 1.5)
    result = fit_probes(train, {"eval": test}, num_classes=3, k=5, standardize=False)
    assert result.knn["eval"] == KNeighborsClassifier(5).fit(*train).score(*test)


def test_run_logs_probe_columns_and_eval_columns_score_the_student_linear_probe(
        dino_run, dino_registries):
    run = dino_run(epochs=3, probe_every=2, student_init="random")
    assert labkit_train(run, dino_registries, progress=False) == "finished"
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    columns = [f"probe-eval-{net}-{kind}" for net in ("student", "teacher")
               for kind in ("knn", "linear")]
    # probing epochs: 2 (every 2) and 3 (the last)
    assert log[columns].isna().all(axis=1).tolist() == [True, False, False]
    probed = log.dropna(subset=columns)
    assert ((probed[columns] > 0.5) & (probed[columns] <= 1)).all().all()
    eval_size = len(build_component(dino_registries, "datasets",
                                    run.config["dataset"]).evals["eval"])
    assert np.allclose(probed["eval-accuracy"], probed["probe-eval-student-linear"],
                       atol=1 / eval_size + 1e-9)
    # before the first probe the classifier is all zeros: uniform logits
    assert log["eval-loss"][0] == pytest.approx(np.log(10))
    ((title, body),) = report_sections([run])  # its section of `labkit report`
    assert "DINO" in title and body.count("<tr") == 3  # header, student, teacher
    assert f"{probed['probe-eval-teacher-knn'].iloc[-1]:.4g}" in body

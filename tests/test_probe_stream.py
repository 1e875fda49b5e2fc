"""Probes without latents: the streamed solver against scikit-learn, and `probes --stream`
against the extract-then-probe path on a tiny trained run (no latent file written)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labkit.analyses import FinishedRun
from labkit.cli import cli, plugins
from labkit.measures import logistic_stream
from labkit.measures.layers import measured_layers
from labkit.spec import expand
from labkit.store.identity import RunConfig

CS = [0.5, 2.0]
SPEC = {"model": "lenet5", "dataset": {"name": "digits", "resolution": 8, "subset": 500},
        "epochs": 1, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05},
        "analyses": [{"name": "probes", "stream": True, "C": CS, "downsampling": 2}]}
COLUMNS = ["layer", "downsampling", "features", "train_accuracy", "eval_accuracy",
           "converged", "fit_seconds", "latents_digest", "probe_C", "probe_max_iter",
           "probe_tol", "probe_standardize", "probe_solver", "probe_mode"]


def test_streamed_fits_equal_scikit_learn_for_every_feature_set_and_C():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    centres = rng.normal(size=(4, 6))
    flat = (centres[labels] + rng.normal(scale=2.0, size=(300, 6))).astype(np.float32)
    # two rows per image (as pixelwise latents), each taking its image's label
    pairs = (np.repeat(centres[labels], 2, axis=0)
             + rng.normal(scale=3.0, size=(600, 6))).astype(np.float32)
    sets = {"flat": (flat, labels), "pairs": (pairs, np.repeat(labels, 2))}
    evaluations = []

    def passes(split):
        evaluations.append(split)
        for first in range(0, 300, 64):  # batches of 64 images
            yield ({"flat": torch.from_numpy(flat[first:first + 64]),
                    "pairs": torch.from_numpy(pairs[2 * first:2 * (first + 64)])},
                   torch.from_numpy(labels[first:first + 64]))

    result = logistic_stream.fit(passes, ["train"], 4, CS)  # "train" scored once more
    assert result.passes == {"train": evaluations.count("train")}
    # one pass for the statistics, then passes shared by every problem's evaluations
    assert result.passes["train"] < sum(f.n_iter for f in result.fits.values())
    for (name, C), fitted in result.fits.items():
        x, y = sets[name]
        reference = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-4,
                                                                       max_iter=1000)).fit(x, y)
        model = reference[-1]
        assert fitted.converged
        # the same minimiser, to the tolerance both stop at (largest gradient entry 1e-4)
        assert np.abs(fitted.weight.numpy() - model.coef_).max() < 2e-3, (name, C)
        assert np.abs(fitted.bias.numpy() - model.intercept_).max() < 2e-3, (name, C)
        assert fitted.train_accuracy == pytest.approx(reference.score(x, y), abs=1 / len(y))
        assert fitted.scores["train"] == pytest.approx(fitted.train_accuracy)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A run trained by `labkit run` whose spec asks for streamed probes at two C."""
    root = tmp_path_factory.mktemp("stream")
    spec = root / "spec.json"
    spec.write_text(json.dumps({**SPEC, "logs_dir": str(root / "logs")}))
    result = CliRunner().invoke(cli, ["run", str(spec), "--run-id", "S", "--quiet"])
    assert result.exit_code == 0, result.output
    registries = plugins.registries()
    (config,) = expand(json.loads(spec.read_text()), registries)
    return FinishedRun(RunConfig(config, "S"), registries), spec, root


def table(run):
    return pd.read_csv(run.directory / "probe_performances.csv", dtype={"downsampling": str})


def test_stream_writes_every_layer_and_C_and_no_latents(streamed):
    run, _, root = streamed
    rows = table(run)
    assert list(rows.columns) == COLUMNS
    network = [name for name, _ in measured_layers(run.model)]
    for C in CS:
        assert rows.loc[rows["probe_C"] == C, "layer"].tolist() == network
    assert set(rows["probe_mode"]) == {"stream"} and rows["converged"].all()
    assert (rows["eval_accuracy"] > 0.3).all() and rows["latents_digest"].isna().all()
    # no latent file anywhere: no latent_datasets/, no pointer, no .npy
    assert not (root / "latent_datasets").exists()
    assert not list(run.directory.glob("latents_*.json")) and not list(root.rglob("*.npy"))
    # recorded like every analysis: the checkpoint's digest and the parameters
    record = json.loads((run.directory / "analyses" / "probe_performances.csv-2-stream.json")
                        .read_text())
    assert record["inputs"] == {"checkpoint": run.checkpoint_digest}
    assert record["params"]["C"] == CS and record["params"]["stream"] is True


def test_stream_accuracy_equals_the_extract_then_probe_accuracy(streamed):
    run, spec, _ = streamed
    # the latents in float32, as the stream computes them; fitted by scikit-learn itself
    # (the default torch solver matches it: tests/test_probes.py)
    for args in (["extract", str(spec), "--run-id", "S", "-d", "2", "--dtype", "float32"],
                 ["probes", str(spec), "--run-id", "S", "-d", "2", "--no-stream",
                  "-C", "0.5", "-C", "2", "--solver", "sklearn"]):
        result = CliRunner().invoke(cli, [*args, "--quiet"])
        assert result.exit_code == 0, result.output
    rows = table(run)  # both blocks kept: one per downsampling and mode
    stream = rows[rows["probe_mode"] == "stream"].set_index(["probe_C", "layer"])
    stored = rows[rows["probe_mode"] == "latents"].set_index(["probe_C", "layer"])
    assert len(stream) == len(stored) == 2 * 5 and stored["converged"].all()
    images = {"train_accuracy": len(run.data.train_plain),
              "eval_accuracy": len(run.data.evals["eval"])}
    for column, count in images.items():
        # both converge to the same objective's tolerance: at most two images differ
        difference = (stream[column] - stored.loc[stream.index, column]).abs()
        assert difference.max() <= 2 / count + 1e-9, difference


def test_a_complete_stream_is_not_fitted_again(streamed):
    run, spec, _ = streamed
    before = table(run)
    result = CliRunner().invoke(cli, ["probes", str(spec), "--run-id", "S", "--stream"])
    assert result.exit_code == 0 and "already complete" in result.output, result.output
    pd.testing.assert_frame_equal(table(run), before)

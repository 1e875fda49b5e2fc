"""Probes end to end: probe-run, agreement with an independent scikit-learn fit, results
in network order, the cache, the spec analyses and the tail-pattern figure."""
import json
import shutil

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labkit.analyses import FinishedRun, latents
from labkit.analyses.probes import ProbeParams, read_cached, run_probes
from labkit.cli import cli, plugins
from labkit.measures.layers import measured_layers
from labkit.outputs.tail_plot import final_saturation
from labkit.spec import expand
from labkit.store.identity import RunConfig

# lenet5's network order (conv1, conv2, fc1, fc2, fc) is not the alphabetical one
SPEC = {"model": "lenet5", "dataset": {"name": "digits", "resolution": 12}, "epochs": 2,
        "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}, "saturation": {},
        "analyses": ["receptive_field", {"name": "probes", "downsampling": 2}]}


def labkit(*args: str):
    """The real command line, in this process (no interpreter start-up per call)."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 2), result.output  # 2: a UserError, reported
    return result


COLUMNS = ["layer", "downsampling", "features", "train_accuracy", "eval_accuracy",
           "converged", "fit_seconds", "latents_digest", "probe_C", "probe_max_iter",
           "probe_tol", "probe_standardize", "probe_solver", "probe_mode"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """A run trained and probed by `labkit probe-run … -d 2 -d none`."""
    root = tmp_path_factory.mktemp("probes")
    spec = root / "spec.json"
    spec.write_text(json.dumps({**SPEC, "logs_dir": str(root / "logs")}))
    result = labkit("probe-run", str(spec), "--run-id", "P", "-mp", "2", "-d", "2", "-d", "none",
                    "--quiet")
    assert result.exit_code == 0, result.output
    registries = plugins.registries()
    (config,) = expand(json.loads(spec.read_text()), registries)
    return FinishedRun(RunConfig(config, "P"), registries), spec


def results(run):
    return pd.read_csv(run.directory / "probe_performances.csv", dtype={"downsampling": str})


def test_probe_run_probes_every_layer_in_network_order(probed):
    run, _ = probed
    table = results(run)
    assert list(table.columns) == COLUMNS
    network = [name for name, _ in measured_layers(run.model)]
    assert network != sorted(network)
    for mode in ("2", "none"):
        rows = table[table["downsampling"] == mode]
        assert rows["layer"].tolist() == network
        manifest = latents.read_manifest(latents.locate(run.run, latents.parse_mode(mode)))
        assert set(rows["latents_digest"]) == {manifest["digest"]}
        assert rows["features"].tolist() == [e["features"] for e in manifest["layers"]]
    assert rows["converged"].all() and (table["eval_accuracy"] > 0.1).all()
    for name in ("receptive_field.csv", "latents_2.json", "latents_none.json"):
        assert (run.directory / name).exists()


def test_probe_accuracies_equal_an_independent_scikit_learn_fit(probed):
    run, _ = probed
    table = results(run)
    for mode in ("2", "none"):
        directory = latents.locate(run.run, latents.parse_mode(mode))
        for _, row in table[table["downsampling"] == mode].iterrows():
            # files paired here by their names, read without labkit
            x, y = (np.load(directory / f"train-{row.layer}.npy").astype(np.float32),
                    np.load(directory / "train-labels.npy"))
            ex, ey = (np.load(directory / f"eval-{row.layer}.npy").astype(np.float32),
                      np.load(directory / "eval-labels.npy"))
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
            assert row.features == x.shape[1]
            # the streamed torch solver minimises scikit-learn's objective: within 0.3 points
            assert abs(row.train_accuracy - probe.score(x, y)) <= 0.003, (mode, row.layer)
            assert abs(row.eval_accuracy - probe.score(ex, ey)) <= 0.003, (mode, row.layer)
            exact = run_probes(directory, params=ProbeParams(solver="sklearn")).set_index("layer")
            assert exact.loc[row.layer, "eval_accuracy"] == probe.score(ex, ey)
            assert exact.loc[row.layer, "probe_solver"] == "sklearn"


def test_second_probes_call_is_served_from_the_cache(probed, tmp_path):
    run, spec = probed
    before = results(run)
    again = labkit("probes", str(spec), "--run-id", "P", "-d", "2", "-d", "none", "-mp", "2")
    assert again.exit_code == 0, again.output
    # a refit would measure new fit times; the cached results carry the first ones
    pd.testing.assert_frame_equal(results(run), before)

    # the cache is keyed by the manifest digest, never by the arrays: a copy of the latents
    # with every array zeroed still gets the first results, so none was refitted
    original = latents.locate(run.run, 2)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    manifest = latents.read_manifest(copy)
    for layer in manifest["plan"]["layers"]:
        for split in manifest["plan"]["splits"]:
            array = np.load(latents.array_path(copy, split, layer), mmap_mode="r+")
            array[:] = 0
            array.flush()
        key = [manifest["digest"], layer, ProbeParams().model_dump(mode="json")]
        assert read_cached(copy, key, list(manifest["plan"]["splits"])) is not None
    paths = labkit("probes", str(copy), "--prefix", "cached")
    assert paths.exit_code == 0, paths.output
    cached = pd.read_csv(run.directory / "cached_probe_performances.csv",
                         dtype={"downsampling": str})
    first = before[before["downsampling"] == "2"].reset_index(drop=True)
    pd.testing.assert_frame_equal(cached, first)
    assert (run.directory / "cached_tail_pattern.png").exists()


def test_spec_analyses_are_skipped_once_complete(probed):
    run, spec = probed
    outputs = [run.directory / n for n in ("receptive_field.csv", "probe_performances.csv",
                                           "tail_pattern.png")]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    result = labkit("run", str(spec), "--run-id", "P", "--quiet")
    assert result.exit_code == 0 and "1 already finished" in result.stdout
    assert [p.stat().st_mtime_ns for p in outputs] == stamps


def test_tail_pattern_shows_the_final_saturation_of_every_probed_layer(probed):
    run, _ = probed
    last = pd.read_csv(run.directory / "log.csv").iloc[-1]
    saturation = final_saturation(run.directory)
    assert set(saturation) == set(results(run)["layer"])
    assert all(saturation[layer] == last[f"eval-saturation_{layer}"] for layer in saturation)
    image = matplotlib.image.imread(run.directory / "tail_pattern.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_probes_without_latents_is_a_clear_error(tmp_path):
    result = labkit("probes", str(tmp_path))
    assert result.exit_code == 2 and "no complete latents" in result.stderr

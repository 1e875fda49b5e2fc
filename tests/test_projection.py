"""PCA-projection inference on a trained run, checked against independent numpy; no mocks."""
import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_saturation import capture, final_model, numpy_cov, numpy_idim, numpy_rows

from labkit import engine
from labkit.analyses.projection import RESULTS_CSV, principal_axes, project
from labkit.cli import cli
from labkit.measures.saturation import intrinsic_dimensionality, spectrum
from labkit.spec import expand
from labkit.store import runinfo
from labkit.store.identity import RunConfig

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64, "epochs": 3,
        "optimizer": {"name": "sgd", "lr": 0.05}, "scheduler": {"name": "cosine"}}
DELTAS = [0.9, 0.99, 1.0]


def test_projection_keeps_the_directions_that_reach_delta_and_is_exact_at_delta_one(
        registries, tmp_path):
    spec = {**TINY, "logs_dir": str(tmp_path / "logs"), "saturation": {},
            "analyses": [{"name": "projection", "deltas": DELTAS}]}
    (config,) = expand(spec, registries)
    run = RunConfig(config, "P")
    assert engine.train(run, registries, progress=False) == "finished"  # runs the analysis

    (csv,) = run.directory.glob("projected_results*.csv")  # named by its params' digest
    table = pd.read_csv(csv)
    assert list(table["delta"]) == DELTAS and set(table["split"]) == {"eval"}
    assert csv.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    final = pd.read_csv(run.directory / runinfo.LOG_CSV).iloc[-1]
    by_delta = table.set_index("delta")
    assert (table["unprojected_accuracy"] == final["eval-accuracy"]).all()
    # every direction kept: the layers are left untouched, so accuracy and loss are the
    # unprojected ones exactly (not up to rounding, and not by luck of a tie)
    assert by_delta.loc[1.0, "accuracy"] == final["eval-accuracy"]
    assert by_delta.loc[1.0, "loss"] == by_delta.loc[1.0, "unprojected_loss"] == final["eval-loss"]
    # a random subspace of the same rank destroys what the principal one keeps
    assert by_delta.loc[0.9, "control_accuracy"] < by_delta.loc[0.9, "accuracy"] - 0.2

    # kept dimensions: the reach count of the final model's channelwise covariance on
    # the un-augmented training split, recomputed with numpy
    model, data = final_model(registries, run)
    store, _ = capture(model)
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.train_plain]))
    widths = {}
    for layer, (output,) in store.items():
        cov = numpy_cov(numpy_rows(output))
        widths[layer] = len(cov)
        for delta in DELTAS:
            assert by_delta.loc[delta, f"kept-dimensions_{layer}"] == numpy_idim(cov, delta, "reach")
        assert by_delta.loc[1.0, f"kept-dimensions_{layer}"] == len(cov)
    for delta in DELTAS:
        shares = [by_delta.loc[delta, f"kept-dimensions_{name}"] / w for name, w in widths.items()]
        assert by_delta.loc[delta, "average_saturation"] == pytest.approx(np.mean(shares))

    assert engine.run_analyses(run, registries) == []  # complete: skipped


def test_projection_of_a_hand_made_layer_keeps_the_counts_that_reach_delta():
    # a linear layer whose outputs have variance shares .5/.3/.15/.05 along the axes
    rows = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = (rows - rows.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(rows.T, correction=0))).T
    rows = rows * torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    cov = torch.cov(rows.T, correction=0)
    assert np.allclose(spectrum(cov), [0.5, 0.3, 0.15, 0.05])
    kept = {delta: intrinsic_dimensionality(spectrum(cov), delta, "reach")
            for delta in (0.45, 0.75, 0.9, 0.96, 1.0)}
    assert kept == {0.45: 1, 0.75: 2, 0.9: 3, 0.96: 4, 1.0: 4}
    # projecting onto those directions keeps the share of variance the count promises
    axes = principal_axes(cov)
    for delta, k in kept.items():
        basis = axes[:, :k]
        projected = project(rows, rows.mean(0), basis @ basis.T)
        kept_share = torch.cov(projected.T, correction=0).trace() / cov.trace()
        assert kept_share >= delta - 1e-9


def test_project_command_follows_the_spec_layers_and_reports_mistakes(
        registries, tmp_path, write_spec):
    spec = {**TINY, "epochs": 1, "saturation": {"layers": ["block*"]}}
    path = write_spec(spec)
    project = functools.partial(CliRunner().invoke, cli, catch_exceptions=False)
    result = project(["project", str(path), "--run-id", "C"])
    assert result.exit_code == 2 and "not started, not finished" in result.stderr

    (config,) = expand({**spec, "logs_dir": str(tmp_path / "logs")}, registries)
    assert engine.train(RunConfig(config, "C"), registries, progress=False) == "finished"
    result = project(["project", str(path), "--run-id", "C", "--deltas", "0.5, 1"])
    assert result.exit_code == 0, result.stderr
    (csv,) = (tmp_path / "logs").rglob("projected_results-*.csv")  # not the defaults' name
    table = pd.read_csv(csv)
    assert list(table["delta"]) == [0.5, 1.0]
    assert [c for c in table.columns if c.startswith("kept-dimensions_")] == [
        "kept-dimensions_block1-conv1", "kept-dimensions_block2-conv1"]  # not fc
    record = json.loads((csv.parent / "analyses" / f"{csv.name}.json").read_text())
    assert record["params"]["deltas"] == [0.5, 1.0]
    again = project(["project", str(path), "--run-id", "C", "--deltas", "0.5,1"])
    assert again.exit_code == 0 and "up to date" in again.stdout
    # the defaults' projection (as the spec's analysis writes it) does not overwrite it
    default = project(["project", str(path), "--run-id", "C"])
    assert default.exit_code == 0, default.stderr
    assert len(pd.read_csv(csv.parent / RESULTS_CSV)) > 2
    assert list(pd.read_csv(csv)["delta"]) == [0.5, 1.0]

    bad = project(["project", str(path), "--run-id", "C", "--deltas", "0.9,1.5"])
    assert bad.exit_code == 2 and "less than or equal to 1" in bad.stderr

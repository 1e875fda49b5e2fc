"""A stitching grid with unstitchable cells, seeds and the latest-layer summary: layer
names checked at validation, cells checked before training, the tables written anyway."""
import json

import numpy as np
import pandas as pd
import pytest
from stitch_helpers import ENV, example_runs, net_spec, self_stitch

from labkit.api import RunConfig, UserError, expand
from labkit.testing import run_here
from labkit_stitch.stitching import CellChecker


@pytest.mark.parametrize("side, wrong, close", [("sender_layer", "blok2", "block2"),
                                                ("receiver_layer", "flaten", "flatten")])
def test_a_missing_layer_is_an_error_at_validation_with_close_matches(registries, tmp_path,
                                                                      side, wrong, close):
    spec = self_stitch(net_spec("cnn_xs", tmp_path), "block1", "block2")
    spec["model"][side] = wrong
    with pytest.raises(UserError, match=rf"model\.{side}: .*layer '{wrong}' is not in "
                                        rf"PlainConvNet; did you mean '{close}'"):
        expand(spec, registries)
    assert not (tmp_path / "cnn_xs").exists()  # nothing was trained to find out


def test_cells_are_checked_on_the_architectures_before_anything_trains(registries, tmp_path):
    nets = net_spec("resnet18_xxs", tmp_path)
    spec = self_stitch(nets, ["layer1", "flatten"], ["layer2-0-conv1", "layer2", "fc"])
    runs = [RunConfig(c, "T") for c in expand(spec, registries)]
    checker = CellChecker()
    cells = {(r.config["model"]["sender_layer"], r.config["model"]["receiver_layer"]): checker(r)
             for r in runs}
    assert "skip connection" in cells[("layer1", "layer2-0-conv1")].problem
    assert "shape (64,) into one of shape (16, 4, 4)" in cells[("flatten", "layer2")].problem
    assert cells[("layer1", "layer2")].problem is None
    assert cells[("layer1", "fc")].problem is None  # a map into a vector: flattened
    assert cells[("flatten", "fc")].problem is None
    assert cells[("layer1", "fc")].sender_depth < cells[("flatten", "fc")].sender_depth
    assert not (tmp_path / "resnet18_xxs").exists()  # checked untrained


def test_stitch_table_records_unstitchable_cells_averages_seeds_and_finds_the_latest_layer(
        tmp_path, write_spec, registries):
    nets = net_spec("cnn_xs", tmp_path / "logs", epochs=2)
    # the spec's order of A's layers is not their depth: the summary must use the depth
    spec = write_spec({"name": "grid", **self_stitch(nets, ["block2", "flatten", "block1"],
                                                     "block2", seed=[0, 1])})
    out = tmp_path / "tables"
    dry = run_here("stitch-table", str(spec), "--run-id", "T", "--dry-run", env=ENV)
    assert dry.returncode == 0, dry.stderr
    assert "6 stitch run(s) validated, 2 of unstitchable cells; nothing trained" in dry.stdout
    assert not (tmp_path / "logs").exists()

    result = run_here("stitch-table", str(spec), "--run-id", "T", "-o", str(out), "-q",
                     "--tolerance", "0.05", "--no-cka", env=ENV)
    assert result.returncode == 0, result.stderr
    assert "4 run(s): 4 finished" in result.stdout
    assert "2 unstitchable cell(s), left empty" in result.stdout

    table = pd.read_csv(out / "stitch_table.csv")
    assert len(table) == 6 and table["group"].nunique() == 2  # one group per seed
    flat = table[table["sender_layer"] == "flatten"]
    assert flat["unstitchable"].str.contains(r"shape \(32,\) into one of shape \(32, 2, 2\)").all()
    assert flat["stitched"].isna().all()
    assert not any(pd.io.common.file_exists(d) for d in flat["stitch_run"])  # never trained
    fine = table[table["sender_layer"] != "flatten"]
    assert fine["unstitchable"].isna().all() and fine["stitched"].notna().all()
    for _, row in fine.iterrows():  # the values are the runs' own
        log = pd.read_csv(f"{row['stitch_run']}/log.csv")
        assert log["eval-accuracy"].iloc[-1] == row["stitched"]
    for group in table["group"].unique():
        assert (out / f"stitch_{group}.png").stat().st_size > 0

    # mean over the seed axis: mean, sample std and n of the per-seed values
    means = pd.read_csv(out / "stitch_mean.csv")
    assert len(means) == 3 and means["group"].nunique() == 1
    assert (means["averaged_over"] == "seed").all()
    for _, row in means.iterrows():
        values = table.loc[table["sender_layer"] == row["sender_layer"], "stitched"].dropna()
        assert row["stitched_n"] == len(values)
        if len(values):
            assert row["stitched_mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert row["stitched_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        else:
            assert "shape (32,)" in row["unstitchable"] and np.isnan(row["stitched_mean"])
        # the direct-matching stitch does not depend on the stitch's seed: one value, twice
        direct = table.loc[table["sender_layer"] == row["sender_layer"], "direct_match"]
        assert row["direct_match_n"] == direct.notna().sum() == (2 if len(values) else 0)
        if len(values):
            assert direct.nunique() == 1 and row["direct_match_std"] == 0
            assert row["direct_match_mean"] == direct.iloc[0]
    assert means["matching_layers"].all() and not means["beats_diagonal"].any()
    assert (out / f"stitch_mean_{means['group'].iloc[0]}.png").stat().st_size > 0

    # the latest layer of A that stitches: recomputed from the table, depth block1 < block2
    depth = {"block1": 1, "block2": 2, "flatten": 3}
    for latest_file, rows, stitched, receiver in (
            ("stitch_latest.csv", table, "stitched", "receiver"),
            ("stitch_mean_latest.csv", means, "stitched_mean", "receiver_mean")):
        latest = pd.read_csv(out / latest_file).set_index("group")
        for group, cells in rows.groupby("group"):
            good = cells[cells[stitched] >= cells[receiver] - 0.05]
            expected = max(good["sender_layer"], key=depth.get) if len(good) else np.nan
            found = latest.loc[group, "latest_sender_layer"]
            assert found == expected or (pd.isna(found) and pd.isna(expected))
            assert latest.loc[group, "stitching_cells"] == len(good)
            assert latest.loc[group, "cells"] == cells[stitched].notna().sum() == 2
    record = json.loads((out / "stitch_table.provenance.json").read_text())
    assert {"stitch_table.csv", "stitch_latest.csv", "stitch_mean.csv",
            "stitch_mean_latest.csv"} <= set(record["files"])
    assert record["parameters"]["average_over"] == ["seed"]

    bad = run_here("stitch-table", str(spec), "--run-id", "T", "--average-over", "sed",
                  "--dry-run", env=ENV)
    assert bad.returncode == 2 and "--average-over sed: not a config key" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_example_spec_has_unstitchable_flatten_cells_only(registries, tmp_path,
                                                              monkeypatch):
    runs = example_runs("stitch_unstitchable.json", registries, monkeypatch, tmp_path)
    checker = CellChecker()
    problems = {r.config["model"]["sender_layer"]: checker(r).problem for r in runs}
    assert len(runs) == 12 and set(problems) == {"block1", "block2", "flatten"}
    assert problems["block1"] is None and problems["block2"] is None
    assert "shape (32,) into one of shape (32, 2, 2)" in problems["flatten"]
    assert not (tmp_path / "logs").exists()

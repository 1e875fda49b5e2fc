"""`labkit stitch-table` and `labkit similarity` from the command line, with the plugin loaded
through its entry point; the grouping of a grid into tables."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from stitch_helpers import ENV, nets_file, self_stitch

from labkit.api import RunConfig, expand, load_runs
from labkit.testing import run_here
from labkit_stitch.report import CKA_TITLE, STITCH_TITLE, report_sections
from labkit_stitch.tables import COLUMNS, stitch_table


def test_stitch_table_trains_the_networks_then_the_grid_and_writes_the_tables(tmp_path,
                                                                              write_spec,
                                                                              registries):
    # network A, referenced by spec file and trained on demand
    spec = write_spec(self_stitch(nets_file(tmp_path, epochs=3), ["block1", "block2"],
                                  ["block1", "block2"], ["trained", "random"], name="self"))
    out = tmp_path / "logs" / "stitch_tables" / "self" / "T"  # the default folder
    result = run_here("stitch-table", str(spec), "--run-id", "T", "-q",
                     "--measure", "procrustes_angular", "--measure", "svcca:keep=3",
                     "--permutations", "3", env=ENV)
    assert result.returncode == 0, result.stderr
    assert "8 run(s): 8 finished" in result.stdout
    assert "debiased (rows: sender_layer, columns: receiver_layer)" in result.stdout

    table = pd.read_csv(out / "stitch_table.csv")
    companions = [f"{m}{s}" for m in ("procrustes_angular", "svcca:keep=3")
                  for s in ("", "_null_mean", "_null_sd", "_z", "_p")]
    assert list(table.columns) == COLUMNS + companions
    assert list(zip(table["sender_layer"], table["receiver_layer"])) == [
        ("block1", "block1"), ("block1", "block2"), ("block2", "block1"), ("block2", "block2")]
    np.testing.assert_allclose(table["debiased"], table["stitched"] - table["random_sender"])
    np.testing.assert_allclose(table["penalty"], table["receiver"] - table["stitched"])
    net_log = pd.read_csv(next((tmp_path / "logs" / "cnn_xs").rglob("log.csv")))
    assert (table["sender"] == table["receiver"]).all()
    assert table["receiver"].iloc[0] == net_log["eval-accuracy"].iloc[-1]
    for column in ("stitch_run", "random_stitch_run"):
        stitch_log = pd.read_csv(f"{table[column].iloc[3]}/log.csv")
        value = table["stitched" if column == "stitch_run" else "random_sender"].iloc[3]
        assert stitch_log["eval-accuracy"].iloc[-1] == value
    # the direct-matching stitch of a network with itself at one layer: the identity map
    same_layer = table["sender_layer"] == table["receiver_layer"]
    np.testing.assert_allclose(table.loc[same_layer, "direct_match"], table["receiver"][0],
                               atol=0.01)
    assert table["direct_match"].notna().all() and table["matching_layers"].all()
    assert not table.loc[same_layer, "beats_diagonal"].any()
    assert "direct_match (rows: sender_layer, columns: receiver_layer)" in result.stdout
    (group,) = table["group"].unique()
    assert group.startswith("cnn_xs-to-cnn_xs-")
    assert (out / f"stitch_{group}.png").stat().st_size > 0

    cka = pd.read_csv(out / "cka_table.csv")
    assert len(cka) == 4 and (cka["source_a"] == "network").all()
    same = cka[cka["layer_a"] == cka["layer_b"]]
    np.testing.assert_allclose(same[["linear_cka", "rbf_cka", "minibatch_cka"]], 1.0, atol=1e-9)
    # the companion columns are the pair table's values of each cell's layers
    merged = table.merge(cka, left_on=["sender_layer", "receiver_layer"],
                         right_on=["layer_a", "layer_b"], suffixes=("", "_pair"))
    for column in companions:
        np.testing.assert_allclose(merged[column], merged[f"{column}_pair"])
    np.testing.assert_allclose(same["procrustes_angular"], 0.0, atol=1e-6)
    np.testing.assert_allclose(same["procrustes_angular_p"], 1 / 4)  # nothing is closer
    assert len(list(out.glob("cka_cnn_xs-*-to-cnn_xs-*.png"))) == 1

    # `labkit report` of the grid: its stitching and CKA tables, as the CSVs hold them
    sections = dict(report_sections(load_runs(str(spec), "T")))
    stitched = sections[STITCH_TITLE]
    assert group in stitched and stitched.count("<table") == 3  # stitched, random, debiased
    assert f"{table['debiased'].iloc[3]:.4g}" in stitched
    assert sections[CKA_TITLE].count("<table") == 5  # one per CKA measure, one pair
    assert f"{cka['rbf_cka'].iloc[1]:.4g}" in sections[CKA_TITLE]

    # the same network through `labkit similarity`, by run directory (`labkit cka`, its
    # alias, runs in test_stitch_provenance.py)
    run_dir = str(next((tmp_path / "logs" / "cnn_xs").rglob("log.csv")).parent)
    measures = ("linear_cka", "rbf_cka", "minibatch_cka", "svcca:keep=3")
    result = run_here("similarity", run_dir, run_dir, "--layers-a", "block1,block2",
                     "--layers-b", "block2", "-o", str(tmp_path / "similarity"),
                     *(f"--measure={m}" for m in measures), env=ENV)
    assert result.returncode == 0, result.stderr
    pair = pd.read_csv(tmp_path / "similarity" / "similarity_table.csv")
    expected = cka.set_index(["layer_a", "layer_b"]).loc[[("block1", "block2"),
                                                          ("block2", "block2")]]
    for measure in measures:
        np.testing.assert_allclose(pair[measure], expected[measure], rtol=1e-9)


def test_a_grid_of_network_pairs_gives_one_table_per_pair(registries, tmp_path):
    nets = nets_file(tmp_path, seed=[0, 1])
    a, b = ({"spec": nets, "run_id": "nets", "where": {"seed": seed}} for seed in (0, 1))
    spec = {"model": {"name": "stitched", "sender": [a, b], "receiver": b,
                      "sender_layer": ["block1", "block2"], "receiver_layer": "block2",
                      "sender_weights": ["trained", "random"]},
            "epochs": [1, 2], "logs_dir": str(tmp_path / "logs")}
    runs = [RunConfig(config, "T") for config in expand(spec, registries)]
    table = stitch_table(runs)  # nothing trained yet: the values are empty
    assert len(runs) == 16 and len(table) == 8 and table["group"].nunique() == 4
    assert {"config.model.sender.where.seed", "config.epochs"} <= set(table.columns)
    assert table[["stitched", "random_sender", "receiver"]].isna().all().all()
    for _, rows in table.groupby("group"):
        assert list(rows["sender_layer"]) == ["block1", "block2"]
        assert rows["sender_run"].nunique() == rows["config.epochs"].nunique() == 1


def test_help_lists_the_declared_commands_without_importing_the_plugin():
    # the commands are declared in the `labkit.commands` entry-point group: `labkit --help`
    # names them from the metadata alone, and the plugin's modules stay unimported
    code = ("import sys\nfrom labkit.cli import main\nsys.argv = ['labkit', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.startswith('labkit_stitch')))")
    env = {**os.environ, "LABKIT_PLUGINS": "stitch"}
    env.pop("LABKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout
    for command in ("stitch-table", "similarity", "cka"):
        assert f"  {command} " in out and "plugin command of labkit-stitch" in out
    assert "IMPORTED []" in out

"""`labkit results --table`: every run's probe, projection, receptive-field and plugin
tables across runs, each row keyed by run hash, run-id and config."""
import io

import pandas as pd
import pytest
from click.testing import CliRunner
from test_figures import train_grid

from labkit.cli import cli
from labkit.cli.commands.common import load_runs
from labkit.outputs.results import collect


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    spec = train_grid(tmp_path_factory.getbasetemp() / "figures_grid")
    return spec.parent / "logs", load_runs(str(spec), "G")


def table(logs, name):
    result = CliRunner().invoke(cli, ["results", str(logs), "--table", name])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.output), dtype={"downsampling": str})


@pytest.mark.parametrize("name, pattern", [("probes", "probe_performances.csv"),
                                           ("projection", "projected_results*.csv"),
                                           ("receptive_field", "receptive_field.csv")])
def test_each_analysis_table_holds_every_runs_rows_keyed_by_run(grid, name, pattern):
    logs, runs = grid
    rows = table(logs, name)
    assert set(rows["run_hash"]) == {r.hash for r in runs}
    assert set(rows["config.seed"]) == {0, 1} and set(rows["run_id"]) == {"G"}
    for run in runs:
        mine = rows[rows["run_hash"] == run.hash].reset_index(drop=True)
        (path,) = run.directory.glob(pattern)  # projection: named by its params' digest
        csv = path.name
        own = pd.read_csv(path, dtype={"downsampling": str})
        assert (mine["source"] == csv).all()
        pd.testing.assert_frame_equal(mine[own.columns], own, check_dtype=False)


def test_a_plugin_csv_in_a_run_directory_is_a_table_named_by_its_stem(grid, tmp_path):
    logs, runs = grid
    # the stitch plugin writes CKA tables under <run>/cka/<other run>/cka_table.csv
    folder = runs[0].directory / "cka" / "other"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"layer_a": ["fc"], "cka": [0.5]}).to_csv(folder / "cka_table.csv",
                                                           index=False)
    rows = collect([logs], table="cka_table")
    assert list(rows["run_hash"]) == [runs[0].hash]
    assert rows["source"].iloc[0] == "cka/other/cka_table.csv" and rows["cka"].iloc[0] == 0.5


def test_the_log_table_is_the_default_and_an_unknown_table_names_the_tables(grid):
    logs, runs = grid
    log = table(logs, "log")
    log = log[log["run_hash"].isin({r.hash for r in runs})]  # other tests add runs to logs
    assert len(log) == sum(len(pd.read_csv(r.directory / "log.csv")) for r in runs)
    wrong = CliRunner().invoke(cli, ["results", str(logs), "--table", "probe"])
    assert wrong.exit_code == 2
    assert "'probe'" in wrong.output and "probes" in wrong.output and "projection" in wrong.output

"""labkit.lab, the notebook API: a grid opened from its spec or its logs folder, its
tables, and a trained network that reproduces its logged eval metrics; read-only."""
import json

import pandas as pd
import pytest
import torch
from test_layers_table import trained_grid
from torch.utils.data import DataLoader

import labkit.lab
from labkit.cli import plugins
from labkit.core.errors import UserError
from labkit.outputs.layers import layers_table
from labkit.training.build import make_metrics
from labkit.training.evaluation import evaluate


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return trained_grid(tmp_path_factory.getbasetemp() / "layers_grid")


def test_a_loaded_network_reproduces_the_logged_eval_metrics_exactly(grid):
    _, specs, runs = grid
    opened = labkit.lab.open(specs["probed"], run_id="L")
    (run,) = opened.runs
    assert (run.hash, run.directory, run.state) == (runs["probed"].hash,
                                                    runs["probed"].directory, "finished")
    network = run.network()
    assert not network.training
    data = run.data()
    loader = DataLoader(data.evals["eval"], batch_size=run.config["eval_batch_size"])
    previous = torch.get_num_threads()
    torch.set_num_threads(run.config["threads"])
    try:
        scores = evaluate(network, loader, make_metrics(plugins.registries(),
                                                        run.config["metrics"],
                                                        data.num_classes),
                          torch.device("cpu"))
    finally:
        torch.set_num_threads(previous)
    final = run.log.iloc[-1]
    assert scores["accuracy"] == final["eval-accuracy"]
    assert scores["loss"] == final["eval-loss"]


def test_every_table_of_the_grid_as_pandas(grid):
    logs, specs, runs = grid
    opened = labkit.lab.open(specs["probed"], run_id="L")
    layers = opened.table("layers")
    everything = layers_table([logs])
    mine = everything[everything["run_hash"] == runs["probed"].hash].reset_index(drop=True)
    pd.testing.assert_frame_equal(layers, mine[layers.columns], check_dtype=False)
    assert mine.drop(columns=layers.columns).isna().all().all()
    assert set(opened.tables()) >= {"log", "layers", "probes", "receptive_field"}
    log = opened.results()
    assert list(log["epoch"]) == [1] and log["run_hash"].iloc[0] == runs["probed"].hash
    from_logs = labkit.lab.open_logs(logs)
    assert {r.hash for r in from_logs.runs} == {r.hash for r in runs.values()}
    assert from_logs.run(runs["plain"].hash[:6]).config["seed"] == 1
    assert len(from_logs.table("layers")) == 12


def test_the_api_never_trains(grid, tmp_path):
    _, specs, _ = grid
    spec = json.loads(specs["plain"].read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**spec, "seed": 5}))
    (run,) = labkit.lab.open(other, run_id="L").runs
    assert run.state == "not started" and run.log is None
    with pytest.raises(UserError, match="never trains.*labkit run SPEC --run-id L"):
        run.network()
    assert not run.directory.exists()
    (trained,) = labkit.lab.open(specs["plain"], run_id="L").runs
    with pytest.raises(UserError, match="kept no best.pt"):
        trained.network("best")

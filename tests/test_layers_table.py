"""The per-layer table (`labkit results --table layers`), the layer keys of every
per-layer table, the plugins' layer-measure hook and the intrinsic_dimension analysis,
on one tiny trained grid: a run with saturation, receptive field, probes (whose latents
the intrinsic dimension reads) and a run with saturation and intrinsic dimension only
(from forward hooks)."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from labkit import hookimpl
from labkit.analyses import FinishedRun
from labkit.analyses.intrinsic_dimension import IntrinsicDimension
from labkit.cli import cli, plugins
from labkit.cli.commands.common import load_runs
from labkit.measures.intrinsic_dimension import levina_bickel, twonn
from labkit.measures.layers import measured_layers
from labkit.store.latent_layout import array_path

BASE = {"model": "cnn_xs", "dataset": {"name": "digits", "resolution": 8, "subset": 300},
        "epochs": 1, "batch_size": 64, "saturation": {}, "metrics": ["accuracy"],
        "optimizer": {"name": "sgd", "lr": 0.05}}
ID = {"name": "intrinsic_dimension", "samples": 150, "k": 10, "downsampling": 2}
SPECS = {"probed": {**BASE, "analyses": ["receptive_field", {"name": "probes",
                                                             "downsampling": 2}, ID]},
         "plain": {**BASE, "seed": 1, "analyses": [ID]}}
LAYERS = ["block1-conv1", "block2-conv1", "fc"]  # cnn_xs in network order


def trained_grid(base: Path) -> tuple[Path, dict[str, Path], dict]:
    """Train both specs (logs under ``base/logs``, run-id L) in this process, skipping
    finished runs (test modules share the grid); ``(logs, spec files, runs by spec)``."""
    base.mkdir(parents=True, exist_ok=True)
    files, runs = {}, {}
    for name, spec in SPECS.items():
        files[name] = base / f"{name}.json"
        files[name].write_text(json.dumps({**spec, "name": name,
                                           "logs_dir": str(base / "logs")}))
        result = CliRunner().invoke(cli, ["run", str(files[name]), "--run-id", "L", "--quiet"])
        assert result.exit_code == 0, result.output
        (runs[name],) = load_runs(str(files[name]), "L")
    return base / "logs", files, runs


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return trained_grid(tmp_path_factory.getbasetemp() / "layers_grid")


def results(logs: Path, table: str) -> pd.DataFrame:
    result = CliRunner().invoke(cli, ["results", str(logs), "--table", table])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout), dtype={"downsampling": str})


def test_the_layers_table_holds_every_per_run_csv_value(grid):
    logs, _, runs = grid
    table = results(logs, "layers")
    assert set(table["run_hash"]) == {run.hash for run in runs.values()}
    for run in runs.values():
        rows = table[table["run_hash"] == run.hash].set_index(["layer", "split"])
        assert (rows["config.seed"] == run.config["seed"]).all()
        assert list(rows.index) == [(n, s) for n in LAYERS for s in ("train", "eval")]
        final = pd.read_csv(run.directory / "log.csv").iloc[-1]  # same delta: the config's
        for (layer, split), row in rows.iterrows():
            assert row["saturation"] == final[f"{split}-saturation_{layer}"]
            assert row["intrinsic_dimensionality"] == final[
                f"{split}-intrinsic-dimensionality_{layer}"]
            assert row["saturation_epoch"] == final["epoch"] == 1
        estimates = pd.read_csv(run.directory / "intrinsic_dimension.csv")
        for _, own in estimates.iterrows():
            row = rows.loc[(own["layer"], own["split"])]
            assert (row["twonn"], row["mle"]) == (own["twonn"], own["mle"])
            assert (row["layer_index"], row["relative_depth"]) == (own["layer_index"],
                                                                  own["relative_depth"])
        # network order: the order torch.fx finds, index / (layers - 1)
        assert list(rows["layer_index"]) == [0, 0, 1, 1, 2, 2]
        assert list(rows["relative_depth"]) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    probed = table[table["run_hash"] == runs["probed"].hash].set_index(["layer", "split"])
    probes = pd.read_csv(runs["probed"].directory / "probe_performances.csv")
    fields = pd.read_csv(runs["probed"].directory / "receptive_field.csv")
    for _, own in probes.iterrows():
        for split in ("train", "eval"):
            assert probed.loc[(own["layer"], split), "probe_accuracy_d2"] == \
                own[f"{split}_accuracy"]
    for _, own in fields.iterrows():
        for split in ("train", "eval"):
            row = probed.loc[(own["layer"], split)]
            for column in ("size_h", "size_w", "jump_h", "jump_w"):
                assert row[f"rf_{column}"] == own[column]
            assert (row["border"], row["tail"], row["rf_status"]) == (
                own["border"], own["tail"], own["rf_status"])
    plain = table[table["run_hash"] == runs["plain"].hash]
    assert plain["probe_accuracy_d2"].isna().all() and plain["rf_size_h"].isna().all()


def test_every_per_layer_table_carries_the_layer_keys(grid):
    logs, _, runs = grid
    model = FinishedRun(runs["probed"], plugins.registries()).model
    assert [name for name, _ in measured_layers(model)] == LAYERS
    for name in ("probes", "receptive_field", "intrinsic_dimension", "layers"):
        rows = results(logs, name)
        assert list(rows.columns[rows.columns.get_loc("layer"):][:3]) == [
            "layer", "layer_index", "relative_depth"], name
        assert (rows["layer_index"] == rows["layer"].map(LAYERS.index)).all(), name
        assert (rows["relative_depth"] == rows["layer_index"] / 2).all(), name


def test_the_layers_table_imports_no_torch(grid):
    logs, _, _ = grid
    code = ("import sys\nfrom labkit.cli import main\n"
            f"sys.argv = ['labkit', 'results', {str(logs)!r}, '--table', 'layers']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'labkit.cli.builtins') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "probe_accuracy_d2" in out and out.rstrip().endswith("HEAVY []")


class Plugin:
    """A plugin measuring one layer of every run, and naming a column labkit fills."""

    @staticmethod
    @hookimpl
    def labkit_layer_measures(run_dir, config):
        return pd.DataFrame({"layer": ["fc", "fc"], "split": ["eval", "val"],
                             "my_measure": [float(config["seed"]), 7.0], "twonn": [0.0, 0.0]})


def test_a_plugin_adds_its_layer_measures_through_the_hook(grid):
    logs, _, runs = grid
    plugins.use(Plugin)
    try:
        result = CliRunner().invoke(cli, ["results", str(logs), "--table", "layers"])
    finally:
        plugins.use()
    assert result.exit_code == 0, result.output
    assert "left out a plugin's columns twonn" in result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    for run in runs.values():
        rows = table[table["run_hash"] == run.hash].set_index(["layer", "split"])
        assert rows.loc[("fc", "eval"), "my_measure"] == run.config["seed"]
        assert rows.loc[("fc", "val"), "my_measure"] == 7.0  # a split labkit lacks: a row
        assert rows["my_measure"].notna().sum() == 2
        assert rows.loc[("fc", "eval"), "twonn"] != 0.0  # labkit's own value kept


def sampled_points(run, split: str) -> dict[str, np.ndarray]:
    """The analysis's sample, drawn here by its documented rule, and its rows
    computed here: forward hooks, conv maps average-pooled to 2×2, flattened."""
    finished = FinishedRun(run, plugins.registries())
    data = finished.data
    dataset = {"train": data.train_plain, **data.evals}[split]
    chosen = np.sort(np.random.default_rng(0).choice(len(dataset), ID["samples"],
                                                     replace=False))
    images = torch.stack([dataset[int(i)][0] for i in chosen])
    outputs = {}
    modules = dict(measured_layers(finished.model))
    handles = [modules[name].register_forward_hook(
        lambda m, i, out, name=name: outputs.__setitem__(name, out)) for name in LAYERS]
    with torch.no_grad():
        finished.model(images)
    for handle in handles:
        handle.remove()
    return {name: (F.adaptive_avg_pool2d(out, 2) if out.dim() == 4 else out)
            .flatten(1).double().numpy() for name, out in outputs.items()}


def test_intrinsic_dimension_is_the_estimators_on_the_stated_sample(grid):
    _, _, runs = grid
    for name, read_from in (("plain", "activations"), ("probed", "latents")):
        run = runs[name]
        ids = pd.read_csv(run.directory / "intrinsic_dimension.csv")
        assert (ids["read_from"] == read_from).all()
        assert np.isfinite(ids[["twonn", "mle"]].to_numpy()).all()
        assert list(ids["layer"]) == LAYERS * 2 and list(ids["split"]) == ["train"] * 3 + [
            "eval"] * 3
        for split in ("train", "eval"):
            if read_from == "activations":
                points = sampled_points(run, split)
            else:  # the stored latents (float16) of the same images
                directory = json.loads((run.directory / "latents_2.json").read_text())
                folder = (run.directory / directory["directory"]).resolve()
                count = len(np.load(array_path(folder, split, "labels")))
                chosen = np.sort(np.random.default_rng(0).choice(count, ID["samples"],
                                                                 replace=False))
                points = {layer: np.load(array_path(folder, split, layer))[chosen]
                          for layer in LAYERS}
            for layer, x in points.items():
                row = ids[(ids["layer"] == layer) & (ids["split"] == split)].iloc[0]
                assert row["samples"] == ID["samples"] and row["features"] == x.shape[1]
                assert row["twonn"] == pytest.approx(twonn(x, 0.1), rel=1e-9)
                assert row["mle"] == pytest.approx(levina_bickel(x, ID["k"]), rel=1e-9)


def test_intrinsic_dimension_is_complete_with_its_record(grid):
    _, _, runs = grid
    finished = FinishedRun(runs["plain"], plugins.registries())
    analysis = IntrinsicDimension(finished, IntrinsicDimension.Params(**{
        k: v for k, v in ID.items() if k != "name"}))
    assert analysis.is_complete()
    other = IntrinsicDimension(finished, IntrinsicDimension.Params(samples=100, k=10,
                                                                   downsampling=2))
    assert not other.is_complete()  # other parameters: computed again
    with pytest.raises(ValueError, match="samples > k"):
        IntrinsicDimension.Params(samples=10, k=10)

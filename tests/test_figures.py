"""Figures: what each one plots is the run's data, titles name the run or grid, legends
sit off the data, probe axes span the data; `labkit plot` writes PNG and SVG."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from labkit.cli import cli
from labkit.cli.commands.common import load_runs
from labkit.outputs import figures
from labkit.testing import run_cli

# two seeds of one tiny network, with saturation, receptive fields, probes and projection
GRID = {"name": "figgrid", "model": "cnn_xs", "dataset": {"name": "digits", "resolution": 8},
        "epochs": 2, "batch_size": 64, "seed": [0, 1], "saturation": {},
        "metrics": ["accuracy"], "optimizer": {"name": "sgd", "lr": 0.05},
        "analyses": ["receptive_field", {"name": "probes", "downsampling": 2, "processes": 1},
                     {"name": "projection", "deltas": [0.9, 1.0]}]}


def train_grid(base: Path, spec: dict | None = None, name: str = "grid.json") -> Path:
    """Train ``spec`` (default :data:`GRID`) with logs under ``base/logs``, in this
    process; finished runs are skipped, so test modules share one trained grid."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    path.write_text(json.dumps({**(spec or GRID), "logs_dir": str(base / "logs")}))
    result = CliRunner().invoke(cli, ["run", str(path), "--run-id", "G", "--quiet"])
    assert result.exit_code in (0, 1), result.output  # a test may ask for a failing run
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    spec = train_grid(tmp_path_factory.getbasetemp() / "figures_grid")
    return spec, load_runs(str(spec), "G")


def legends_clear_of_axes(figure) -> None:
    """Every legend lies outside every axes (so it covers no data)."""
    FigureCanvasAgg(figure).draw()
    axes = figure.get_axes()
    legends = [a.get_legend() for a in axes if a.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent()
        for axis in axes:
            assert not box.overlaps(axis.get_window_extent()), (legend, axis)


def test_learning_curves_plot_every_split_of_the_log(grid):
    _, runs = grid
    log = pd.read_csv(runs[0].directory / "log.csv")
    figure = figures.learning_curves(log, f"run {runs[0].directory.name}")
    loss_axis, acc_axis = figure.get_axes()
    lines = {line.get_label(): line for line in acc_axis.get_lines()}
    assert set(lines) == {"train", "eval"}
    np.testing.assert_allclose(lines["eval"].get_ydata(), log["eval-accuracy"])
    np.testing.assert_allclose(loss_axis.get_lines()[0].get_ydata(), log["train-loss"])
    assert runs[0].hash in figure.get_suptitle() and "Learning curves" in figure.get_suptitle()
    low, high = acc_axis.get_ylim()
    assert low <= log[["train-accuracy", "eval-accuracy"]].min().min() and high <= 1.02
    legends_clear_of_axes(figure)


def test_saturation_heat_map_is_layers_by_epochs(grid):
    _, runs = grid
    log = pd.read_csv(runs[0].directory / "log.csv")
    figure = figures.saturation_epochs(log, "run x")
    train_axis = figure.get_axes()[0]
    columns = [c for c in log.columns if c.startswith("train-saturation_")]
    image = train_axis.get_images()[0].get_array()
    np.testing.assert_allclose(image, log[columns].to_numpy().T)  # rows: layers
    assert [t.get_text() for t in train_axis.get_yticklabels()] == \
        [c.split("_", 1)[1] for c in columns]
    assert figures.saturation_epochs(log.drop(columns=[c for c in log if "saturation_" in c]),
                                     "x") is None


def test_grid_tail_pattern_averages_seeds_and_spans_the_probe_data(grid):
    _, runs = grid
    keys = figures.resolve_keys([r.config for r in runs], ())
    assert keys == []  # only the seed varies: one group, averaged
    figure = figures.grid_tail_pattern(runs, keys, "grid figgrid")
    saturation_axis, probe_axis = figure.get_axes()
    finals = [figures.tail_data(r.directory) for r in runs]
    layers = finals[0].layers
    mean = np.mean([[d.saturation[n] for n in layers] for d in finals], axis=0)
    np.testing.assert_allclose(saturation_axis.get_lines()[0].get_ydata(), mean)
    assert "mean ± sd of 2" in saturation_axis.get_lines()[0].get_label()
    assert saturation_axis.collections  # the ± sd band
    accuracies = [v for d in finals for v in d.probes["2"].values()]
    low, high = probe_axis.get_ylim()
    assert low <= min(accuracies) and high >= max(accuracies)
    assert high - low < 0.5 * (1 + (max(accuracies) - min(accuracies)))  # not [0, 1]
    assert [t.get_text() for t in probe_axis.get_xticklabels()] == layers
    assert "grouped by" in figure.get_suptitle()
    by_seed = figures.grid_tail_pattern(runs, figures.resolve_keys(
        [r.config for r in runs], ("seed",)), "grid figgrid")
    labels = [line.get_label() for line in by_seed.get_axes()[0].get_lines()]
    assert any("seed=0" in x for x in labels) and any("seed=1" in x for x in labels)
    legends_clear_of_axes(figure)


def test_the_runs_tail_pattern_has_its_legend_off_the_data(grid):
    _, runs = grid
    png = runs[0].directory / "tail_pattern.png"
    assert png.exists() and png.with_suffix(".svg").exists()
    data = figures.tail_data(runs[0].directory)
    figure = figures.tail_pattern({"run": [data]}, "run")
    legends_clear_of_axes(figure)


def test_plot_command_writes_png_and_svg_of_every_figure(grid, tmp_path):
    spec, runs = grid
    out = tmp_path / "figs"
    result = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "G", "-o", str(out),
                                      "--by", "seed"])
    assert result.exit_code == 0, result.output
    for run in runs:
        for stem in ("learning_curves", "saturation_epochs"):
            png = out / run.directory.name / f"{stem}.png"
            with Image.open(png) as image:
                assert image.size[0] > 300
            assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert not (out / run.directory.name / "distillation.png").exists()  # no such data
    assert (out / "tail_pattern_by_seed.png").exists()
    wrong = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "G", "--by", "modle"])
    assert wrong.exit_code == 2 and "--by 'modle'" in wrong.output
    unknown = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "nope"])
    assert unknown.exit_code == 2 and "labkit run" in unknown.output
    assert not any(r.directory.parent.name == "nope" for r in runs)


def test_dino_probe_curves_from_a_real_dino_run(tmp_path):
    spec = {"name": "dino_tiny", "model": "mlp_s", "dataset": {"name": "digits", "resolution": 8},
            "method": {"name": "dino", "teacher_mode": "no_update", "teacher_eval": True,
                       "teacher_center_momentum": None, "freeze_last_layer_epochs": 0,
                       "hidden_dims": [32], "bottleneck_dim": 8, "out_dim": 64,
                       "probe_every": 1},
            "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0}, "epochs": 2,
            "batch_size": 128, "metrics": ["accuracy"], "logs_dir": str(tmp_path / "logs")}
    path = tmp_path / "dino.json"
    path.write_text(json.dumps(spec))
    env = {"LABKIT_PLUGINS": "dino"}
    trained = run_cli("run", str(path), "--run-id", "D", "--quiet", env=env)
    if "unknown" in trained.stderr and "dino" in trained.stderr:
        pytest.skip("the labkit-dino plugin is not installed")
    assert trained.returncode == 0, trained.stderr
    run_dir = next((tmp_path / "logs").rglob("log.csv")).parent
    written = figures.run_figures(run_dir, tmp_path / "f", "run")
    assert {p.name for p in written} >= {"dino_probes.png", "dino_probes.svg"}
    log = pd.read_csv(run_dir / "log.csv")
    figure = figures.dino_probes(log, "run")
    knn = {line.get_label(): line for line in figure.get_axes()[0].get_lines()}
    np.testing.assert_allclose(knn["eval student"].get_ydata(), log["probe-eval-student-knn"])
    assert "teacher" in " ".join(knn) and "DINO" in figure.get_suptitle()
    legends_clear_of_axes(figure)

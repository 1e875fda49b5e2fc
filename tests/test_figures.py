"""Figures: what each one plots is the run's data, titles name the run or grid, legends
sit off the data, probe axes span the data, saturation axes state δ, loss axes turn
logarithmic over a decade, grouped lines are coloured by the first key and styled by the
second, border markers never hide each other; the projection figure; `labkit plot`
writes PNG and SVG and redraws only the figures whose inputs changed."""
import html
import io
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from labkit.cli import cli, plugins
from labkit.cli.commands.common import load_runs
from labkit.outputs import figures, projection_plot, tail_plot
from labkit.outputs.figure_sets import (MANIFEST, RUN_FIGURES_DIR, FigureFolder, FigureJob,
                                        grid_figures, run_jobs, run_titles)
from labkit.store.file_digests import stat_key
from labkit.outputs.report import build_report
from labkit.testing import run_here

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
    """Every legend (of an axes or of the figure) lies outside every axes (so it covers
    no data)."""
    FigureCanvasAgg(figure).draw()
    axes = figure.get_axes()
    legends = [a.get_legend() for a in axes if a.get_legend() is not None] + figure.legends
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


def grouped_tail(runs, keys, name="grid figgrid"):
    """The grid's tail pattern grouped by ``keys`` as `labkit plot` draws it, and the
    data of each group."""
    (job,) = [j for j in grid_figures(runs, keys, name).grid if "tail_pattern" in j.stem]
    data = {label: [tail_plot.tail_data(r.directory) for r in members]
            for label, members in figures.group_runs(runs, keys).items()}
    return job.draw(figures.warn), data


def test_grid_tail_pattern_averages_seeds_and_spans_the_probe_data(grid):
    _, runs = grid
    keys = figures.resolve_keys([r.config for r in runs], ())
    assert keys == []  # only the seed varies: one group, averaged
    figure, data = grouped_tail(runs, keys)
    saturation_axis, probe_axis, border_axis = figure.get_axes()
    finals = data["all runs"]
    layers = finals[0].layers
    mean = np.mean([[d.saturation[n] for n in layers] for d in finals], axis=0)
    np.testing.assert_allclose(saturation_axis.get_lines()[0].get_ydata(), mean)
    assert "mean ± sd of 2" in saturation_axis.get_lines()[0].get_label()
    assert saturation_axis.collections  # the ± sd band
    assert "δ = 0.99" in saturation_axis.get_ylabel()
    accuracies = [v for d in finals for v in d.probes["2"].values()]
    low, high = probe_axis.get_ylim()
    assert low <= min(accuracies) and high >= max(accuracies)
    assert high - low < 0.5 * (1 + (max(accuracies) - min(accuracies)))  # not [0, 1]
    assert [t.get_text() for t in border_axis.get_xticklabels()] == layers
    assert "grouped by" in figure.get_suptitle()
    by_seed, _ = grouped_tail(runs, figures.resolve_keys([r.config for r in runs], ("seed",)))
    labels = [line.get_label() for line in by_seed.get_axes()[0].get_lines()]
    assert any("seed=0" in x for x in labels) and any("seed=1" in x for x in labels)
    legends_clear_of_axes(figure)


def test_the_runs_tail_pattern_has_its_legend_off_the_data(grid):
    _, runs = grid
    png = runs[0].directory / "tail_pattern.png"
    assert png.exists() and png.with_suffix(".svg").exists()
    data = tail_plot.tail_data(runs[0].directory)
    figure = tail_plot.tail_pattern({"run": [data]}, "run")
    legends_clear_of_axes(figure)


def test_grouped_lines_are_coloured_by_the_first_key_and_styled_by_the_second():
    runs = [SimpleNamespace(config={"model": {"name": m}, "optimizer": {"lr": lr}})
            for m in ("cnn_s", "resnet18_xxs") for lr in (0.1, 0.01)]
    keys = ["model.name", "optimizer.lr"]
    styles = figures.group_styles(figures.group_runs(runs, keys), keys)
    assert list(styles) == ["model=cnn_s, lr=0.1", "model=cnn_s, lr=0.01",
                            "model=resnet18_xxs, lr=0.1", "model=resnet18_xxs, lr=0.01"]
    s = list(styles.values())
    assert s[0].color == s[1].color != s[2].color == s[3].color  # two colours, by model
    assert s[0].linestyle == s[2].linestyle != s[1].linestyle == s[3].linestyle  # by lr
    assert len(set(s)) == 4


def test_border_markers_of_groups_with_one_border_stay_apart(grid):
    _, runs = grid
    data = tail_plot.tail_data(runs[0].directory)
    assert data.border is not None
    figure = tail_plot.tail_pattern({"a": [data], "b": [data], "c": [data]}, "x")
    strip = figure.get_axes()[-1]
    markers = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in strip.get_lines()
               if line.get_marker() not in ("None", "")]
    assert len(markers) == 3 and len(set(markers)) == 3  # same border, three places
    assert len({x for x, _ in markers}) == 1
    legends_clear_of_axes(figure)


def test_the_tail_pattern_draws_intrinsic_dimension_when_the_run_has_it(grid, tmp_path):
    _, runs = grid
    run_dir = tmp_path / runs[0].directory.name
    shutil.copytree(runs[0].directory, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    layers = tail_plot.tail_data(run_dir).layers
    table = pd.DataFrame([{"layer": n, "split": s, "twonn": 2.0 + i + (s == "eval"),
                           "mle": 1.5 + i} for i, n in enumerate(layers)
                          for s in ("train", "eval")])
    table.to_csv(run_dir / tail_plot.INTRINSIC_CSV, index=False)
    data = tail_plot.tail_data(run_dir)
    assert data.intrinsic["twonn"] == {n: 3.0 + i for i, n in enumerate(layers)}  # eval split
    figure = tail_plot.tail_pattern({"run": [data]}, "run")
    axis = next(a for a in figure.get_axes() if "intrinsic" in a.get_ylabel())
    np.testing.assert_allclose(axis.get_lines()[0].get_ydata(), [3.0 + i for i in
                                                                 range(len(layers))])
    legends_clear_of_axes(figure)


def test_loss_axes_turn_logarithmic_over_a_decade_and_saturation_states_delta(grid):
    _, runs = grid
    log = pd.read_csv(runs[0].directory / "log.csv")
    wide = log.assign(**{"train-loss": np.geomspace(2.3, 0.01, len(log))})
    assert figures.learning_curves(wide, "x").get_axes()[0].get_yscale() == "log"
    narrow = log.assign(**{"train-loss": 0.5, "eval-loss": 0.4})
    assert figures.learning_curves(narrow, "x").get_axes()[0].get_yscale() == "linear"
    heat = figures.saturation_epochs(log, "x", runs[0].config)
    assert "δ = 0.99" in heat.get_axes()[-1].get_ylabel()  # the colour bar


def test_the_projection_figure_is_titled_with_the_control_and_its_legend_outside(grid):
    _, runs = grid
    problems = []
    tables = [projection_plot.projection_tables(r.directory, problems) for r in runs]
    assert problems == [] and all(len(t) == 1 for t in tables)
    (name,) = tables[0]
    figure = projection_plot.projection_curves({"seeds": [t[name] for t in tables]},
                                               "grid figgrid")
    pca, control = figure.get_axes()
    table = tables[0][name]
    assert [t.get_text() for t in pca.get_xticklabels()] == [f"{d:g}" for d in table["delta"]]
    mean = np.mean([t[name]["control_accuracy"] for t in tables], axis=0)
    np.testing.assert_allclose(control.get_lines()[0].get_ydata(), mean)
    assert "Projection" in figure.get_suptitle() and "grid figgrid" in figure.get_suptitle()
    assert "random" in control.get_title()
    legends_clear_of_axes(figure)
    # the analysis draws its own figure with the same function: titled, legend outside
    assert (runs[0].directory / name.replace(".csv", ".png")).exists()


def settle(runs) -> None:
    """Date every file of the runs 10 s back: older than the manifest's racy window."""
    past = time.time() - 10
    for run in runs:
        for path in run.directory.rglob("*"):
            os.utime(path, (past, past))


def test_plot_writes_png_and_svg_of_every_figure_and_redraws_only_what_changed(grid,
                                                                              tmp_path):
    spec, runs = grid
    settle(runs)
    out = tmp_path / "figs"

    def plot():
        result = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "G", "-o", str(out)])
        assert result.exit_code == 0, result.output
        return {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}, result.output

    first, _ = plot()
    projection = next(runs[0].directory.glob("projected_results*.csv")).stem
    for run in runs:
        for stem in ("learning_curves", "saturation_epochs", projection):
            png = out / run.directory.name / f"{stem}.png"
            with Image.open(png) as image:
                assert image.size[0] > 300
            assert png.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
        assert not (out / run.directory.name / "distillation.png").exists()  # no such data
    for stem in ("tail_pattern_by_nothing", "groups/all_runs/tail_pattern",
                 "groups/all_runs/learning_curves", f"groups/all_runs/{projection}"):
        assert (out / f"{stem}.png").exists(), stem
    assert (out / MANIFEST).exists()

    again, output = plot()
    assert again == first and "0 figure(s) drawn" in output
    log = runs[1].directory / "log.csv"  # one run's log rewritten (same content, new stat)
    log.write_bytes(log.read_bytes())
    os.utime(log, (time.time() - 5, time.time() - 5))
    changed, _ = plot()
    redrawn = {p.relative_to(out).as_posix() for p in changed if changed[p] != first[p]}
    other = runs[0].directory.name
    assert f"{runs[1].directory.name}/learning_curves.png" in redrawn
    assert {"tail_pattern_by_nothing.png", "groups/all_runs/tail_pattern.png"} <= redrawn
    assert not any(p.startswith(f"{other}/") for p in redrawn)  # the other run's are kept
    assert f"{runs[1].directory.name}/{projection}.png" not in redrawn  # reads no log
    # other parameters are other figures: another title, another grouping
    folder = FigureFolder(out)
    assert all(folder.current(j) for j in grid_figures(runs, [], "grid figgrid, run-id G").jobs())
    renamed = grid_figures(runs, [], "another name").runs[runs[0].hash][0]
    assert renamed.stem == f"{other}/learning_curves" and not folder.current(renamed)
    by_seed = {j.stem for j in grid_figures(runs, ["seed"], "x").jobs()}
    assert {"tail_pattern_by_seed", f"{other}/tail_pattern",  # a group of one: its run's
            "learning_curves_by_seed"} <= by_seed

    wrong = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "G", "--by", "modle"])
    assert wrong.exit_code == 2 and "--by 'modle'" in wrong.output
    unknown = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "nope"])
    assert unknown.exit_code == 2 and "labkit run" in unknown.output
    assert not any(r.directory.parent.name == "nope" for r in runs)


def test_a_group_of_one_run_shows_its_runs_figures_drawn_once(grid, tmp_path):
    _, runs = grid
    drawn = grid_figures(runs, ["seed"], "by seed")  # two groups of one run each
    stems = [job.stem for job in drawn.jobs()]
    assert len(stems) == len(set(stems))
    for run, (label, jobs) in zip(runs, drawn.groups.items()):
        own = {job.stem: job for job in drawn.runs[run.hash]}
        shared = [job.stem for job in jobs]  # its tail pattern, learning and projection
        assert shared[0] == f"{run.directory.name}/tail_pattern"  # curves: its run's own
        assert f"{run.directory.name}/learning_curves" in shared
        assert any(Path(s).name.startswith("projected_results") for s in shared)
        assert all(own.get(stem) is job for stem, job in zip(shared, jobs))
        assert not any(s.startswith(f"groups/{label}/") for s in stems)
    together = grid_figures(runs, [], "one group")  # runs of a group of two: no tail each
    assert not any(Path(job.stem).name == "tail_pattern" for jobs in together.runs.values()
                   for job in jobs)
    assert [job.stem for job in together.groups["all runs"]][0] == "groups/all_runs/tail_pattern"
    page = build_report(runs, ["seed"], "by seed", figure_folder=tmp_path / "f")
    for run in runs:  # its learning curves once on the page, and its section points there
        caption = next(j.caption for j in drawn.runs[run.hash]
                       if j.stem.endswith("learning_curves"))
        assert page.count(f"<figcaption>{html.escape(caption)}</figcaption>") == 1
    assert page.count("are shown in the section of its group") == len(runs)
    assert '<a href="#group-1">1. seed=0</a>' in page
    assert not (tmp_path / "f" / "groups").exists()  # every figure of a group: its run's
    assert (tmp_path / "f" / runs[0].directory.name / "tail_pattern.png").exists()


def test_figures_are_laid_out_once_as_savefig_would_and_svg_text_stays_text(grid, tmp_path):
    _, runs = grid
    log = pd.read_csv(runs[0].directory / "log.csv")
    plain = figures.learning_curves(log, "run")
    expected = io.BytesIO()
    plain.savefig(expected, format="png", dpi=figures.DPI)  # matplotlib's own layout
    saved = figures.save(figures.learning_curves(log, "run"), tmp_path / "curves")
    assert saved[0].read_bytes() == expected.getvalue()
    svg = saved[1].read_text()
    assert "<text" in svg and ">Learning curves" in svg  # searchable, editable text
    assert figures.png_bytes(figures.learning_curves(log, "run")) == expected.getvalue()


def test_a_folder_holds_each_format_asked_for_and_never_a_stale_one(grid, tmp_path):
    _, runs = grid
    settle(runs)
    every = grid_figures(runs, [], "formats")
    jobs = [every.runs[runs[0].hash][0], every.grid[0]]  # a run's curves, the grid's tail
    folder = tmp_path / "f"

    def draw(*formats):
        return FigureFolder(folder).draw(jobs, formats=formats or figures.FORMATS)

    def times(suffix):
        return {p: p.stat().st_mtime_ns for p in folder.rglob(f"*.{suffix}")}

    first = draw("png")  # what the report asks for: the PNG it embeds, alone
    assert len(first.written) == 2 and len(times("png")) == 2 and not times("svg")
    assert draw("png").written == []
    both = draw()  # plot's default: the SVG is missing, so both are drawn
    assert len(both.written) == 2 and len(times("svg")) == 2
    assert draw("png").written == [] and draw().written == []  # a report after plot
    svgs = times("svg")
    log = runs[0].directory / "log.csv"  # rewritten: both figures read it
    log.write_bytes(log.read_bytes())
    os.utime(log, (time.time() - 5, time.time() - 5))
    redrawn = draw("png")
    assert len(redrawn.written) == 2
    assert all(times("svg")[p] != t for p, t in svgs.items())  # no SVG shows the old figure
    assert draw().written == []
    pdf = draw("pdf")
    assert len(pdf.written) == 2 and all(p.suffix == ".pdf" for p in pdf.written)
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdf.written)
    assert draw("png", "svg", "pdf").written == []
    data = {"there": True}  # a figure whose data goes away loses its files

    def tiny(report):
        if not data["there"]:
            return None
        figure = figures.new_figure(figsize=(2, 2))
        figure.subplots().plot([0, 1])
        return figure

    source = tmp_path / "source.csv"
    source.write_text("x\n1\n")
    os.utime(source, (time.time() - 5, time.time() - 5))
    gone = FigureJob("gone", "a figure", [source], {}, tiny)
    FigureFolder(folder).draw([gone])
    assert {p.name for p in folder.glob("gone.*")} == {"gone.png", "gone.svg"}
    data["there"] = False
    source.write_text("x\n")
    os.utime(source, (time.time() - 4, time.time() - 4))
    assert FigureFolder(folder).draw([gone]).written == [] and not list(folder.glob("gone.*"))
    wrong = CliRunner().invoke(cli, ["plot", "x.json", "--run-id", "G", "--format", "jpg"])
    assert wrong.exit_code == 2 and "'jpg' is not one of" in wrong.output


def test_labkit_run_draws_each_runs_figures_once_and_plot_copies_them(grid, tmp_path,
                                                                      run_figures):
    spec, runs = grid
    settle(runs)
    # a second `labkit run` of the trained grid draws the runs' figures (training skipped)
    result = CliRunner().invoke(cli, ["run", str(spec), "--run-id", "G", "--quiet"])
    assert result.exit_code == 0, result.output
    titles = run_titles(runs)
    projection = next(runs[0].directory.glob("projected_results*.csv")).stem
    stems = ("learning_curves", "saturation_epochs", projection)
    for run in runs:  # titled as the grid's figures are, and current in the run's folder
        own = FigureFolder(run.directory / RUN_FIGURES_DIR)
        assert all(own.current(job) for job in run_jobs(run, titles[run.hash]))
        svg = (run.directory / RUN_FIGURES_DIR / "learning_curves.svg").read_text()
        assert html.escape(titles[run.hash]) in svg and "model=" not in titles[run.hash]
        assert "seed=0" in titles[runs[0].hash] and "seed=1" in titles[runs[1].hash]
    out = tmp_path / "figs"

    def plot():
        done = CliRunner().invoke(cli, ["plot", str(spec), "--run-id", "G", "-o", str(out)])
        assert done.exit_code == 0, done.output
        return done.output

    assert f"({len(runs) * len(stems)} copied from the runs' own)" in plot()
    for run in runs:
        for stem in stems:
            for suffix in (".png", ".svg"):
                copied = out / run.directory.name / f"{stem}{suffix}"
                own = run.directory / RUN_FIGURES_DIR / f"{stem}{suffix}"
                assert copied.read_bytes() == own.read_bytes(), copied
    # a run's figure no longer current in its folder is drawn, never copied
    shutil.rmtree(out)
    log = runs[0].directory / "log.csv"
    log.write_bytes(log.read_bytes())
    os.utime(log, (time.time() - 5, time.time() - 5))
    output = plot()
    assert "(4 copied from the runs' own)" in output  # the other run's, and the projection
    assert f"{runs[0].directory.name}/learning_curves.png" in output
    assert f"{runs[1].directory.name}/learning_curves.png" in output
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert "0 figure(s) drawn" in plot()
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}


def csv_line_job(source: Path) -> FigureJob:
    """A figure job ``f`` drawn from the CSV ``source``: its column ``x`` as a line."""
    def line(report):
        figure = figures.new_figure(figsize=(2, 2))
        figure.subplots().plot(pd.read_csv(source)["x"])
        return figure
    return FigureJob("f", "a figure", [source], {}, line)


def test_a_figure_drawn_from_a_file_just_written_is_kept_by_its_content(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("x\n1\n")  # written just now: its stat may not show the next write
    soon = time.time_ns() + 10 ** 10  # and racy for the whole test, however slow the machine
    os.utime(source, ns=(soon, soon))

    job = csv_line_job(source)
    assert len(FigureFolder(tmp_path / "figs").draw([job], formats=("png",)).written) == 1
    assert FigureFolder(tmp_path / "figs").draw([job], formats=("png",)).written == []
    source.write_text("x\n2\n")  # the same size, and as if within the same clock tick:
    manifest = tmp_path / "figs" / MANIFEST
    record = json.loads(manifest.read_text())
    inputs = record["figures"]["f"]["fingerprint"]["inputs"]
    inputs[str(source)] = stat_key(source)  # the stat the manifest holds is the new one
    manifest.write_text(json.dumps(record))
    assert not FigureFolder(tmp_path / "figs").current(job, ("png",))  # its content is not
    assert len(FigureFolder(tmp_path / "figs").draw([job], formats=("png",)).written) == 1


def test_an_entry_holds_a_file_by_content_only_while_it_is_racy(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("x\n1\n")
    recent = time.time_ns() - 10 ** 9  # written a second ago: racy for one more
    os.utime(source, ns=(recent, recent))

    job = csv_line_job(source)
    FigureFolder(tmp_path / "figs").draw([job], formats=("png",))
    entries = json.loads((tmp_path / "figs" / MANIFEST).read_text())["figures"]
    assert list(entries["f"]["racy"]) == [str(source)]  # held by content
    time.sleep(max(0.0, (recent + 2.2e9 - time.time_ns()) / 1e9))  # now settled
    assert FigureFolder(tmp_path / "figs").draw([job], formats=("png",)).written == []
    entries = json.loads((tmp_path / "figs" / MANIFEST).read_text())["figures"]
    assert entries["f"]["racy"] == {}  # by its stat alone from now on: never read again


def test_dino_probe_curves_from_a_real_dino_run(tmp_path, monkeypatch):
    spec = {"name": "dino_tiny", "model": "mlp_s", "dataset": {"name": "digits", "resolution": 8},
            "method": {"name": "dino", "teacher_mode": "no_update", "teacher_eval": True,
                       "teacher_center_momentum": None, "freeze_last_layer_epochs": 0,
                       "hidden_dims": [32], "bottleneck_dim": 8, "out_dim": 64,
                       "probe_every": 1},
            "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0}, "epochs": 2,
            "batch_size": 128, "metrics": ["accuracy"], "logs_dir": str(tmp_path / "logs")}
    path = tmp_path / "dino.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("LABKIT_PLUGINS", "dino")  # the registries of such a process
    plugins.use()
    try:
        trained = run_here("run", str(path), "--run-id", "D", "--quiet")
        drawn = run_here("plot", str(path), "--run-id", "D", "-o", str(tmp_path / "f"))
    finally:
        monkeypatch.undo()
        plugins.use()
    if "unknown" in trained.stderr and "dino" in trained.stderr:
        pytest.skip("the labkit-dino plugin is not installed")
    assert trained.returncode == 0, trained.stderr
    assert drawn.returncode == 0, drawn.stderr
    run_dir = next((tmp_path / "logs").rglob("log.csv")).parent
    assert {p.name for p in (tmp_path / "f" / run_dir.name).iterdir()} >= {
        "dino_probes.png", "dino_probes.svg"}
    log = pd.read_csv(run_dir / "log.csv")
    figure = figures.dino_probes(log, "run")
    knn = {line.get_label(): line for line in figure.get_axes()[0].get_lines()}
    np.testing.assert_allclose(knn["eval student"].get_ydata(), log["probe-eval-student-knn"])
    assert "teacher" in " ".join(knn) and "DINO" in figure.get_suptitle()
    legends_clear_of_axes(figure)

"""Every output belongs to exactly the settings, data and weights it claims (issue 13).

Each test reproduces one way a result could silently belong to something else (a data
folder, a worker count, analysis parameters, a damaged or stale file) and checks that
labkit recomputes, rebuilds or refuses instead. Real training on the digits, no mocks.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from labkit import engine
from labkit.analyses import FinishedRun, latents
from labkit.analyses.layerwise import Latents, Probes, ReceptiveField
from labkit.api import hookimpl
from labkit.cli import cli, plugins
from labkit.cli.commands.common import load_runs
from labkit.core.errors import UserError
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import ema_method  # noqa: E402

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64, "epochs": 2,
        "optimizer": {"name": "sgd", "lr": 0.05}}


def make_run(registries, tmp_path, run_id="T", **overrides):
    (config,) = expand({**TINY, "logs_dir": str(tmp_path / "logs"), **overrides}, registries)
    return RunConfig(config, run_id)


def final_weights(run):
    return checkpoint.read(runinfo.final_checkpoint(run))["modules"]["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- identity matches the weights

def write_image_folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int):
    for name, colour in colours.items():
        for i in range(per_class):
            path = root / "imagefolder" / "train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), tuple(c - 7 * i for c in colour)).save(path)


def test_image_folders_with_other_files_are_other_runs(registries, tmp_path):
    write_image_folder(tmp_path / "a", {"ant": (200, 0, 0), "bee": (0, 200, 0)}, 3)
    write_image_folder(tmp_path / "b", {"ant": (200, 0, 0), "bee": (0, 200, 0)}, 4)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")

    def run_in(root):
        return make_run(registries, tmp_path, dataset={
            "name": "imagefolder", "root": str(tmp_path / root), "resolution": 8,
            "eval_fraction": 0.34})

    a, b, copy = run_in("a"), run_in("b"), run_in("a_copy")
    assert a.hash != b.hash  # other files: never the same run
    assert a.hash == copy.hash  # the same files elsewhere: the same run
    assert a.config["data"]["root"] != copy.config["data"]["root"]  # recorded, not identity
    assert a.config["data"]["files"] == 6 and b.config["data"]["files"] == 8


def test_any_worker_count_trains_the_same_weights(registries, tmp_path):
    runs = [make_run(registries, tmp_path / str(workers), num_workers=workers,
                     dataset={"name": "digits", "augment": "flip_crop"})
            for workers in (0, 2)]
    assert runs[0].hash == runs[1].hash
    for run in runs:
        assert engine.train(run, registries, progress=False) == "finished"
    assert_same_weights(final_weights(runs[0]), final_weights(runs[1]))


def test_threads_are_identity_and_the_process_default_does_not_matter(registries, tmp_path):
    assert make_run(registries, tmp_path, threads=2).hash != make_run(registries, tmp_path).hash
    runs = []
    for ambient in (1, 2):  # e.g. a sequential run with torch's default of 2 on 2 cores
        torch.set_num_threads(ambient)
        run = make_run(registries, tmp_path / str(ambient))
        assert engine.train(run, registries, progress=False) == "finished"
        assert torch.get_num_threads() == ambient  # restored afterwards
        runs.append(run)
    torch.set_num_threads(1)
    assert_same_weights(final_weights(runs[0]), final_weights(runs[1]))


def test_a_list_for_an_unannotated_parameter_is_refused_not_guessed(registries):
    def net(num_classes, in_channels, resolution, widths=(4, 8), scale=None):
        return torch.nn.Sequential(torch.nn.Flatten(),
                                   torch.nn.Linear(in_channels * resolution ** 2, num_classes))

    registries.models.register("untyped_net", net)
    (one,) = expand({**TINY, "model": {"name": "untyped_net", "widths": [2, 2]}}, registries)
    assert one["model"]["widths"] == [2, 2]  # a list default: a list is one value
    two = expand({**TINY, "model": {"name": "untyped_net", "widths": [[2], [3]]}}, registries)
    assert [c["model"]["widths"] for c in two] == [[2], [3]]
    with pytest.raises(UserError, match="no type annotation.*annotate it"):
        expand({**TINY, "model": {"name": "untyped_net", "scale": [1, 2]}}, registries)


# ---------------------------------------------------------------- analyses: complete means same inputs

def test_changed_analysis_parameters_are_recomputed(registries, tmp_path):
    run = make_run(registries, tmp_path)
    assert engine.train(run, registries, progress=False) == "finished"
    finished = FinishedRun(run, registries)

    probes = Probes(finished, Probes.Params(downsampling=2))
    probes.produce(progress=False)
    table = pd.read_csv(probes.outputs()[0])
    assert (table["probe_C"] == 1.0).all() and table["probe_standardize"].all()
    previous = probes
    for changed in ({"C": 0.01}, {"standardize": False}):
        other = Probes(finished, Probes.Params(downsampling=2, **changed))
        assert previous.is_complete() and not other.is_complete()
        other.produce(progress=False)
        assert other.is_complete() and not previous.is_complete()
        previous = other
    assert not pd.read_csv(probes.outputs()[0])["probe_standardize"].any()
    assert Probes(finished, Probes.Params(downsampling=2, standardize=False,
                                          processes=2)).is_complete()  # speed is no input

    fields = ReceptiveField(finished, ReceptiveField.Params(layers=["block*"]))
    assert fields.is_complete() is False  # probes drew the one with every layer
    fields.produce()
    assert pd.read_csv(fields.outputs()[0])["layer"].tolist() == ["block1-conv1", "block2-conv1"]


def test_grid_points_differing_in_analyses_do_all_of_them(registries, tmp_path, write_spec):
    spec = write_spec({**TINY, "analyses": [["receptive_field"], [{"name": "projection",
                                                                   "deltas": [1.0]}]]})
    (run,) = load_runs(str(spec), "G")
    assert [a["name"] for a in run.config["analyses"]] == ["receptive_field", "projection"]


def test_analyses_read_the_network_the_eval_splits_scored(tmp_path):
    registries = plugins.use(ema_method)
    run = make_run(registries, tmp_path, method={"name": "ema_supervised", "momentum": 0.5},
                   analyses=[{"name": "projection", "deltas": [1.0]}])
    try:
        assert engine.train(run, registries, progress=False) == "finished"
        state = checkpoint.read(runinfo.final_checkpoint(run))
        assert state["eval_module"] == "ema"
        model = FinishedRun(run, registries).model.state_dict()
        assert_same_weights(model, state["modules"]["ema"])
        assert not torch.equal(model["fc.weight"], state["modules"]["model"]["fc.weight"])
        (csv,) = run.directory.glob("projected_results*.csv")  # named by its params' digest
        projected = pd.read_csv(csv)
        log = pd.read_csv(run.directory / runinfo.LOG_CSV)
        assert projected["unprojected_accuracy"].iloc[0] == log["eval-accuracy"].iloc[-1]
    finally:
        plugins.use()


# ---------------------------------------------------------------- damaged, stale, forged files

def test_a_damaged_final_checkpoint_is_retrained_before_any_analysis(registries, tmp_path):
    run = make_run(registries, tmp_path, epochs=3)
    assert engine.train(run, registries, progress=False) == "finished"
    before = final_weights(run)
    final = runinfo.final_checkpoint(run)
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF
    final.write_bytes(bytes(data))
    with pytest.raises(UserError, match="no usable epoch_0003.pt"):
        FinishedRun(run, registries).state()  # never epoch 2 in its place

    run = make_run(registries, tmp_path, epochs=3, analyses=[{"name": "latents",
                                                               "downsampling": 2}])
    assert engine.train(run, registries, progress=False) == "finished"  # epoch 3 again
    assert_same_weights(before, final_weights(run))
    manifest = latents.read_manifest(Latents(FinishedRun(run, registries),
                                             Latents.Params(downsampling=2)).directory())
    assert manifest["plan"]["source"]["epoch"] == 3
    assert manifest["plan"]["source"]["checkpoint"] == checkpoint.digest(final)


def test_a_truncated_or_missing_log_is_rebuilt_from_the_checkpoint(registries, tmp_path):
    run = make_run(registries, tmp_path, epochs=3, saturation={})
    assert engine.train(run, registries, progress=False) == "finished"
    log = run.directory / runinfo.LOG_CSV
    whole = log.read_text()
    log.write_text("".join(whole.splitlines(keepends=True)[:-1]))  # as if killed before the row
    assert engine.train(run, registries, progress=False) == "skipped"
    assert log.read_text() == whole
    log.unlink()
    assert engine.train(run, registries, progress=False) == "skipped"
    assert log.read_text() == whole


def test_pruning_keeps_an_intact_fallback(tmp_path):
    directory = tmp_path / "checkpoints"
    for epoch in (1, 2):
        checkpoint.save(directory, epoch, {"epoch": epoch})
    checkpoint.checkpoint_path(directory, 2).write_bytes(b"damaged")
    checkpoint.save(directory, 3, {"epoch": 3})
    assert checkpoint.epochs_on_disk(directory) == [1, 3]  # 1 is the fallback, not broken 2
    stale = checkpoint.checkpoint_path(directory, 99)
    stale.write_bytes(b"not a checkpoint")  # a stray file numbered above
    checkpoint.save(directory, 4, {"epoch": 4})
    assert checkpoint.read(checkpoint.checkpoint_path(directory, 4)) == {"epoch": 4}
    assert checkpoint.epochs_on_disk(directory) == [3, 4, 99]


def test_a_forged_status_does_not_skip_training(registries, tmp_path):
    run = make_run(registries, tmp_path)
    runinfo.write_status(run.directory, "finished", epoch=2)
    assert runinfo.training_state(run)["state"] == "incomplete"
    assert engine.train(run, registries, progress=False) == "finished"  # trained, not skipped
    assert checkpoint.is_intact(runinfo.final_checkpoint(run))


def test_a_checkpoint_of_another_run_is_refused(registries, tmp_path):
    a, b = make_run(registries, tmp_path), make_run(registries, tmp_path, seed=1)
    engine.train(a, registries, progress=False)
    shutil.copytree(a.directory / "checkpoints", b.directory / "checkpoints")
    with pytest.raises(UserError, match="written by run"):
        engine.train(b, registries, progress=False)


class Failing:
    """A plugin whose analysis always fails."""

    class Broken(ReceptiveField):
        def compute(self, progress=True):
            raise RuntimeError("broken on purpose")

    @hookimpl
    def labkit_register(self, registries):
        registries.analyses.register("broken", Failing.Broken)


def test_a_failed_analysis_leaves_the_run_trained(tmp_path, write_spec, monkeypatch):
    registries = plugins.use(Failing())
    monkeypatch.chdir(tmp_path)
    try:
        spec = write_spec({**TINY, "analyses": ["broken"]})
        (run,) = load_runs(str(spec), "F")
        assert engine.train(run, registries, progress=False) == "failed"
        assert runinfo.read_status(run.directory)["state"] == "finished"
        assert runinfo.read_analyses(run.directory)["broken"]["state"] == "failed"
        status = CliRunner().invoke(cli, ["status", str(spec), "--run-id", "F"])
        assert "finished" in status.stdout and "broken failed" in status.stdout
        assert "broken on purpose" in status.stdout
        extract = CliRunner().invoke(cli, ["extract", str(spec), "--run-id", "F", "-d", "2"])
        assert extract.exit_code == 0, extract.output  # the run is still trained
        # the second attempt skips training and tries the analysis again
        assert engine.train(run, registries, progress=False) == "failed"
    finally:
        plugins.use()


def test_changed_latent_bytes_are_refused(registries, tmp_path):
    run = make_run(registries, tmp_path)
    engine.train(run, registries, progress=False)
    finished = FinishedRun(run, registries)
    extraction = Latents(finished, Latents.Params(downsampling=2))
    extraction.produce(progress=False)
    array = latents.array_path(extraction.directory(), "train", "block2-conv1")
    values = np.load(array)
    values[:50] = 0
    np.save(array, values)
    with pytest.raises(UserError, match="no longer matches the sha256"):
        Probes(finished, Probes.Params(downsampling=2)).produce(progress=False)


def test_provenance_is_appended_and_config_kept_across_segments(registries, tmp_path):
    from labkit.testing import forget_last_epoch

    run = make_run(registries, tmp_path, epochs=3)
    engine.train(run, registries, progress=False)
    config = (run.directory / runinfo.CONFIG_JSON).read_text()
    forget_last_epoch(run.directory)
    engine.train(run, registries, progress=False)
    segments = runinfo.read_provenance(run.directory)
    assert [s["first_epoch"] for s in segments] == [1, 3]
    assert all(s["labkit_version"] and s["host"] and s["device"] == "cpu" for s in segments)
    assert (run.directory / runinfo.CONFIG_JSON).read_text() == config
    assert json.loads(config)["hash"] == run.hash

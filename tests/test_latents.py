"""Latent extraction on a trained digits run: eval mode, no augmentation, layout and
manifest, resume after kill -9, skip when complete."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from labkit import engine
from labkit.analyses import FinishedRun, latents
from labkit.analyses.layerwise import Latents
from labkit.cli import cli, plugins
from labkit.measures.layers import measured_layers
from labkit.spec import expand
from labkit.store.identity import RunConfig
from labkit.store.latent_layout import located

# augmented training data and BatchNorm: train-mode or augmented extraction would differ
SPEC = {"model": "cnn_xs", "dataset": {"name": "digits", "resolution": 12, "augment": "crop"},
        "epochs": 2, "batch_size": 64, "eval_batch_size": 4,
        "optimizer": {"name": "sgd", "lr": 0.05}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run and the spec file that names it."""
    root = tmp_path_factory.mktemp("latents")
    spec = {**SPEC, "logs_dir": str(root / "logs")}
    (root / "spec.json").write_text(json.dumps(spec))
    registries = plugins.registries()
    (config,) = expand(spec, registries)
    run = RunConfig(config, "A")
    assert engine.train(run, registries, progress=False) == "finished"
    return FinishedRun(run, registries), root / "spec.json"


def expected_rows(run: FinishedRun, dataset, layer: str, mode) -> np.ndarray:
    """The layer's reduced outputs, computed here from scratch with the model in eval mode."""
    model = run.model.eval()
    module = dict(measured_layers(model))[layer]
    captured = []
    handle = module.register_forward_hook(lambda m, i, out: captured.append(out))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        model(images)
    handle.remove()
    (out,) = captured
    if out.dim() == 4 and mode == "pixelwise":
        return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).numpy()
    if out.dim() == 4 and mode != "none":
        out = F.adaptive_avg_pool2d(out, (min(out.shape[2], mode), min(out.shape[3], mode)))
    return out.flatten(1).numpy()


@pytest.mark.parametrize("mode", [2, "pixelwise", "none"])
def test_latents_are_eval_mode_activations_of_unaugmented_images(trained, mode):
    run, _ = trained
    analysis = Latents(run, Latents.Params(downsampling=mode))
    analysis.produce(progress=False)
    directory = analysis.directory()
    root = run.directory.parents[3].parent / "latent_datasets"  # next to logs_dir
    assert directory == root / "A" / run.run.hash / str(mode)
    pointer = json.loads(analysis.outputs()[0].read_text())["directory"]
    assert located(pointer, run.directory) == directory  # recorded relative: in the project

    manifest = latents.read_manifest(directory)
    layers = [name for name, _ in measured_layers(run.model)]
    assert manifest["plan"]["layers"] == layers  # network order
    assert manifest["plan"]["source"]["run_dir"] == str(run.directory)
    assert latents.source_run_dir(directory, manifest) == run.directory.absolute()
    assert manifest["plan"]["splits"] == {"train": len(run.data.train_plain),
                                          "eval": len(run.data.evals["eval"])}
    data = {"train": run.data.train_plain, "eval": run.data.evals["eval"]}
    for split, dataset in data.items():
        labels = np.load(latents.array_path(directory, split, "labels"))
        assert labels.tolist() == [dataset[i][1] for i in range(len(dataset))]
        for entry in manifest["layers"]:
            stored = np.load(latents.array_path(directory, split, entry["name"]), mmap_mode="r")
            assert isinstance(stored, np.memmap) and stored.dtype == np.float16
            assert stored.shape == (len(dataset) * entry["positions"], entry["features"])
            assert entry["features"] == np.prod(entry["row_shape"])
            want = expected_rows(run, dataset, entry["name"], mode).astype(np.float16)
            np.testing.assert_array_equal(stored, want)
    block1 = manifest["layers"][0]
    assert block1["row_shape"] == {2: [16, 2, 2], "pixelwise": [16], "none": [16, 12, 12]}[mode]
    assert block1["positions"] == (144 if mode == "pixelwise" else 1)


def test_complete_extraction_is_skipped_and_a_changed_one_redone(trained):
    run, spec = trained
    analysis = Latents(run, Latents.Params(downsampling=3))
    analysis.produce(progress=False)
    directory = analysis.directory()
    stamps = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert analysis.is_complete()
    result = CliRunner().invoke(cli, ["extract", str(spec), "--run-id", "A", "-d", "3"])
    assert result.exit_code == 0, result.output
    assert str(directory) in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps  # skipped

    digest = latents.read_manifest(directory)["digest"]
    Latents(run, Latents.Params(downsampling=3, layers=["fc"])).produce(progress=False)
    manifest = latents.read_manifest(directory)
    assert manifest["plan"]["layers"] == ["fc"] and manifest["digest"] != digest
    assert sorted(p.name for p in directory.glob("*.npy")) == [
        "eval-fc.npy", "eval-labels.npy", "train-fc.npy", "train-labels.npy"]


# extraction as labkit.analyses.latents.extract runs it, recording progress after every batch
EXTRACT = """
import sys
from labkit.analyses import FinishedRun, latents
from labkit.cli import plugins

run = FinishedRun.from_directory(sys.argv[1], plugins.registries())
latents.extract(run.model, {"train": run.data.train_plain, **run.data.evals}, sys.argv[2], 2,
                source={"run_dir": sys.argv[1]}, batch_size=4, progress=False,
                record_seconds=float(sys.argv[3]))
"""


def test_killed_extraction_resumes_where_it_stopped_with_identical_files(trained, tmp_path):
    run, _ = trained
    splits = {"train": run.data.train_plain, **run.data.evals}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    latents.extract(run.model, splits, reference, 2, source={"run_dir": str(run.directory)},
                    batch_size=4, progress=False)

    proc = subprocess.Popen([sys.executable, "-c", EXTRACT, str(run.directory), str(resumed), "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = resumed / latents.PROGRESS
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not progress.exists():
        time.sleep(0.001)
    assert proc.poll() is None, f"extraction ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / latents.MANIFEST).exists()
    done = json.loads(progress.read_text())["done"]["train"]
    assert 0 < done < len(run.data.train_plain)

    seen = []  # images the resumed extraction feeds the model
    hook = run.model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    latents.extract(run.model, splits, resumed, 2, source={"run_dir": str(run.directory)},
                    batch_size=4, progress=False)
    hook.remove()
    assert sum(seen) == 1 + sum(len(d) for d in splits.values()) - done  # 1: the shape probe
    assert not progress.exists() and not list(resumed.glob("*.part"))
    files = sorted(p.name for p in reference.glob("*.npy"))
    assert files == sorted(p.name for p in resumed.glob("*.npy"))
    for name in files:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    assert latents.read_manifest(resumed)["digest"] == latents.read_manifest(reference)["digest"]


def test_extracting_an_unfinished_run_is_a_clear_error(write_spec):
    spec = write_spec({**SPEC, "model": "cnn_s"})
    result = CliRunner().invoke(cli, ["extract", str(spec), "--run-id", "none"])
    assert result.exit_code == 2 and "not started, not finished" in result.stderr


def test_the_bytes_an_extraction_writes_are_known_before_it_starts(trained):
    run, _ = trained
    for mode in (3, "pixelwise"):
        analysis = Latents(run, Latents.Params(downsampling=mode))
        planned = analysis.planned_bytes()
        analysis.produce(progress=False)
        manifest = latents.read_manifest(analysis.directory())
        written = sum(np.load(analysis.directory() / name, mmap_mode="r").nbytes
                      for name in manifest["files"])
        assert planned == written, mode

"""Probes at scale, on tiny data: the streamed solver's sampled path against an independent
scikit-learn fit on the same stored latents, the memory estimate of a fit against a real
worker's peak, and ``-mp N --memory SIZE`` (how many fits run at once, and the error
when one fit alone exceeds the budget)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labkit.analyses import FinishedRun, latents, probes
from labkit.analyses.probes import fit_bytes, paying_workers
from labkit.cli import cli, plugins
from labkit.measures import logistic
from labkit.spec import expand
from labkit.spec.values import parse_size
from labkit.store.identity import RunConfig

SPEC = {"model": "lenet5", "dataset": {"name": "digits", "resolution": 16}, "epochs": 2,
        "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}}


def labkit(*args: str):
    """The real command line, in this process."""
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A trained lenet5's pixelwise and pooled (d=2) latents, extracted by labkit."""
    root = tmp_path_factory.mktemp("scale")
    spec = root / "spec.json"
    spec.write_text(json.dumps({**SPEC, "logs_dir": str(root / "logs")}))
    assert labkit("run", str(spec), "--run-id", "S", "--quiet").exit_code == 0
    for mode in ("pixelwise", "2"):
        result = labkit("extract", str(spec), "--run-id", "S", "-d", mode, "-q")
        assert result.exit_code == 0, result.output
    registries = plugins.registries()
    (config,) = expand(json.loads(spec.read_text()), registries)
    run = RunConfig(config, "S")
    return {mode: latents.locate(run, latents.parse_mode(mode)) for mode in ("pixelwise", "2")}


def test_sampled_solver_agrees_with_scikit_learn_on_stored_pixelwise_latents(
        extracted, monkeypatch, tmp_path):
    directory = extracted["pixelwise"]
    manifest = latents.read_manifest(directory)
    # an in-memory sample of 2,048 rows: every layer here has more, so every fit takes
    # the survey, the sample fits and the passes over all rows (as a 10 M-row layer does)
    monkeypatch.setattr(logistic, "SAMPLE_ROWS", 2048)
    images = manifest["plan"]["splits"]["train"]
    assert sum(e["positions"] * images > 2048 for e in manifest["layers"]) >= 2
    copy = tmp_path / "latents"
    shutil.copytree(directory, copy)
    result = labkit("probes", str(copy), "--prefix", "sampled", "-q")
    assert result.exit_code == 0, result.output
    run = FinishedRun.from_directory(manifest["plan"]["source"]["run_dir"], plugins.registries())
    table = pd.read_csv(run.directory / "sampled_probe_performances.csv").set_index("layer")
    y, ey = np.load(copy / "train-labels.npy"), np.load(copy / "eval-labels.npy")
    for entry in manifest["layers"]:
        layer, positions = entry["name"], entry["positions"]
        x = np.load(copy / f"train-{layer}.npy").astype(np.float32)
        ex = np.load(copy / f"eval-{layer}.npy").astype(np.float32)
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        reference.fit(x, np.repeat(y, positions))
        row = table.loc[layer]
        assert row.converged
        assert abs(row.eval_accuracy - reference.score(ex, np.repeat(ey, positions))) <= 0.003, layer
        assert abs(row.train_accuracy - reference.score(x, np.repeat(y, positions))) <= 0.003, layer
    # and the sampled path is what ran: passes over all rows after the sample's fit
    first = manifest["layers"][0]
    features = np.load(copy / f"train-{first['name']}.npy", mmap_mode="r")
    probe = logistic.fit(features, y, 10, positions=first["positions"])
    assert probe.passes >= 1 and probe.converged


MEASURE = r"""
import json, sys, threading, time
from pathlib import Path
import numpy as np
from labkit.analyses import probes  # noqa: F401
from labkit.measures import logistic  # what a probe worker holds before it fits

def anonymous():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

peak, done = [anonymous()], threading.Event()
def sample():
    while not done.is_set():
        peak.append(anonymous())
        time.sleep(0.002)
thread = threading.Thread(target=sample)
thread.start()
x = np.load(sys.argv[1], mmap_mode="r")
labels = np.load(sys.argv[2])
passes = [logistic.fit(x, labels, 10, positions=int(sys.argv[3])).passes for _ in range(2)]
done.set()
thread.join()
print(json.dumps({"peak": max(peak), "passes": passes}))
"""


def test_a_worker_fitting_layers_stays_within_the_estimate(tmp_path):
    # 320,000 rows of 64 features: more rows than are fitted whole (twice the largest
    # sample), a chunk of the most bytes; fitted twice, as a worker fits one layer after
    # another
    images, positions, width = 20_000, 16, 64
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, images)
    centres = rng.normal(size=(10, width)).astype(np.float32)
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16,
                                  shape=(images * positions, width))
    x[:] = np.repeat(centres[labels], positions, 0) + 3 * rng.normal(size=x.shape)
    x.flush()
    np.save(tmp_path / "labels.npy", labels)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "x.npy"),
                          str(tmp_path / "labels.npy"), str(positions)],
                         capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout)
    assert min(measured["passes"]) >= 1  # the sampled path, with its passes over all rows
    entry = {"name": "x", "features": width, "positions": positions}
    assert measured["peak"] <= fit_bytes(entry, {"train": images}, 10, "torch")


def _largest_need(directory) -> int:
    manifest = latents.read_manifest(directory)
    return max(fit_bytes(e, manifest["plan"]["splits"], 10, "torch") for e in manifest["layers"])


def test_memory_budget_sets_how_many_fits_run_at_once(extracted, tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "WORKER_START_SECONDS", 0.0)  # workers pay even for tiny fits
    directory = tmp_path / "pooled"
    shutil.copytree(extracted["2"], directory)
    need = _largest_need(directory)

    too_small = labkit("probes", str(directory), "-mp", "2", "--memory", str(need - 1))
    assert too_small.exit_code == 2
    assert "more than the memory budget" in too_small.stderr and "--memory" in too_small.stderr
    assert not (directory / "probe_cache").exists()  # refused before any fit

    alone = labkit("probes", str(directory), "-mp", "2", "--memory", str(need), "-q")
    assert alone.exit_code == 0, alone.output
    assert "1 at a time" in alone.output and "the budget holds 1 at once" in alone.output

    shutil.rmtree(directory / "probe_cache")
    both = labkit("probes", str(directory), "-mp", "2", "--memory", str(2 * need), "-q")
    assert both.exit_code == 0, both.output
    assert "2 at a time" in both.output and "budget holds" not in both.output


def test_small_fits_stay_in_process_and_workers_start_only_when_they_pay(extracted, tmp_path):
    assert paying_workers([0.1, 0.1, 0.1], 2) == 1  # 0.3 s of fits: a worker start costs more
    assert paying_workers([20.0, 20.0, 20.0, 20.0], 2) == 2
    assert paying_workers([60.0, 1.0], 2) == 1  # the largest layer alone takes as long
    assert paying_workers([20.0, 20.0], 1) == 1
    directory = tmp_path / "pooled"
    shutil.copytree(extracted["2"], directory)
    result = labkit("probes", str(directory), "-mp", "2", "-q")
    assert result.exit_code == 0, result.output
    assert "in this process" in result.output and "at a time" not in result.output
    fits = [json.loads(p.read_text()) for p in (directory / "probe_cache").glob("*.json")]
    assert fits and all(f["result"]["fit_seconds"] < 5 for f in fits)  # no torch import in it


def test_memory_sizes():
    assert parse_size("8G") == 8 << 30 and parse_size("500M") == 500 << 20
    assert parse_size("1.5g") == 3 << 29 and parse_size("2048") == 2048
    assert parse_size("64MiB") == 64 << 20
    result = labkit("probes", "nowhere", "--memory", "8X")
    assert result.exit_code == 2 and "8X" in result.stderr and "8G" in result.stderr


def test_streamed_lbfgs_takes_over_when_the_passes_do_not_converge(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images, positions = 2_000, 9
    labels = rng.integers(0, 10, images)
    centres = rng.normal(size=(10, 8))
    x = (np.repeat(centres[labels], positions, 0)
         + 2.5 * rng.normal(size=(images * positions, 8))).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    rows = np.repeat(labels, positions)
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    reference.fit(x.astype(np.float32), rows)
    # a 1,024-row sample and a single pass: the fallback must reach the gradient test
    monkeypatch.setattr(logistic, "SAMPLE_ROWS", 1024)
    monkeypatch.setattr(logistic, "MAX_PASSES", 1)
    probe = logistic.fit(np.load(tmp_path / "x.npy", mmap_mode="r"), labels, 10,
                         positions=positions)
    assert probe.converged and probe.passes > 2  # the one DANE pass, then L-BFGS's
    assert abs(probe.train_accuracy - reference.score(x.astype(np.float32), rows)) <= 0.003


def test_a_large_whole_layer_kept_as_float16_fits_what_the_float32_copy_fits(
        tmp_path, monkeypatch):
    # a whole layer kept as stored (float16, standardised a chunk at a time) minimises the
    # same objective as the standardised float32 copy: same point, same accuracy, and
    # scikit-learn's on the same rows
    rng = np.random.default_rng(2)
    images, width = 3_000, 48
    labels = rng.integers(0, 10, images)
    centres = rng.normal(size=(10, width))
    x = (centres[labels] + 4 * rng.normal(size=(images, width)) + 5).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    rows = np.load(tmp_path / "x.npy", mmap_mode="r")
    monkeypatch.setattr(logistic, "CHUNK_BYTES", 64 << 10)  # several chunks per evaluation
    reference = logistic.fit(rows, labels, 10)
    monkeypatch.setattr(logistic, "FLOAT32_WHOLE_BYTES", 0)
    kept = logistic.fit(rows, labels, 10)
    assert kept.passes == 0 and reference.passes == 0 and kept.converged
    assert torch.allclose(kept.weight, reference.weight, atol=2e-3)
    assert kept.train_accuracy == pytest.approx(reference.train_accuracy, abs=1 / images)
    sklearn = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    sklearn.fit(x.astype(np.float32), labels)
    assert abs(kept.train_accuracy - sklearn.score(x.astype(np.float32), labels)) <= 0.003


def test_lbfgs_goes_on_in_float64_where_float32_values_hide_the_decrease():
    # an ill-conditioned quadratic far from zero: float32 values stop showing decreases
    # long before the gradient test passes (float32 alone stops at |g| ≈ 0.1; so did
    # torch's L-BFGS); float64 weights from there reach the test
    target = torch.linspace(-1, 1, 30).reshape(3, 10)
    scale = torch.logspace(0, 2, 30).reshape(3, 10)
    seen = set()

    def evaluate(weight, bias):
        seen.add(weight.dtype)
        d = weight - target.to(weight.dtype)
        value = 1e4 + (scale.to(weight.dtype) * d * d).sum() + (bias * bias).sum()
        return float(value), (2 * scale * d).double(), (2 * bias).double()

    weight, bias, used = logistic._lbfgs(evaluate, torch.zeros(3, 10), torch.ones(3), 1e-4, 500)
    _, grad_w, grad_b = evaluate(weight.double(), bias.double())
    assert max(float(grad_w.abs().max()), float(grad_b.abs().max())) <= 1e-4
    assert seen == {torch.float32, torch.float64} and weight.dtype == torch.float32
    assert 0 < used <= 500

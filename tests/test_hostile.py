"""Hostile files, bad specs and odd file systems (issue 14): no code runs from a file,
no traceback reaches the user, nothing half-written looks whole. Real CLI, no mocks."""
import json
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from labkit.analyses import latents
from labkit.analyses.probes import ProbeParams, cache_path
from labkit.cli import cli
from labkit.cli.commands.common import load_runs
from labkit.cli.launch import RunTask, run_local
from labkit.store import runinfo
from labkit.testing import run_here

sys.path.insert(0, str(Path(__file__).parent))
from spec_fuzz import corpus  # noqa: E402

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64, "epochs": 2,
        "optimizer": {"name": "sgd", "lr": 0.05}}


def invoke(*args):
    """The real command line in this process; a traceback would show as ``exception``."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, result.exception)
    assert "Traceback" not in result.output
    return result


# ---------------------------------------------------------------- no code from files

class Payload:
    """Unpickling this creates ``marker``: proof that a file ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path, with_digest: bool = False) -> None:
    data = pickle.dumps(Payload(marker))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if with_digest:  # a digest that matches: only the loader itself stands in the way
        import hashlib
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())


def test_planted_pickles_never_run(tmp_path, write_spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec({**TINY, "saturation": {},
                       "analyses": [{"name": "probes", "downsampling": 2}, "saturation"]})
    assert invoke("run", spec, "--run-id", "H", "--quiet").exit_code == 0
    (run,) = load_runs(str(spec), "H")
    directory = latents.locate(run, 2)
    manifest = latents.read_manifest(directory)
    marker = tmp_path / "code-ran"

    # everywhere labkit reads: the final checkpoint (with a matching digest), the
    # spectra, a latent array, every probe-cache entry, run files and records
    plant(runinfo.final_checkpoint(run), marker, with_digest=True)
    np.savez(run.directory / "spectra" / "epoch_0002.npz",
             **{"eval/fc": np.array([Payload(marker)], dtype=object)})
    np.save(latents.array_path(directory, "train", manifest["plan"]["layers"][0]),
            np.array([Payload(marker)], dtype=object), allow_pickle=True)
    for layer in manifest["plan"]["layers"]:
        key = [manifest["digest"], layer, ProbeParams().model_dump(mode="json")]
        plant(cache_path(directory, key), marker)
    plant(directory / "probe_cache" / "output.pkl", marker)
    for name in (runinfo.STATUS_JSON, runinfo.ANALYSES_JSON, "analyses/saturation.csv.json"):
        plant(run.directory / name, marker)
    plant(directory / latents.PROGRESS, marker)

    for args in (["run", spec, "--run-id", "H", "--quiet"], ["status", spec, "--run-id", "H"],
                 ["probes", directory], ["saturation", spec, "--run-id", "H"],
                 ["results", tmp_path / "logs"], ["plan", spec, "--run-id", "H"]):
        result = invoke(*args)
        assert result.exit_code in (0, 1, 2), (args, result.output)
    assert not marker.exists()


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("count, seed", [(320, 14), (160, 23)])
def test_fuzzed_specs_end_in_exit_0_or_2_with_one_message(tmp_path, monkeypatch, count, seed):
    monkeypatch.chdir(tmp_path)
    files = corpus(count, seed=seed)
    assert len(files) >= count

    def too_slow(*_):
        raise TimeoutError("a spec took over 20 s: it hangs")

    previous = signal.signal(signal.SIGALRM, too_slow)
    try:
        for i, content in enumerate(files):
            path = tmp_path / f"spec{i}.json"
            path.write_bytes(content)
            signal.alarm(20)
            result = invoke("plan", path)
            signal.alarm(0)
            assert result.exit_code in (0, 2), (content[:200], result.output)
            if result.exit_code == 2:
                (line,) = [l for l in result.output.splitlines() if l.startswith("error:")]
                assert len(line) > 20
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("change, fragment", [
    ({"dataset": {"name": "digits", "augment": "flipcrop"}}, "dataset.augment"),
    ({"dataset": {"name": "digits", "resolution": -8}}, "dataset.resolution"),
    ({"dataset": {"name": "digits", "resolution": True}}, "dataset.resolution"),
    ({"dataset": {"name": "digits", "subset": 0}}, "dataset.subset"),
    ({"model": {"name": "mlp_s", "hidden": -1}}, "hidden"),
    ({"model": "tv:not_a_model"}, "not_a_model"),
    ({"optimizer": {"name": "sgd", "lr": float("nan")}}, "optimizer.lr"),
    ({"optimizer": {"name": "sgd", "lr": float("inf")}}, "optimizer.lr"),
    ({"scheduler": {"name": "cosine", "warmup_epochs": -100}}, "warmup_epochs"),
    ({"model": {"name": []}}, "model.name"),
    ({"seed": list(range(30)), "epochs": list(range(1, 30)), "batch_size": list(range(1, 30))},
     "more than"),
    ({"logs_dir": "a\0b"}, "logs_dir"),
])
def test_plan_reports_what_training_would_trip_over(write_spec, change, fragment):
    for command in (["plan"], ["run", "--dry-run", "--run-id", "X"]):
        result = invoke(*command[:1], write_spec({**TINY, **change}), *command[1:])
        assert result.exit_code == 2 and fragment in result.output, result.output


@pytest.mark.parametrize("run_id", ["", "../../x", "a/b"])
def test_a_run_id_is_one_folder_name(write_spec, run_id):
    result = invoke("plan", write_spec(TINY), "--run-id", run_id)
    assert result.exit_code == 2 and "--run-id" in result.output


def test_a_mistake_found_while_running_fails_that_point_only(tmp_path, write_spec):
    spec = write_spec({**TINY, "epochs": 1, "dataset": [
        {"name": "digits"}, {"name": "cifar10", "root": str(tmp_path / "nothing")},
        {"name": "digits", "resolution": 16}]})
    result = invoke("run", spec, "--run-id", "M", "--quiet")
    assert result.exit_code == 2
    assert "CIFAR-10 not found" in result.output and "2 finished" in result.output
    bad = [r for r in load_runs(str(spec), "M") if r.config["dataset"]["name"] == "cifar10"][0]
    status = runinfo.read_status(bad.directory)
    assert status["state"] == "failed" and "CIFAR-10 not found" in status["reason"]


# ---------------------------------------------------------------- damaged run files

def test_damaged_run_files_never_crash_a_command(tmp_path, write_spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec({**TINY, "epochs": 1, "seed": [0, 1, 2]})
    assert invoke("run", spec, "--run-id", "D", "--quiet").exit_code == 0
    a, b, c = load_runs(str(spec), "D")
    (a.directory / runinfo.STATUS_JSON).write_text("")
    (b.directory / runinfo.CONFIG_JSON).write_text('{"config": ')
    (c.directory / runinfo.LOG_CSV).write_bytes(b"\xff\xfe\x00garbage")
    status = invoke("status", spec, "--run-id", "D")
    assert status.exit_code == 0 and "finished" in status.output
    plan = invoke("plan", spec, "--run-id", "D")
    assert plan.exit_code == 0
    results = invoke("results", tmp_path / "logs", "-o", tmp_path / "all.csv")
    assert results.exit_code == 0 and "skipped" in results.output
    assert str(b.directory) in results.output  # the damaged config is named
    again = invoke("run", spec, "--run-id", "D", "--quiet")
    assert again.exit_code == 0  # the status is rewritten, the log rebuilt
    assert runinfo.read_status(a.directory)["state"] == "finished"
    assert (c.directory / runinfo.LOG_CSV).read_text().startswith("epoch,")
    manifest_dir = tmp_path / "latents"
    manifest_dir.mkdir()
    (manifest_dir / latents.MANIFEST).write_text("[1, 2")
    probes = invoke("probes", manifest_dir)
    assert probes.exit_code == 2 and "no complete latents" in probes.output


def test_a_foreign_latents_pointer_is_never_followed(registries, tmp_path):
    from labkit.spec import expand
    from labkit.store.identity import RunConfig

    (config,) = expand({**TINY, "logs_dir": str(tmp_path / "logs")}, registries)
    run = RunConfig(config, "P")
    victim = tmp_path / "precious"
    victim.mkdir()
    pointer = latents.pointer_path(run.directory, 2)
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"directory": str(victim)}))
    assert latents.locate(run, 2) != victim
    assert latents.locate(run, 2).parts[-3:] == ("P", run.hash, "2")


# ---------------------------------------------------------------- file hygiene, workers

def test_written_files_respect_the_umask_and_leftovers_are_removed(tmp_path, write_spec):
    old = os.umask(0o022)
    try:
        spec = write_spec({**TINY, "epochs": 1})
        assert invoke("run", spec, "--run-id", "U", "--quiet").exit_code == 0
    finally:
        os.umask(old)
    (run,) = load_runs(str(spec), "U")
    for name in (runinfo.LOG_CSV, runinfo.STATUS_JSON, "checkpoints/epoch_0001.pt"):
        assert stat.S_IMODE((run.directory / name).stat().st_mode) == 0o644, name
    leftover = run.directory / "checkpoints" / ".tmp-epoch_0002.pt-abc"
    leftover.write_bytes(b"half a checkpoint")
    assert invoke("run", spec, "--run-id", "U", "--quiet").exit_code == 0
    assert not leftover.exists()


class DyingTask(RunTask):
    """A run whose worker process is killed (as by the OOM killer)."""

    def __call__(self) -> str:
        if self.config["seed"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__()


def test_a_dead_worker_fails_its_run_and_the_grid_goes_on(tmp_path, write_spec):
    spec = write_spec({**TINY, "epochs": 1, "seed": [0, 1, 2]})
    runs = load_runs(str(spec), "W")
    tasks = [DyingTask(r.config, r.run_id, "cpu") for r in runs]
    done = []
    states = run_local(tasks, 2, lambda i, state: done.append(i))
    assert states == ["finished", "failed", "finished"] and sorted(done) == [0, 1, 2]
    status = runinfo.read_status(runs[1].directory)
    assert status["state"] == "failed" and "signal 9" in status["reason"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs), where the latents of the digits do not fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_message_not_a_signal(small_disk, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**TINY, "epochs": 1, "logs_dir": str(small_disk / "logs"),
                                "analyses": [{"name": "latents", "downsampling": "pixelwise",
                                              "dtype": "float32"}]}))
    result = run_here("run", str(spec), "--run-id", "F", "--quiet")
    # refused before writing: the planned bytes do not fit (not -7, SIGBUS, as before)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"has [\d.]+ (B|KiB|MiB) free", result.stderr), result.stderr  # not 0.00 GB
    (run,) = load_runs(str(spec), "F")
    assert runinfo.read_status(run.directory)["state"] == "finished"  # training was kept
    assert not latents.read_manifest(latents.locate(run, "pixelwise"))  # nothing looks whole
    full = run_here("results", str(small_disk / "logs"), "-o", str(small_disk / "all.csv"))
    assert full.returncode in (0, 1) and "Traceback" not in full.stderr


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only with a read-only bind mount (root ignores file modes)."""
    mounted = []

    def make(folder: Path) -> None:
        for args in (["mount", "--bind", str(folder), str(folder)],
                     ["mount", "-o", "remount,ro,bind", str(folder)]):
            done = subprocess.run(args, capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.decode().strip()}")
            mounted.append(folder)

    yield make
    for folder in dict.fromkeys(reversed(mounted)):
        subprocess.run(["umount", str(folder)], check=False)


def test_a_finished_run_on_a_read_only_disk_is_read_not_written(tmp_path, read_only):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**TINY, "epochs": 1, "logs_dir": str(tmp_path / "logs")}))
    assert run_here("run", str(spec), "--run-id", "R", "--quiet").returncode == 0
    read_only(tmp_path / "logs")
    again = run_here("run", str(spec), "--run-id", "R", "--quiet")
    assert again.returncode == 0 and "1 already finished" in again.stdout, again.stderr
    for args in (["status", str(spec), "--run-id", "R"], ["results", str(tmp_path / "logs")]):
        result = run_here(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    extract = run_here("extract", str(spec), "--run-id", "R", "-d", "2")
    assert extract.returncode == 1 and "Traceback" not in extract.stderr
    assert "Read-only file system" in extract.stderr

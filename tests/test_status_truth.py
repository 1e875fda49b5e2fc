"""Status that tells the truth (issue 23, 7 and 9): a run whose process is gone is
interrupted, a damaged final checkpoint is not finished, epochs and FLOPs follow
``steps``, a best.pt chosen under another best_metric is never read as the best, and a
config.json that is not the run's own is flagged everywhere. Real runs, real files, the
command line in this process."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labkit.cli.commands.common import load_runs
from labkit.store import runinfo
from labkit.testing import invoke_cli as invoke

SPEC = {"model": "mlp_s", "dataset": {"name": "digits", "resolution": 8, "subset": 256},
        "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}, "logs_dir": "logs",
        "saturation": {}, "best_metric": "eval-accuracy",
        # 8 steps an epoch: 12 stop in the middle of epoch 2 of 3
        "epochs": 3, "steps": [None, 12]}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The runs of SPEC trained (3 epochs, and the same with a budget of 12 steps), in a
    folder of their own, by their ``steps``."""
    root = tmp_path_factory.mktemp("truth")
    (root / "spec.json").write_text(json.dumps(SPEC))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert invoke("run", "spec.json", "--run-id", "T", "-q").exit_code == 0
        runs = load_runs("spec.json", "T")
    return root, {r.config["steps"]: r for r in runs}


def status_of(root: Path, run) -> str:
    """The line of ``run`` in ``labkit status``, and each other view's state of it."""
    result = invoke("status", root / "spec.json", "--run-id", "T")
    assert result.exit_code == 0, result.output
    return next(line for line in result.output.splitlines() if run.hash in line)


def results_state(root: Path, run) -> str | None:
    invoke("results", root / "logs", "-o", root / "all.csv")
    table = pd.read_csv(root / "all.csv")
    rows = table[table["run_hash"] == run.hash]
    return None if rows.empty else rows["state"].iloc[0]


def report_text(root: Path) -> str:
    assert invoke("report", root / "spec.json", "--run-id", "T", "-q", "-o",
                  root / "r.html").exit_code == 0
    return (root / "r.html").read_text()


def test_a_run_whose_process_is_gone_is_interrupted_not_running(grid, monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)
    run = runs[None]
    saved = (run.directory / runinfo.STATUS_JSON).read_bytes()
    final = runinfo.final_checkpoint(run)
    parked = final.with_name("parked")
    final.rename(parked)  # a run in the middle of its training
    try:
        runinfo.write_status(run.directory, "running", epoch=1)
        holder = subprocess.Popen(  # a real process holding the run's lock, then killed
            [sys.executable, "-c", "import sys, time; from labkit.store import runinfo\n"
             "with runinfo.exclusive(sys.argv[1]):\n print('held', flush=True); time.sleep(600)",
             str(run.directory)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        assert " running " in status_of(root, run)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        line = status_of(root, run)
        assert " interrupted " in line and "resumes it" in line and " running " not in line
        assert results_state(root, run) == "interrupted"
        assert "interrupted" in report_text(root)
    finally:
        parked.rename(final)
        (run.directory / runinfo.STATUS_JSON).write_bytes(saved)


def test_a_final_checkpoint_not_intact_is_never_shown_finished(grid, monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)
    run = runs[None]
    final = runinfo.final_checkpoint(run)
    digest = final.with_name(final.name + ".sha256")
    saved = final.read_bytes(), digest.read_bytes()
    damages = {"truncated": lambda: final.write_bytes(saved[0][:len(saved[0]) // 2]),
               "empty": lambda: final.write_bytes(b""),
               "digest edited": lambda: digest.write_text("0" * 64 + "\n")}
    try:
        for name, damage in damages.items():
            damage()
            line = status_of(root, run)
            assert " finished " not in line and "incomplete" in line, (name, line)
            assert results_state(root, run) == "incomplete", name
            extract = invoke("extract", "spec.json", "--run-id", "T", "-q")
            assert extract.exit_code == 2 and "not finished" in extract.output, name
            final.write_bytes(saved[0])
            digest.write_bytes(saved[1])
        damage()  # the report shows what status shows (one damage suffices: same state)
        page = report_text(root)
        assert "incomplete" in page and "does not match its sha256" in page
    finally:
        final.write_bytes(saved[0])
        digest.write_bytes(saved[1])
    assert " finished " in status_of(root, run)


def test_epochs_and_flops_follow_the_step_budget(grid, monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)
    stepped, whole = runs[12], runs[None]
    assert " 2/2 " in status_of(root, stepped)  # stopped in epoch 2 of 3: 2 is its last
    assert " 3/3 " in status_of(root, whole)
    info = json.loads((stepped.directory / runinfo.COMPUTE_JSON).read_text())
    full = json.loads((whole.directory / runinfo.COMPUTE_JSON).read_text())
    assert full["train_samples"] == 256  # 8 batches of 32 an epoch
    assert (info["epochs"], info["steps"]) == (2, 12)
    assert info["trained_samples"] == 256 + 4 * 32  # one epoch, then 4 steps
    assert info["training_flops"] == 3 * info["flops_per_image"] * info["trained_samples"]
    assert full["trained_samples"] == 3 * 256 and full["steps"] == 24


def test_best_pt_chosen_under_another_best_metric_is_never_read_as_the_best(grid,
                                                                           monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)

    def extract(**changes):  # the same runs (these are no identity), read as the config says
        Path("other.json").write_text(json.dumps({**SPEC, "analysis_checkpoint": "best",
                                                  **changes}))
        return invoke("extract", "other.json", "--run-id", "T", "-q")

    assert extract().exit_code == 0
    for other in ({"best_metric": "eval-loss", "best_mode": "min"}, {"best_mode": "min"}):
        refused = extract(**other)
        assert refused.exit_code == 2, refused.output
        assert "best.pt holds epoch" in refused.output and "eval-accuracy (max)" in \
            refused.output and len(refused.output.strip().splitlines()) == 1


def test_a_config_json_that_is_not_the_runs_own_is_flagged_and_rewritten(grid, monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)
    run, other = runs[None], runs[12]
    path = run.directory / runinfo.CONFIG_JSON
    saved = path.read_bytes()
    edited = json.loads(saved)
    edited["config"]["optimizer"]["lr"] = 0.999  # its hash field left as it was
    try:
        edited_text = json.dumps(edited)
        for planted in (edited_text, (other.directory / runinfo.CONFIG_JSON).read_text()):
            path.write_text(planted)
            line = status_of(root, run)
            assert " damaged " in line and "no longer matches the run's identity hash" in line
            result = invoke("results", root / "logs", "-o", root / "all.csv")
            assert f"skipped {root / run.directory}" in result.output
            table = (root / "all.csv").read_text()
            assert "0.999" not in table and run.hash not in table
            if planted is edited_text:  # the report shows what status shows: once suffices
                assert "no longer matches the run&#x27;s identity hash" in report_text(root)
            assert invoke("run", "spec.json", "--run-id", "T", "-q").exit_code == 0
            assert json.loads(path.read_text())["config"] == json.loads(saved)["config"]
            assert " finished " in status_of(root, run)
    finally:
        path.write_bytes(saved)


def test_a_saturation_table_never_silently_lacks_an_epoch(grid, monkeypatch):
    root, runs = grid
    monkeypatch.chdir(root)
    run = runs[None]
    spectra = run.directory / "spectra" / "epoch_0002.npz"
    parked = spectra.with_name("parked")
    spectra.rename(parked)
    try:
        refused = invoke("saturation", "spec.json", "--run-id", "T", "-q")
        assert refused.exit_code == 2
        assert "lacks the spectra of epoch(s) 2 of 3" in refused.output
        assert not (run.directory / "saturation.csv").exists()
    finally:
        parked.rename(spectra)
    assert invoke("saturation", "spec.json", "--run-id", "T", "-q").exit_code == 0

"""Progress you can see: training, every built-in analysis and the figures say what they do
(one plain line per step in logs, bars on a terminal), ``--jobs`` workers show their
epochs, and ``--quiet`` silences all of it. Real command lines, real files; the display
rules themselves in-process (labkit.training.progress)."""
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from labkit.engine.run import RUN_FIGURES_ENV
from labkit.testing import invoke, run_here
from labkit.training import progress

SPEC = {"model": "mlp_s", "dataset": {"name": "digits", "resolution": 8}, "epochs": 1,
        "batch_size": 128, "saturation": {},
        "analyses": ["receptive_field", {"name": "probes", "downsampling": 1},
                     {"name": "projection", "deltas": [0.9, 1.0]}, "saturation",
                     {"name": "evaluate", "dataset": "digits"},
                     {"name": "intrinsic_dimension", "samples": 60, "k": 5, "downsampling": 1}]}
STEP = r" \(\d+\.\d s\)$"  # a finished step's time ends its line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-run spec trained with its analyses by `labkit run` (in this process), stderr
    no terminal."""
    folder = tmp_path_factory.mktemp("progress")
    spec = folder / "spec.json"
    spec.write_text(json.dumps({**SPEC, "logs_dir": str(folder / "logs")}))
    result = run_here("run", str(spec), "--run-id", "P", env={RUN_FIGURES_ENV: "1"})
    assert result.returncode == 0, result.stderr
    return spec, result.stderr


@pytest.mark.parametrize("pattern", [
    r"^mlp_s epoch 1/1: train loss [\d.]+ accuracy [\d.]+, eval loss [\d.]+ accuracy [\d.]+ ",
    r"^figures mlp_s: figure 1 learning_curves" + STEP,
    r"^figures mlp_s: figure 2 saturation_epochs" + STEP,
    r"^figures mlp_s: figure 1 tail_pattern" + STEP,  # after the analyses
    r"^figures mlp_s: figure 2 projected_results-[0-9a-f]+" + STEP,
    r"^saturation plots mlp_s: figure saturation_epoch_0001\.png" + STEP,
    r"^receptive_field mlp_s: 3 layers" + STEP,
    r"^latents mlp_s: split 1/2 train \(1438 images, 3 layers\)" + STEP,
    r"^latents mlp_s: split 2/2 eval \(359 images, 3 layers\)" + STEP,
    *(rf"^probes mlp_s: layer {i}/3 \S+" + STEP for i in (1, 2, 3)),
    r"^projection mlp_s: covariances of 3 layers, unprojected scores" + STEP,
    r"^projection mlp_s: delta 1/2 0\.9" + STEP,
    r"^projection mlp_s: delta 2/2 1" + STEP,
    r"^saturation mlp_s: epoch 1/1" + STEP,
    r"^evaluate mlp_s: digits eval \(359 images\)" + STEP,
    r"^intrinsic_dimension mlp_s: split 1/2 train" + STEP,
    *(rf"^intrinsic_dimension eval: layer {i}/3 \S+" + STEP for i in (1, 2, 3)),
])
def test_every_analysis_prints_its_steps_as_lines_when_stderr_is_no_terminal(trained, pattern):
    _, stderr = trained
    assert re.search(pattern, stderr, re.MULTILINE), stderr


def test_lines_are_one_per_step_never_a_bar_or_a_batch(trained):
    _, stderr = trained
    assert "\r" not in stderr and "%|" not in stderr and "batch" not in stderr
    # three probes, one line each
    assert len(re.findall(r"^probes mlp_s: layer", stderr, re.MULTILINE)) == 3


def run_in_terminal(*args: str) -> str:
    """Run ``labkit ARGS…`` with stdout and stderr a pseudo-terminal (120 columns); all
    it wrote there, escape sequences and carriage returns included."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "labkit", *args], stdin=subprocess.DEVNULL,
                               stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_bars_not_lines_and_quiet_shows_nothing(trained):
    spec, _ = trained
    shown = run_in_terminal("project", str(spec), "--run-id", "P", "--deltas", "0.5,0.8")
    assert re.search(r"projection mlp_s: 100%\|█+\| 2/2 ", shown), shown
    assert re.search(r"\r(?!\n)", shown)  # the bar is redrawn in place
    assert not re.search(r"delta 1/2 0\.5 \(", shown)  # no step lines where a bar shows
    # --quiet: not even the plain lines that stderr no terminal would get (in-process: fast)
    quiet = invoke("project", str(spec), "--run-id", "P", "--deltas", "0.6", "--quiet")
    assert quiet.exit_code == 0 and quiet.output.startswith("projected: "), quiet.output
    assert quiet.output.count("\n") == 1, quiet.output


def test_jobs_2_shows_each_workers_epochs_as_lines_when_stderr_is_no_terminal(tmp_path):
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps({"model": "mlp_s", "dataset": {"name": "digits", "resolution": 8},
                                "epochs": 1, "batch_size": 128,
                                "optimizer": {"name": "sgd", "lr": [0.1, 0.05]},
                                "analyses": ["receptive_field"],
                                "logs_dir": str(tmp_path / "logs")}))
    result = run_here("run", str(spec), "--run-id", "J", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    for lr in ("0.1", "0.05"):
        assert re.search(rf"^\[worker [12]\] mlp_s lr={lr} epoch 1/1: train loss .* eval loss ",
                         result.stderr, re.MULTILINE), result.stderr
        assert re.search(rf"^\[worker [12]\] receptive_field mlp_s lr={lr}: 3 layers" + STEP,
                         result.stderr, re.MULTILINE), result.stderr
    assert "\r" not in result.stderr


# ---- the display rules, in-process


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_count_from_the_steps_done_and_name_the_run(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.working_on("cnn_s lr=0.1"):
        for _ in progress.track(["conv1", "conv2"], "probes", unit="layer", total=4, done=2,
                                label=str):
            for _ in progress.track(range(3), "batches", unit="batch", lines=False):
                pass
        progress.note("a line that stays")
        with progress.step("receptive_field", "12 layers"):
            pass
        for _ in progress.track(["x"], "quiet", progress=False):
            pass
    lines = sys.stderr.getvalue().splitlines()
    assert [re.sub(STEP, "", line) for line in lines] == [
        "probes cnn_s lr=0.1: layer 3/4 conv1", "probes cnn_s lr=0.1: layer 4/4 conv2",
        "a line that stays", "receptive_field cnn_s lr=0.1: 12 layers"]


def test_a_worker_relays_its_loops_and_the_board_shows_one_line_per_worker(monkeypatch):
    events = []
    with progress.relayed(events.append), progress.working_on("mlp_s lr=0.1"):
        for epoch in progress.track(range(1, 3), "", unit="epoch", lines=False):
            for _ in progress.track(range(4), "train", unit="batch", lines=False):
                pass
            progress.note(f"mlp_s lr=0.1 epoch {epoch}/2: eval accuracy 0.9")
    statuses = [e for e in events if e[0] == "status"]
    assert ("status", "mlp_s lr=0.1 epoch 1/2 · train", 0, 4, "batch", "") in statuses
    assert ("status", "mlp_s lr=0.1 epoch 2/2 · train", 0, 4, "batch", "") in statuses
    assert ("line", "mlp_s lr=0.1 epoch 1/2: eval accuracy 0.9", True) in events
    assert statuses[-1] == ("status", "mlp_s lr=0.1", 0, None, "", "")  # all loops ended

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log: the lines, prefixed
    plain = progress.Board(2)
    for event in events:
        plain.show(1, event)
    plain.show(1, ("line", "probes mlp_s lr=0.1: layer 1/3 fc (0.1 s)", False))
    assert sys.stderr.getvalue().splitlines() == [
        "[worker 2] mlp_s lr=0.1 epoch 1/2: eval accuracy 0.9",
        "[worker 2] mlp_s lr=0.1 epoch 2/2: eval accuracy 0.9",
        "[worker 2] probes mlp_s lr=0.1: layer 1/3 fc (0.1 s)"]

    monkeypatch.setattr(sys, "stderr", Terminal())  # a terminal: a line per worker
    board = progress.Board(2)
    board.start(0, "mlp_s lr=0.05")
    board.show(1, ("status", "mlp_s lr=0.1 epoch 1/2 · train", 3, 4, "batch", ""))
    board.show(1, ("line", "probes mlp_s lr=0.1: layer 1/3 fc (0.1 s)", False))
    shown = sys.stderr.getvalue()
    assert "[worker 1] mlp_s lr=0.05: starting" in shown
    assert re.search(r"\[worker 2\] mlp_s lr=0.1 epoch 1/2 · train:  75%\|\S+ *\| 3/4 batch",
                     shown), shown
    assert "layer 1/3" not in shown  # a step's line: the bar shows it
    board.close()

    monkeypatch.setattr(sys, "stderr", Terminal())
    silent = progress.Board(2, enabled=False)  # --quiet
    silent.start(0, "mlp_s lr=0.05")
    for event in events:
        silent.show(0, event)
    assert sys.stderr.getvalue() == ""

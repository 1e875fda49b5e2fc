"""The self-describing files of a run directory.

* ``config.json`` — resolved config, identity hash, run-id, readable name, labkit and
  plugin versions of the first training segment (written once);
* ``provenance.jsonl`` — one line per training segment (each start or resume): first
  epoch, labkit and plugin versions, torch version, host, device, time; appended,
  never rewritten;
* ``status.json`` — training ``state`` (running / finished / failed / interrupted),
  ``reason``, last finished ``epoch``, ``updated`` (UTC time). A report, never trusted:
  whether a run is trained is decided by its final checkpoint (:func:`final_checkpoint`);
* ``analyses.json`` — per analysis, its own state (finished / failed), reason and time,
  apart from the training state: a failed analysis leaves a trained run trained;
* ``log.csv`` — one row per epoch (columns in the README);
* ``computational_info.json`` — parameters, FLOPs per image, training FLOPs;
* ``.lock`` — held while a process trains the run (see :func:`exclusive`).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

import labkit
from labkit import checkpoint
from labkit.atomic import write_json
from labkit.identity import RunConfig

CONFIG_JSON = "config.json"
PROVENANCE_JSONL = "provenance.jsonl"
STATUS_JSON = "status.json"
ANALYSES_JSON = "analyses.json"
LOG_CSV = "log.csv"
COMPUTE_JSON = "computational_info.json"
LOCK_FILE = ".lock"


@contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock: one process works on a run at a time, others wait here.

    An ``flock`` on ``<run_dir>/.lock``: the OS releases it when the holder exits, even
    after ``kill -9``, so a stale lock never blocks a resume.
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_json(path: Path) -> dict[str, Any]:
    """``path`` as JSON, or ``{}`` when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def final_checkpoint(run: RunConfig) -> Path:
    """The checkpoint a trained run must have: the one after its last epoch."""
    return checkpoint.checkpoint_path(Path(run.directory) / "checkpoints", run.config["epochs"])


def training_state(run: RunConfig) -> dict[str, Any]:
    """The run's training status as ``labkit status`` shows it, cheaply.

    ``finished`` only when the final checkpoint and its digest are present (the digest
    is checked where the weights are used); a status file that says ``finished``
    without them reports ``incomplete``.
    """
    status = read_status(run.directory)
    if checkpoint.digest(final_checkpoint(run)) is not None:
        return {**status, "state": "finished", "epoch": run.config["epochs"]}
    if status.get("state") == "finished":
        return {**status, "state": "incomplete",
                "reason": "the final checkpoint is missing or damaged; `labkit run` retrains "
                          "from the newest intact checkpoint"}
    return status


def read_analyses(run_dir: Path) -> dict[str, Any]:
    """``{analysis label: {"state", "reason", "updated"}}`` from ``analyses.json``."""
    return read_json(Path(run_dir) / ANALYSES_JSON)


def write_analysis_state(run_dir: Path, label: str, state: str,
                         reason: str | None = None) -> None:
    """Record one analysis's state in ``analyses.json`` (the others are kept)."""
    states = read_analyses(run_dir)
    states[label] = {"state": state, "reason": reason, "updated": _now()}
    write_json(Path(run_dir) / ANALYSES_JSON, states)


def append_provenance(run_dir: Path, first_epoch: int, device: str,
                      plugin_versions: dict[str, str]) -> None:
    """Append one training segment's line to ``provenance.jsonl``."""
    line = {"first_epoch": first_epoch, "labkit_version": labkit.__version__,
            "plugins": plugin_versions, "torch_version": torch.__version__,
            "host": socket.gethostname(), "device": device, "time": _now()}
    path = Path(run_dir) / PROVENANCE_JSONL
    with open(path, "a") as handle:  # a torn last line is skipped by read_provenance
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    """The training segments of ``provenance.jsonl``, oldest first."""
    path = Path(run_dir) / PROVENANCE_JSONL
    segments = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            segments.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return segments


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status, ``{}`` when never started."""
    return read_json(Path(run_dir) / STATUS_JSON)


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Replace the status file; keeps the last known epoch unless given."""
    previous = read_status(run_dir)
    status = {"state": state, "reason": fields.pop("reason", None),
              "epoch": fields.pop("epoch", previous.get("epoch", 0)),
              "updated": _now()}
    status.update(fields)
    write_json(Path(run_dir) / STATUS_JSON, status)


def write_config(run_dir: Path, run: RunConfig, plugin_versions: dict[str, str]) -> None:
    """Write ``config.json`` (the resolved config plus identity and versions) once: a
    resumed run keeps the file of its first segment (see ``provenance.jsonl``).

    Args:
        plugin_versions: ``{plugin name: version}`` of the plugins that filled the
            registries (``Registries.plugin_versions``).
    """
    if (Path(run_dir) / CONFIG_JSON).exists():
        return
    write_json(Path(run_dir) / CONFIG_JSON, {
        "hash": run.hash, "run_id": run.run_id, "name": run.name,
        "labkit_version": labkit.__version__, "plugins": plugin_versions,
        "config": run.config})


def read_config(run_dir: Path) -> dict[str, Any]:
    """What :func:`write_config` wrote, ``{}`` when absent."""
    return read_json(Path(run_dir) / CONFIG_JSON)


def flops_per_image(model: torch.nn.Module, in_channels: int, resolution: int,
                    device: torch.device) -> int:
    """Forward FLOPs of one image, counted by torch's own FLOP counter (eval mode)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, resolution, resolution, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def write_computational_info(run_dir: Path, model: torch.nn.Module, data: Any,
                             config: dict[str, Any], device: torch.device) -> None:
    """Write ``computational_info.json`` once per run.

    Training FLOPs use the usual convention backward ≈ 2 × forward, so one training
    step costs 3 × forward FLOPs per image.
    """
    path = Path(run_dir) / COMPUTE_JSON
    if path.exists():
        return
    per_image = flops_per_image(model, data.in_channels, data.resolution, device)
    write_json(path, {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_image": per_image,
        "train_samples": len(data.train),
        "epochs": config["epochs"],
        "training_flops": 3 * per_image * len(data.train) * config["epochs"],
    })

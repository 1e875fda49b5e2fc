"""The self-describing files of a run directory.

* ``config.json`` — resolved config, identity hash, run-id, readable name, labkit and
  plugin versions;
* ``status.json`` — ``state`` (running / finished / failed / interrupted), ``reason``,
  last finished ``epoch``, ``updated`` (UTC time);
* ``log.csv`` — one row per epoch (columns in the README);
* ``computational_info.json`` — parameters, FLOPs per image, training FLOPs;
* ``.lock`` — held while a process trains the run (see :func:`exclusive`).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

import labkit
from labkit.atomic import write_json
from labkit.identity import RunConfig

CONFIG_JSON = "config.json"
STATUS_JSON = "status.json"
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


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status, ``{}`` when never started."""
    return read_json(Path(run_dir) / STATUS_JSON)


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Replace the status file; keeps the last known epoch unless given."""
    previous = read_status(run_dir)
    status = {"state": state, "reason": fields.pop("reason", None),
              "epoch": fields.pop("epoch", previous.get("epoch", 0)),
              "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    status.update(fields)
    write_json(Path(run_dir) / STATUS_JSON, status)


def plugin_versions() -> dict[str, str]:
    """``{plugin name: version}`` of every loaded plugin."""
    from labkit import plugins

    return {info.name: info.version for info in plugins.plugin_infos(plugins.plugin_manager())}


def write_config(run_dir: Path, run: RunConfig) -> None:
    """Write ``config.json`` (the resolved config plus identity and versions)."""
    write_json(Path(run_dir) / CONFIG_JSON, {
        "hash": run.hash, "run_id": run.run_id, "name": run.name,
        "labkit_version": labkit.__version__, "plugins": plugin_versions(),
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

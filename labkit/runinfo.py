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
* ``computational_info.json`` — parameters, FLOPs per image, training FLOPs (written
  by :func:`labkit.engine.write_computational_info`);
* ``.lock`` — held while a process trains the run (see :func:`exclusive`).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_serializer

import labkit
from labkit.atomic import read_json, remove_leftovers, write_json, write_text
from labkit.checkpoint_files import BEST, checkpoint_path, digest, epoch_of
from labkit.errors import DamagedFile, UserError
from labkit.identity import RunConfig, note_outside

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
    after ``kill -9``, so a stale lock never blocks a resume. On a read-only directory
    the existing lock file is locked read-only, so a finished run can still be read.
    Holding the lock, the leftovers of interrupted atomic writes are removed.

    Raises:
        UserError: the directory cannot be created, or holds no lock file and cannot
            be written.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a")
    except OSError as exc:
        if not (run_dir / LOCK_FILE).is_file():
            raise UserError(f"cannot write the run directory {run_dir} ({exc.strerror}); "
                            f"make it writable or choose another logs_dir") from None
        handle = open(run_dir / LOCK_FILE)
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why nothing happens, then wait
            print(f"waiting for another labkit process working on {run_dir} (it holds "
                  f"{run_dir / LOCK_FILE}); this one continues when that one is done",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            remove_leftovers(run_dir)
        except OSError:  # read-only: nothing can have been left by a write here
            pass
        yield


FINAL_POINTER = "final.txt"


def final_checkpoint(run: RunConfig) -> Path:
    """The checkpoint a trained run must have: the one after its last epoch.

    Under a ``steps`` budget the last epoch depends on the data set's size, so the
    engine names it in ``checkpoints/final.txt`` once it is written; without that file
    such a run is not trained.
    """
    directory = Path(run.directory) / "checkpoints"
    if run.config.get("steps") is not None:
        try:
            name = (directory / FINAL_POINTER).read_text().strip()
        except OSError:
            name = ""
        if epoch_of(name) is not None:
            return directory / name
    return checkpoint_path(directory, run.config["epochs"])


def mark_final(run: RunConfig, path: Path) -> None:
    """Record ``path`` as the run's final checkpoint (for :func:`final_checkpoint`)."""
    write_text(Path(run.directory) / "checkpoints" / FINAL_POINTER, Path(path).name + "\n")


def analysed_checkpoint(run: RunConfig) -> Path:
    """The checkpoint analyses read: the final one, or ``best.pt`` when the config's
    ``analysis_checkpoint`` says ``best``."""
    if run.config.get("analysis_checkpoint") == "best":
        return Path(run.directory) / "checkpoints" / BEST
    return final_checkpoint(run)


def training_state(run: RunConfig) -> dict[str, Any]:
    """The run's training status as ``labkit status`` shows it, cheaply.

    ``finished`` only when the final checkpoint and its digest are present (the digest
    is checked where the weights are used); a status file that says ``finished``
    without them reports ``incomplete``. A config that depends on it depends on
    something outside its spec (:func:`labkit.identity.note_outside`).
    """
    note_outside(f"run {run.directory}")
    status = read_status(run.directory)
    if digest(final_checkpoint(run)) is not None:
        return {**status, "state": "finished", "epoch": run.config["epochs"]}
    if status.get("state") == "finished":
        return {**status, "state": "incomplete",
                "reason": "the final checkpoint is missing or damaged; `labkit run` retrains "
                          "from the newest intact checkpoint"}
    return status


class RunFingerprint(BaseModel):
    """What a trained run directory holds: its identity and its final weights. A run
    that depends on another (a distillation teacher, a stitched half) carries this in
    its own identity, so that retraining the other gives it a new identity."""

    model_config = ConfigDict(extra="forbid")

    hash: str = Field(description="the run's identity hash (its config.json)")
    checkpoint: str = Field(description="recorded sha256 of the run's final checkpoint")


class PinnedRef(BaseModel):
    """Base of a reference to another run that may name it by directory: the derived
    ``run`` field pins the reference to that run's :class:`RunFingerprint`, so a run
    whose identity holds the reference changes identity when the other is retrained.

    A subclass fills ``run`` in its validator (:meth:`stale` says whether a ``run``
    already given, as in a resolved config validated again, still matches). A reference
    without ``run`` (one given by spec) serialises without the key, so identities that
    predate the field keep their hash.
    """

    run: RunFingerprint | None = Field(
        None, description="derived, do not write it: with dir, validation fills in the "
                          "run's identity hash and the recorded sha256 of its final "
                          "checkpoint, so that this reference follows the run's weights. A "
                          "value given (as in a resolved config, validated again before "
                          "training) must equal the run's current one, else validation fails")

    def stale(self, derived: RunFingerprint, directory: str, what: str, fix: str) -> str | None:
        """The message when a given ``run`` is not ``derived`` (the run in ``directory``
        was retrained since), else ``None``. ``what`` names the field, ``fix`` the remedy."""
        if self.run is None or self.run == derived:
            return None
        return (f"{what}: {self.run.model_dump()} is not run {directory} "
                f"({derived.model_dump()}). It is derived from the directory: leave it out of "
                f"a spec; in a resolved config it means the run was retrained since, so {fix}")

    @model_serializer(mode="wrap")
    def _without_absent_run(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.run is None:
            data.pop("run", None)
        return data


def is_trained(run: RunConfig) -> bool:
    """Whether ``run`` is trained (cheap: its final checkpoint and digest are there;
    a ``status.json`` saying ``finished`` is a report, not trusted)."""
    return training_state(run).get("state") == "finished"


def run_fingerprint(run: RunConfig) -> RunFingerprint | None:
    """The :class:`RunFingerprint` of a trained ``run``; ``None`` when not trained."""
    if not is_trained(run):
        return None
    return RunFingerprint(hash=run.hash, checkpoint=digest(final_checkpoint(run)))


def read_analyses(run_dir: Path) -> dict[str, Any]:
    """``{analysis label: {"state", "reason", "updated"}}`` from ``analyses.json``;
    ``{}`` when it is damaged (it only reports; the next analysis rewrites it)."""
    try:
        return read_json(Path(run_dir) / ANALYSES_JSON)
    except DamagedFile:
        return {}


def write_analysis_state(run_dir: Path, label: str, state: str,
                         reason: str | None = None) -> None:
    """Record one analysis's state in ``analyses.json`` (the others are kept)."""
    states = read_analyses(run_dir)
    states[label] = {"state": state, "reason": reason, "updated": _now()}
    write_json(Path(run_dir) / ANALYSES_JSON, states)


def append_provenance(run_dir: Path, first_epoch: int, device: str,
                      plugin_versions: dict[str, str], torch_version: str) -> None:
    """Append one training segment's line to ``provenance.jsonl`` (``torch_version``:
    the ``torch.__version__`` that trains it)."""
    line = {"first_epoch": first_epoch, "labkit_version": labkit.__version__,
            "plugins": plugin_versions, "torch_version": torch_version,
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
    """The run's status, ``{}`` when never started; a damaged file reads as state
    ``damaged`` with the reason (the next ``labkit run`` rewrites it)."""
    try:
        status = read_json(Path(run_dir) / STATUS_JSON)
    except DamagedFile as exc:
        return {"state": "damaged", "reason": f"{exc}; `labkit run` rewrites it"}
    if not isinstance(status.get("state", ""), str) or not isinstance(status.get("epoch", 0), int):
        return {"state": "damaged",
                "reason": f"{Path(run_dir) / STATUS_JSON} holds no valid state; `labkit run` "
                          f"rewrites it"}
    return status


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Replace the status file; keeps the last known epoch unless given."""
    previous = read_status(run_dir)
    status = {"state": state, "reason": fields.pop("reason", None),
              "epoch": fields.pop("epoch", previous.get("epoch", 0) if previous.get("state")
                                  != "damaged" else 0),
              "updated": _now()}
    if previous.get("best") is not None and "best" not in fields:
        fields["best"] = previous["best"]  # the best epoch, with best_metric: kept
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
    """What :func:`write_config` wrote, ``{}`` when absent.

    Raises:
        DamagedFile: the file is not a JSON object with a ``config`` object in it.
    """
    note_outside(f"run {run_dir}")
    info = read_json(Path(run_dir) / CONFIG_JSON)
    if info and not isinstance(info.get("config"), dict):
        raise DamagedFile(f"{Path(run_dir) / CONFIG_JSON} holds no run config; restore it, or "
                          f"delete the run directory and train the run again")
    return info

"""The self-describing files of a run directory.

* ``config.json`` — resolved config, identity hash, run-id, readable name, labkit and
  plugin versions of the first training segment (written once);
* ``provenance.jsonl`` — one line per training segment (each start or resume): first
  epoch, labkit and plugin versions, torch version, host, device, time; appended,
  never rewritten;
* ``status.json`` — training ``state`` (running / finished / failed / interrupted),
  ``reason``, last finished ``epoch``, ``epochs`` (the epoch training ends after: under a
  ``steps`` budget fewer than the config's ``epochs``), ``updated`` (UTC time). A report,
  never trusted: whether a run is trained is decided by its final checkpoint
  (:func:`final_checkpoint`), whether it is running by its lock (:func:`training_state`);
* ``analyses.json`` — per analysis, its own state (finished / failed), reason and time,
  apart from the training state: a failed analysis leaves a trained run trained;
* ``log.csv`` — one row per epoch (columns in docs/guide/results.md);
* ``computational_info.json`` — parameters, FLOPs per image, training FLOPs (written
  by :func:`labkit.training.compute.write_computational_info`);
* ``.lock`` — held while a process trains the run (see :func:`exclusive`).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, model_serializer

import labkit
from labkit.core.errors import DamagedFile, UserError
from labkit.store.atomic import remove_leftovers, write_json, write_text
from labkit.store.checkpoint_files import BEST, checkpoint_path, digest, epoch_of, is_intact
from labkit.store.identity import HASH_LEN, RunConfig, note_outside, run_hash
from labkit.store.readers import (INTEGER, NUMBER, read_csv_file, read_json, read_json_file,
                                  read_json_lines, read_text_file)

CONFIG_JSON = "config.json"
PROVENANCE_JSONL = "provenance.jsonl"
STATUS_JSON = "status.json"
ANALYSES_JSON = "analyses.json"
LOG_CSV = "log.csv"
COMPUTE_JSON = "computational_info.json"
LOCK_FILE = ".lock"
# tables analyses write in the run directory, named here so that their readers (results,
# figures, the report) need no analysis module (and no torch)
PROBES_CSV = "probe_performances.csv"
RF_CSV = "receptive_field.csv"


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


def is_held(run_dir: Path) -> bool:
    """Whether a process holds the run's lock now (it is training or analysing the run).

    The OS releases the lock when its holder exits, even after ``kill -9``, so a
    ``status.json`` saying ``running`` while the lock is free tells of a process that
    is gone. Never waits; a lock file that cannot be opened counts as free.
    """
    try:
        handle = open(Path(run_dir) / LOCK_FILE)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


FINAL_POINTER = "final.txt"


def final_checkpoint_of(run_dir: Path, config: dict[str, Any]) -> Path:
    """The checkpoint a trained run in ``run_dir`` with ``config`` must have: the one
    after its last epoch.

    Under a ``steps`` budget the last epoch depends on the data set's size, so the
    engine names it in ``checkpoints/final.txt`` once it is written; without that file
    (or with a damaged one) such a run is not trained.
    """
    directory = Path(run_dir) / "checkpoints"
    if config.get("steps") is not None:
        try:
            name = (read_text_file(directory / FINAL_POINTER) or "").strip()
        except DamagedFile:
            name = ""
        if epoch_of(name) is not None:
            return directory / name
    return checkpoint_path(directory, config["epochs"])


def final_checkpoint(run: RunConfig) -> Path:
    """:func:`final_checkpoint_of` the run's directory."""
    return final_checkpoint_of(run.directory, run.config)


def mark_final(run: RunConfig, path: Path) -> None:
    """Record ``path`` as the run's final checkpoint (for :func:`final_checkpoint`)."""
    write_text(Path(run.directory) / "checkpoints" / FINAL_POINTER, Path(path).name + "\n")


def analysed_checkpoint(run: RunConfig) -> Path:
    """The checkpoint analyses read: the final one, or ``best.pt`` when the config's
    ``analysis_checkpoint`` says ``best`` (whose choice must follow the config's
    ``best_metric`` and ``best_mode``: :func:`best_mismatch`)."""
    if run.config.get("analysis_checkpoint") == "best":
        return Path(run.directory) / "checkpoints" / BEST
    return final_checkpoint(run)


def best_mismatch(best: Any, config: dict[str, Any]) -> str | None:
    """Why ``best`` (the ``best`` record of ``best.pt``: epoch, metric, value, mode) was
    not chosen as ``config`` asks (its ``best_metric`` and ``best_mode``); ``None``
    when it was. A record from before 0.4 names no mode: it was chosen under ``max``."""
    if not isinstance(best, dict):
        return "best.pt records no best epoch"
    metric, mode = best.get("metric"), best.get("mode", "max")
    if (metric, mode) == (config.get("best_metric"), config.get("best_mode")):
        return None
    return (f"best.pt holds epoch {best.get('epoch')}, the best by {metric} ({mode}), not by "
            f"best_metric {config.get('best_metric')} ({config.get('best_mode')}) as the "
            f"config asks (best_metric and best_mode are not identity: the run kept the "
            f"choice it trained with)")


_NAMED_HASH = re.compile(rf".-([0-9a-f]{{{HASH_LEN}}})$")


def identity_problem(run_dir: Path, info: dict[str, Any], expected: str | None) -> str | None:
    """Why ``info`` (a :func:`read_config`) is not the config of the run in ``run_dir``
    whose identity hash is ``expected`` (default: the hash its directory name ends
    with, as labkit names run directories; none for a folder named otherwise): its
    config no longer hashes to its ``hash`` (edited), or that hash is not the run's
    (copied from another run); ``None`` when it is."""
    named = _NAMED_HASH.search(Path(run_dir).name)
    recorded, actual = info.get("hash"), run_hash(info["config"])
    expected = expected or (named.group(1) if named else recorded)
    if recorded == actual == expected:
        return None
    why = "was edited" if recorded != actual else "belongs to another run"
    return (f"{Path(run_dir) / CONFIG_JSON} no longer matches the run's identity hash "
            f"{expected} (its config hashes to {actual}: it {why}); its values are not "
            f"this run's. `labkit run` rewrites it; or restore it")


def directory_state(run_dir: Path, config: dict[str, Any],
                    identity: str | None = None) -> dict[str, Any]:
    """The training state of the run in ``run_dir`` whose resolved config is
    ``config`` and identity hash ``identity`` (default: its directory name's), read
    from its files, never from ``status.json`` alone:

    * ``finished`` only when the final checkpoint matches its sha256 (hashed; a
      truncated, emptied or swapped file, or an edited digest, is ``incomplete``);
    * ``running`` only while a process holds the run's lock (:func:`is_held`); a run
      whose process is gone is ``interrupted``;
    * ``damaged`` when ``status.json`` cannot be read, or ``config.json`` is not this
      run's (:func:`identity_problem`): the reason says so.

    ``epoch`` is the last epoch done, ``epochs`` the epoch training ends after (the
    final checkpoint's under a ``steps`` budget); ``{}`` for a run never started.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    try:
        info = read_config(run_dir)
        problem = identity_problem(run_dir, info, identity) if info else None
    except DamagedFile as exc:
        problem = f"{exc}"
    epochs = status.get("epochs", config["epochs"])
    if problem is not None:
        return {**status, "state": "damaged", "reason": problem, "epochs": epochs}
    final = final_checkpoint_of(run_dir, config)
    if is_intact(final):
        final_epoch = epoch_of(final.name)
        state = {**status, "state": "finished", "epoch": final_epoch, "reason": None}
        epochs = final_epoch
    elif status.get("state") == "finished" or (status.get("state") != "damaged"
                                                and digest(final) is not None):
        state = {**status, "state": "incomplete",
                 "reason": f"the final checkpoint {final.name} is missing or damaged (it "
                           f"does not match its sha256); `labkit run` retrains from the "
                           f"newest intact checkpoint"}
    elif status.get("state") == "running" and not is_held(run_dir):
        state = {**status, "state": "interrupted",
                 "reason": "the process training it is gone (killed, or its machine "
                           "stopped); `labkit run` resumes it"}
    else:
        state = status
    return {**state, "epochs": epochs} if state else {}


def training_state(run: RunConfig) -> dict[str, Any]:
    """The run's training state as ``labkit status`` shows it (:func:`directory_state`
    of its directory). A config that depends on it depends on something outside its
    spec (:func:`labkit.store.identity.note_outside`)."""
    note_outside(f"run {run.directory}")
    return directory_state(run.directory, run.config, run.hash)


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


class AnalysisState(BaseModel):
    """One analysis's entry of ``analyses.json``."""

    model_config = ConfigDict(extra="allow")

    state: str
    reason: str | None = None
    updated: str | None = None


def read_analyses(run_dir: Path) -> dict[str, Any]:
    """``{analysis label: {"state", "reason", "updated"}}`` from ``analyses.json``;
    ``{}`` when it is damaged (it only reports; ``labkit run`` rewrites it)."""
    try:
        states = read_json(Path(run_dir) / ANALYSES_JSON, dict[str, AnalysisState])
    except DamagedFile:
        return {}
    return {label: entry.model_dump() for label, entry in states.items()}


def write_analysis_state(run_dir: Path, label: str, state: str,
                         reason: str | None = None) -> None:
    """Record one analysis's state in ``analyses.json`` (the others are kept; a
    damaged file is replaced)."""
    states = read_analyses(run_dir)
    states[label] = {"state": state, "reason": reason, "updated": _now()}
    write_json(Path(run_dir) / ANALYSES_JSON, states)


def confirm_analysis(run_dir: Path, label: str) -> None:
    """Record that the analysis ``label`` is finished (its outputs were found complete)
    unless ``analyses.json`` already says so: repairs a damaged or stale entry."""
    try:
        states = read_json(Path(run_dir) / ANALYSES_JSON, dict[str, AnalysisState])
    except DamagedFile:
        states = None
    if states is None or label not in states or states[label].state != "finished":
        write_analysis_state(run_dir, label, "finished")


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


def read_log(run_dir: Path) -> Any:
    """The run's ``log.csv`` as a pandas DataFrame (numbers only, a whole ``epoch`` per
    row); ``None`` when there is none or it has no rows.

    Raises:
        DamagedFile: it cannot be read as such a table (``labkit run`` rewrites it from
            the final checkpoint).
    """
    path = Path(run_dir) / LOG_CSV
    if not path.exists():
        return None
    log = read_csv_file(path, {"epoch": INTEGER}, others=NUMBER,
                        fix="`labkit run` rewrites it from the final checkpoint")
    return log if len(log) else None


def read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    """The training segments of ``provenance.jsonl``, oldest first (lines that are not
    a JSON object, such as a torn last line, are skipped).

    Raises:
        DamagedFile: the file cannot be read or is not UTF-8.
    """
    return read_json_lines(Path(run_dir) / PROVENANCE_JSONL)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class BestEpoch(BaseModel):
    """The best epoch so far by ``best_metric`` (``status.json`` and checkpoints)."""

    model_config = ConfigDict(extra="allow")

    epoch: int = Field(ge=1)
    metric: str
    value: float
    mode: str = "max"


class StatusFile(BaseModel):
    """What ``status.json`` holds (further keys are kept)."""

    model_config = ConfigDict(extra="allow")

    state: str
    reason: str | None = None
    epoch: int = Field(0, ge=0)
    epochs: int | None = Field(None, ge=0)
    updated: str | None = None
    best: BestEpoch | None = None


_REWRITES = "`labkit run` rewrites it"


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status, ``{}`` when never started; a damaged file (any bytes that are
    not a :class:`StatusFile`) reads as state ``damaged`` with the reason (the next
    ``labkit run`` rewrites it)."""
    try:
        status = read_json_file(Path(run_dir) / STATUS_JSON, StatusFile, fix=_REWRITES)
    except DamagedFile as exc:
        return {"state": "damaged", "reason": str(exc)}
    return {} if status is None else status.model_dump(exclude_none=True)


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """Replace the status file; keeps the last known epoch unless given."""
    previous = read_status(run_dir)
    status = {"state": state, "reason": fields.pop("reason", None),
              "epoch": fields.pop("epoch", previous.get("epoch", 0) if previous.get("state")
                                  != "damaged" else 0),
              "updated": _now()}
    for kept in ("best", "epochs"):  # the best epoch, the last epoch: known once trained
        if previous.get(kept) is not None and kept not in fields:
            fields[kept] = previous[kept]
    status.update(fields)
    write_json(Path(run_dir) / STATUS_JSON, status)


def write_config(run_dir: Path, run: RunConfig, plugin_versions: dict[str, str]) -> None:
    """Write ``config.json`` (the resolved config plus identity and versions) once: a
    resumed run keeps the file of its first segment (see ``provenance.jsonl``). A file
    that is damaged or not this run's (:func:`identity_problem`: edited, copied) is
    replaced.

    Args:
        plugin_versions: ``{plugin name: version}`` of the plugins that filled the
            registries (``Registries.plugin_versions``).
    """
    try:
        info = read_config(run_dir)
        if info and identity_problem(run_dir, info, run.hash) is None:
            return
    except DamagedFile:
        pass
    write_json(Path(run_dir) / CONFIG_JSON, {
        "hash": run.hash, "run_id": run.run_id, "name": run.name,
        "labkit_version": labkit.__version__, "plugins": plugin_versions,
        "config": run.config})


class ConfigFile(BaseModel):
    """What ``config.json`` holds (further keys are kept)."""

    model_config = ConfigDict(extra="allow")

    hash: str
    run_id: str | None = None
    name: str | None = None
    config: dict[str, Any]


def read_config(run_dir: Path) -> dict[str, Any]:
    """What :func:`write_config` wrote, ``{}`` when absent.

    Raises:
        DamagedFile: the file is not a :class:`ConfigFile` (any bytes that are not).
    """
    note_outside(f"run {run_dir}")
    info = read_json_file(Path(run_dir) / CONFIG_JSON, ConfigFile,
                          fix="restore it, or delete the run directory and train the run again")
    return {} if info is None else info.model_dump()


def write_log(run: RunConfig, rows: list[dict[str, Any]]) -> bool:
    """Atomically replace log.csv with ``rows`` unless it already holds exactly them."""
    import pandas as pd  # here: status and plan, which read no table, start without it

    path = run.directory / LOG_CSV
    text = pd.DataFrame(rows).to_csv(index=False)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True

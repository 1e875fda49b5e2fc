"""A run named by its folder: the reference reads the folder it names, wherever it lies.

A distillation teacher (``{"dir": …}``), a DINO ``init_run``, the networks of a stitch
and ``labkit cka RUN_A RUN_B`` name a trained run by its folder. :func:`read_run` reads
that folder and nothing else:

* its ``config.json`` must be a run config whose recorded ``hash`` is the identity of its
  content (:func:`labkit.store.identity.run_hash`), and, when the folder's name ends in a hash
  (``<readable>-<hash>``, as labkit names run folders), that hash too;
* its final checkpoint (``checkpoints/final.txt`` under a ``steps`` budget, else the
  checkpoint after the last epoch) must lie inside the folder, match its sha256 digest
  file and have been written by the run of that config (the checkpoint's ``run_hash``).

So any complete copy of a trained run, shallow (``teachers/t1``) or deep
(``archive/a/b/c/t1``), is usable; anything else (a missing folder, a file, a config
without its checkpoints, a damaged checkpoint, an edited config, the config of another
run) is refused with one line saying why. The run it returns is located at the folder
read (:class:`RunInFolder`), so everything derived from it (records, outputs, the weights
loaded) names and reads that folder; :class:`RunReference` adds the checkpoint used and
its sha256.

Verifying a checkpoint reads and hashes it; the result is kept for the process while the
file's size, mtime and inode and its digest file are unchanged, so validating a spec
again (a grid's runs, each stitch cell) does not read it again.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from labkit.core.errors import DamagedFile, UserError
from labkit.store import checkpoint, runinfo
from labkit.store.identity import HASH_LEN, RunConfig, note_outside, run_hash
from labkit.store.readers import read_json

_HASHED_NAME = re.compile(rf"-([0-9a-f]{{{HASH_LEN}}})$")
_NAMED = ("model", "dataset", "method", "optimizer")  # config sections with a "name"
_GIVE_A_RUN = ("give the folder of a trained labkit run (a complete copy holds its "
               "config.json and checkpoints/)")


@dataclass(frozen=True)
class RunInFolder(RunConfig):
    """A run read from ``folder``: its :attr:`directory` is that folder, wherever it lies
    (a copy need not sit at ``<logs_dir>/<model>/<data>/<run-id>/<name>-<hash>``).

    Attributes:
        folder: the folder its ``config.json`` was read from, as given.
    """

    folder: Path

    @property
    def directory(self) -> Path:
        return self.folder


@dataclass(frozen=True)
class RunReference:
    """A trained run as :func:`read_run` found it in its folder.

    Attributes:
        run: the run, located at the folder read (``run.directory`` is that folder).
        checkpoint: its final checkpoint, inside that folder.
        sha256: the checkpoint's sha256 (hex), verified against the file.
    """

    run: RunInFolder
    checkpoint: Path
    sha256: str

    @property
    def folder(self) -> Path:
        """The folder read."""
        return self.run.directory

    @property
    def fingerprint(self) -> runinfo.RunFingerprint:
        """Identity hash and checkpoint sha256, as a :class:`~labkit.store.runinfo.PinnedRef`
        pins them."""
        return runinfo.RunFingerprint(hash=self.run.hash, checkpoint=self.sha256)


def run_in_folder(folder: str | Path, what: str = "run") -> RunInFolder:
    """The run whose ``config.json`` is in ``folder``, located at ``folder`` (its
    checkpoints are not looked at: :func:`read_run` does that).

    The config is checked: a JSON object holding ``hash``, ``run_id`` and a run config,
    whose identity is the recorded ``hash`` and the hash that ends the folder's name,
    if its name ends in one. Where the folder sits where its config puts a run (under
    ``<logs_dir>/<model>/<data>/<run-id>/``), ``logs_dir`` is taken from the folder's
    place, so a moved project keeps finding its latents; elsewhere it is the recorded one.

    Args:
        folder: the run's folder.
        what: how messages name the reference (``method.teacher.dir``, ``RUN_A``).

    Raises:
        UserError: one line naming ``what``, the folder and why it is no run.
    """
    folder = Path(folder)
    note_outside(f"run {folder}")
    if not folder.is_dir():
        why = "is a file, not a run folder" if folder.exists() else "does not exist"
        raise _refused(what, folder, why)
    if not (folder / runinfo.CONFIG_JSON).is_file():
        raise _refused(what, folder, f"holds no {runinfo.CONFIG_JSON}")
    try:
        info = read_json(folder / runinfo.CONFIG_JSON)
        recorded, run_id, config = info.get("hash"), info.get("run_id"), info.get("config")
        if not (isinstance(recorded, str) and isinstance(run_id, str)
                and _is_run_config(config)):
            raise _refused(what, folder, f"has a {runinfo.CONFIG_JSON} that holds no labkit "
                                         f"run config (hash, run_id, config)")
        computed = run_hash(config)
    except (DamagedFile, RecursionError):
        raise _refused(what, folder, f"has a damaged {runinfo.CONFIG_JSON} (not a JSON "
                                     f"object)") from None
    if computed != recorded:
        raise _refused(what, folder, f"has a {runinfo.CONFIG_JSON} that records hash "
                                     f"{recorded!r} but hashes to {computed} (edited or "
                                     f"damaged)")
    named = _HASHED_NAME.search(folder.resolve().name)
    if named and named.group(1) != computed:
        raise _refused(what, folder, f"is named for run {named.group(1)} but its "
                                     f"{runinfo.CONFIG_JSON} is run {computed} (the config "
                                     f"of another run)")
    logs_dir = folder.parents[3] if len(folder.parents) > 3 else None
    if logs_dir is None or RunConfig({**config, "logs_dir": str(logs_dir)},
                                     run_id).directory != folder:
        logs_dir = config.get("logs_dir", folder.parent)
    return RunInFolder({**config, "logs_dir": str(logs_dir)}, run_id, folder)


def read_run(folder: str | Path, what: str = "run") -> RunReference:
    """The trained run in ``folder`` and its verified final checkpoint there.

    Args:
        folder: the run's folder (any complete copy of a trained run, at any depth).
        what: how messages name the reference (``method.teacher.dir``, ``RUN_A``).

    Raises:
        UserError: one line naming ``what``, the folder and why it is no trained run:
            see :func:`run_in_folder`; no final checkpoint in the folder; one that does
            not match its digest file or is unreadable; one written by another run.
    """
    run = run_in_folder(folder, what)
    try:
        path = runinfo.final_checkpoint(run)
        present = path.is_file()
    except (OSError, ValueError):  # an unreadable final.txt names nothing
        path, present = None, False
    if not present:
        where = path.relative_to(run.directory) if path is not None else "checkpoints/"
        raise _refused(what, run.directory,
                       f"is not trained (no final checkpoint {where}, or it was copied "
                       f"without its checkpoints)",
                       f"train it first (`labkit run SPEC --run-id {run.run_id}`) or copy the "
                       f"whole run folder")
    relative = path.relative_to(run.directory)
    try:
        stat = path.stat()
        recorded = checkpoint.digest(path)
        owner = _owner(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino,
                       recorded)
    except (OSError, ValueError):
        raise _refused(what, run.directory, f"has a damaged final checkpoint {relative}: "
                                            f"{_damage(path)}") from None
    if owner is not None and owner != run.hash:
        raise _refused(what, run.directory,
                       f"holds files of two runs: its final checkpoint {relative} was written "
                       f"by run {owner}, its {runinfo.CONFIG_JSON} is run {run.hash}")
    return RunReference(run, path, recorded)


def _refused(what: str, folder: Path, why: str, fix: str = _GIVE_A_RUN) -> UserError:
    return UserError(f"{what} {folder} {why}; {fix}")


def _is_run_config(config: object) -> bool:
    """Whether ``config`` has what labkit reads of a run config before using it: the
    named sections, ``batch_size`` and a whole number of ``epochs``."""
    return (isinstance(config, dict)
            and all(isinstance(config.get(k), dict) and "name" in config[k] for k in _NAMED)
            and "batch_size" in config
            and isinstance(config.get("epochs"), int) and not isinstance(config["epochs"], bool))


@lru_cache(maxsize=256)
def _owner(path: str, size: int, mtime_ns: int, inode: int, recorded: str | None) -> object:
    """The ``run_hash`` a checkpoint records (``None``: one from before labkit 0.2 that
    records none), after verifying it against its digest; cached per file state.

    Raises:
        ValueError: no digest file, a mismatch, or no readable checkpoint.
    """
    if recorded is None:
        raise ValueError("no digest")
    state = checkpoint.read(Path(path))
    if not isinstance(state, dict):
        raise ValueError("not a labkit checkpoint")
    return state.get("run_hash")


def _damage(path: Path) -> str:
    """Why the checkpoint ``path`` cannot be used, in a few words (never a loader's advice)."""
    try:
        recorded = checkpoint.digest(path)
        if recorded is None:
            return "it has no digest file (copied without it, or interrupted while saving)"
        if not checkpoint.is_intact(path):
            return "it does not match its digest file"
    except (OSError, ValueError):
        return "it or its digest file cannot be read"
    return "it matches its digest file but is no readable labkit checkpoint"

"""Provenance records of the plugin's tables: exactly what each table was computed from.

Every table the plugin writes (``stitch_table.csv``, ``cka_table.csv``, each with its
heatmaps) gets a sidecar ``<table stem>.provenance.json`` in the same folder
(``stitch_table.provenance.json``, ``cka_table.provenance.json``). One record per table
rather than one per command call: ``stitch-table --no-cka`` rewrites the stitching table
and its record but leaves an earlier ``cka_table.csv`` beside its own, still matching,
record. The record holds:

* ``table``, ``files``: the table's file name and every file the record covers (the
  table and its PNGs), all in the record's folder;
* ``command``, ``parameters``: the command (``stitch-table``, ``cka``) and everything
  that chose the table's values (spec and run-id, split, metric, CKA options, layers,
  device);
* ``runs``: ``{run directory: {"hash", "checkpoint"}}`` for every run whose files the
  table was computed from, as :func:`labkit.api.run_fingerprint` gives it (identity hash
  and recorded digest of the final checkpoint); ``"checkpoint": null`` for a run that was
  not trained (its cells are empty). The directories are those in the table's columns;
* for CKA, ``pairs``: per pair of networks, the layers, the data set, and for each side
  ``source`` (``latents`` or ``network``) and ``latents`` (the digest of the latents
  manifest that was read, ``null`` when the network was run);
* ``labkit_version``, ``labkit_stitch_version``, ``created`` (UTC).

The old record is deleted before the outputs are written and the new one is written
(atomically) after them, so a record that exists describes the files next to it; a call
that stopped half way leaves outputs without a record. The fingerprints are taken before
the table is computed and again after its files are written; if any run changed in
between (another process trained it meanwhile) no record is written and the command
fails with a message to run it again.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from labkit.api import RunConfig, UserError, __version__, run_fingerprint, write_json

SUFFIX = ".provenance.json"


def record_path(table: Path) -> Path:
    """The provenance record of the table file ``table``: ``<stem>.provenance.json``."""
    table = Path(table)
    return table.with_name(table.stem + SUFFIX)


def fingerprints(runs: Iterable[RunConfig]) -> dict[str, dict[str, str | None]]:
    """``{run directory: {"hash", "checkpoint"}}``, each run once, in order of first
    appearance; ``checkpoint`` is ``None`` for a run that is not trained."""
    found: dict[str, dict[str, str | None]] = {}
    for run in runs:
        directory = str(run.directory)
        if directory not in found:
            fingerprint = run_fingerprint(run)
            found[directory] = ({"hash": run.hash, "checkpoint": None} if fingerprint is None
                                else fingerprint.model_dump())
    return found


def _plugin_version() -> str | None:
    try:
        return metadata.version("labkit-stitch")
    except metadata.PackageNotFoundError:
        return None


class TableRecord:
    """The provenance record of one table, made in two steps around writing it.

    Creating it deletes the table's old record and fingerprints ``runs``;
    :meth:`write`, called once the table's files are written, fingerprints them again
    and writes the record.

    Args:
        table: the table file (the record goes next to it).
        command: the command's name.
        parameters: what chose the table's values (JSON-serialisable).
        runs: every run the table is computed from (duplicates are named once).
    """

    def __init__(self, table: Path, command: str, parameters: dict[str, Any],
                 runs: Sequence[RunConfig]) -> None:
        self.table = Path(table)
        self.path = record_path(self.table)
        self.path.unlink(missing_ok=True)  # never an old record beside new outputs
        self.command, self.parameters, self.runs = command, parameters, list(runs)
        self.before = fingerprints(self.runs)

    def write(self, files: Sequence[Path], **extra: Any) -> Path:
        """Write the record (after the table's ``files``); returns its path.

        Args:
            files: the files the record covers, the table among them, in its folder.
            extra: further top-level fields (``pairs`` for CKA).

        Raises:
            UserError: a run changed while the table was computed.
        """
        after = fingerprints(self.runs)
        changed = [directory for directory, found in after.items()
                   if found != self.before[directory]]
        if changed:
            raise UserError(f"{', '.join(changed)} changed while {self.table} was computed "
                            f"(trained or retrained by another process); no provenance record "
                            f"was written: run the command again")
        write_json(self.path, {
            "table": self.table.name,
            "files": [Path(f).name for f in files],
            "command": self.command,
            "parameters": self.parameters,
            "runs": after,
            **extra,
            "labkit_version": __version__,
            "labkit_stitch_version": _plugin_version(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        return self.path

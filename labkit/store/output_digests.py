"""The outputs an analysis wrote, and whether they still hold what it wrote.

An analysis records, after its outputs, ``analyses/<record>.json`` (see
:mod:`labkit.analyses.base`): its fingerprint and, under ``outputs``, the sha256 of each
output it wrote, by path relative to the run directory. "Complete" means the outputs
still match: a table cut short, edited or holding a NaN is computed again by ``labkit
run`` and flagged (never used) by ``labkit results`` and the report.

A CSV several analyses share (probes at several downsamplings, evaluations on several
data sets) holds a block of rows per analysis; each records the digest of its own
block (:func:`rows_digest`), so that writing one block leaves the others' complete.
Figures (PNG, SVG) are not recorded: they are drawn from the tables and read back by
nothing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping

from labkit.core.errors import DamagedFile
from labkit.store.atomic import file_sha256
from labkit.store.readers import read_json, read_text_file

RECORDS_DIR = "analyses"
FIGURES = (".png", ".svg")


def _cell(text: str) -> str:
    """A CSV cell in one spelling per value: numbers as Python writes floats (``3`` and
    ``3.0`` are one value), other text as it is."""
    try:
        return repr(float(text))
    except ValueError:
        return text


def rows_digest(path: Path, rows: Mapping[str, str]) -> str | None:
    """sha256 of the rows of the CSV ``path`` whose columns equal ``rows``, in file
    order, each row's non-empty cells by column name (so columns another block adds
    change nothing); ``None`` when the file is missing, damaged or has no such row."""
    try:
        text = read_text_file(path)
    except DamagedFile:
        return None
    if not text:
        return None
    try:
        table = csv.DictReader(io.StringIO(text))
        if not set(rows) <= set(table.fieldnames or ()):
            return None
        selected = [sorted((k, _cell(v)) for k, v in row.items()
                           if isinstance(k, str) and isinstance(v, str) and v != "")
                    for row in table if all(row.get(k) == v for k, v in rows.items())]
    except csv.Error:
        return None
    if not selected:
        return None
    return hashlib.sha256(json.dumps(selected).encode()).hexdigest()


def output_digest(path: Path, rows: Mapping[str, str] | None = None) -> str | None:
    """sha256 of the output ``path`` (of its block of ``rows`` for a shared CSV, see
    :func:`rows_digest`); ``None`` when missing or unreadable."""
    if rows is not None:
        return rows_digest(path, rows)
    try:
        return file_sha256(Path(path))
    except OSError:
        return None


def _name(run_dir: Path, path: Path) -> str:
    """``path`` relative to ``run_dir`` when inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path(run_dir).absolute()))
    except ValueError:
        return str(path)


def describe(run_dir: Path, paths: list[Path],
             shared: Mapping[Path, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The ``outputs`` entry of a record: ``{name: {"sha256": …[, "rows": …]}}`` for
    every path of ``paths`` but figures; ``shared`` maps a shared CSV to the column
    values that select the analysis's rows in it."""
    shared = {Path(p).absolute(): dict(rows) for p, rows in (shared or {}).items()}
    entries: dict[str, Any] = {}
    for path in paths:
        if Path(path).suffix in FIGURES:
            continue
        rows = shared.get(Path(path).absolute())
        entry: dict[str, Any] = {"sha256": output_digest(path, rows)}
        if rows is not None:
            entry["rows"] = rows
        entries[_name(run_dir, path)] = entry
    return entries


def mismatches(run_dir: Path, recorded: Any) -> dict[str, str]:
    """``{output name: why}`` for each output of a record's ``outputs`` entry that no
    longer matches its digest (or the entry is not one :func:`describe` writes)."""
    if not isinstance(recorded, dict):
        return {"?": "the record holds no output digests"}
    found = {}
    for name, entry in recorded.items():
        rows = entry.get("rows") if isinstance(entry, dict) else None
        path = Path(run_dir) / name
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and (rows is None or (isinstance(rows, dict)
                                      and all(isinstance(v, str) for v in rows.values())))):
            found[name] = f"{path}'s record holds no valid digest"
        elif output_digest(path, rows) != entry["sha256"]:
            block = f" (its rows of {', '.join(f'{k} {v}' for k, v in rows.items())})" \
                if rows else ""
            found[name] = (f"{path}{block} no longer matches the sha256 its analysis "
                           f"recorded (edited, cut short or damaged); `labkit run` computes "
                           f"it again")
    return found


def damaged_outputs(run_dir: Path) -> dict[str, str]:
    """``{output name (relative to run_dir): why}`` for every output recorded under
    ``analyses/`` that is no longer what its analysis wrote, and for every record that
    cannot be read (its outputs are then unverified; keyed by the record's path)."""
    found: dict[str, str] = {}
    folder = Path(run_dir) / RECORDS_DIR
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entries = read_json(record).get("outputs")
        except DamagedFile as exc:
            found[_name(run_dir, record)] = f"{exc} (the outputs it vouches for are unverified)"
            continue
        if entries is not None:
            found.update(mismatches(run_dir, entries))
    return found

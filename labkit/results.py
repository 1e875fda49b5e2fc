"""``labkit results``: every run's config and per-epoch log in one tidy table.

One row per (run, epoch). Config values appear as ``config.<dotted key>`` columns next to
the log columns, plus ``run_hash``, ``run_id``, ``run_name``, ``run_dir`` and ``state``.
A run without a log yet contributes one row with its config and state. A run whose
files cannot be read (damaged config.json or log.csv) is left out and reported.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from labkit import runinfo
from labkit.errors import DamagedFile
from labkit.identity import flatten


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding ``config.json``) under ``paths``, sorted."""
    found: set[Path] = set()
    for root in paths:
        root = Path(root)
        if (root / runinfo.CONFIG_JSON).exists():
            found.add(root)
        found.update(p.parent for p in root.rglob(runinfo.CONFIG_JSON))
    return sorted(found)


def run_table(run_dir: Path) -> pd.DataFrame:
    """The rows of one run (see module docstring)."""
    info = runinfo.read_config(run_dir)
    log_path = run_dir / runinfo.LOG_CSV
    log = pd.read_csv(log_path) if log_path.exists() else pd.DataFrame([{}])
    meta = {"run_hash": info.get("hash"), "run_id": info.get("run_id"),
            "run_name": info.get("name"), "run_dir": str(run_dir),
            "state": runinfo.read_status(run_dir).get("state")}
    meta.update({f"config.{k}": v for k, v in flatten(info.get("config", {})).items()})
    return pd.concat([pd.DataFrame([meta] * len(log), index=log.index), log], axis=1)


def collect(paths: list[Path], run_ids: tuple[str, ...] = (),
            on_damaged: Callable[[str], None] | None = None) -> pd.DataFrame:
    """All runs under ``paths`` as one table, optionally only the given run-ids.

    Args:
        on_damaged: called with a message for each run left out because its files
            cannot be read; default: :func:`warnings.warn`.
    """
    report = on_damaged or (lambda message: warnings.warn(message, stacklevel=3))
    tables = []
    for run_dir in find_runs(paths):
        try:
            tables.append(run_table(run_dir))
        except (DamagedFile, OSError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError) as exc:
            report(f"skipped {run_dir}: {exc}")
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    if run_ids:
        table = table[table["run_id"].isin(run_ids)].reset_index(drop=True)
    return table

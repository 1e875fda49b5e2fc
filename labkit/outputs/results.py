"""``labkit results``: every run's tables as one tidy table each, across runs.

A table is what the run directories hold: ``log`` is ``log.csv`` (one row per epoch);
``probes`` every ``[<prefix>_]probe_performances.csv``, ``projection`` every
``projected_results*.csv``, ``saturation`` every ``saturation*.csv`` (named by their
parameters), ``receptive_field``, ``evaluations`` and ``intrinsic_dimension`` their CSVs;
``layers`` is the per-layer table that joins them (:mod:`labkit.outputs.layers`); any
other CSV in a run directory or below it (a plugin's, such as the CKA
tables under ``cka/``) is the table named by its file stem. Each row carries
``run_hash``, ``run_id``, ``run_name``, ``run_dir``, ``state`` and every config value as
a ``config.<dotted key>`` column; rows of tables other than ``log`` also carry
``source``, the CSV's path inside the run directory, so files of different analysis
parameters (probe prefixes, say) stay apart. Rows of the per-layer tables
(:data:`LAYER_TABLES`) also carry ``layer_index`` and ``relative_depth``, the layer's place
in the run's network order (:func:`network_order`), next to ``layer``.

A run without a log yet contributes one row of ``log`` with its config and state
(:func:`labkit.store.runinfo.directory_state`: the state ``labkit status`` shows). A run whose
``config.json`` cannot be read, or no longer hashes to its directory's hash (edited, or
copied from another run), is left out and reported: its values are not the run's. A CSV
that cannot be read, or no longer matches the digest its analysis recorded
(:mod:`labkit.store.output_digests`), is left out and reported; the run's other tables stay.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from labkit.core.errors import DamagedFile, UserError
from labkit.measures.depth import relative_depth
from labkit.measures.pca_dimension import SPECTRA_DIR
from labkit.measures.spectra import final_spectra
from labkit.store import runinfo
from labkit.store.identity import flatten
from labkit.store.output_digests import damaged_outputs
from labkit.store.readers import read_csv_file

LOG_TABLE = "log"
# table name -> how its files end; a file matches the first table whose ending it has
NAMED_TABLES = {
    "probes": runinfo.PROBES_CSV,
    "projection": "projected_results*.csv",
    "receptive_field": runinfo.RF_CSV,
    "evaluations": "evaluations.csv",
    "saturation": "saturation*.csv",
    "intrinsic_dimension": "intrinsic_dimension.csv",
}
LAYERS_TABLE = "layers"
# tables with a row per layer (a ``layer`` column): keyed by the layer's place in the network
LAYER_TABLES = ("probes", "receptive_field", "saturation", "intrinsic_dimension")
# folders of a run directory that hold no tables (and may be large)
NOT_TABLES = {"checkpoints", "spectra", "plots", "analyses"}


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding ``config.json``) under ``paths``, sorted."""
    found: set[Path] = set()
    for root in paths:
        root = Path(root)
        if (root / runinfo.CONFIG_JSON).exists():
            found.add(root)
        found.update(p.parent for p in root.rglob(runinfo.CONFIG_JSON))
    return sorted(found)


def table_name(relative: Path) -> str:
    """The table a CSV at ``relative`` (inside a run directory) belongs to."""
    if relative == Path(runinfo.LOG_CSV):
        return LOG_TABLE
    for name, ending in NAMED_TABLES.items():
        if relative.match(f"*{ending}") and len(relative.parts) == 1:
            return name
    return relative.stem


def table_files(run_dir: Path) -> dict[str, list[Path]]:
    """Table name → the CSVs of that table in ``run_dir`` (paths relative to it, sorted).

    Nested run directories (a run inside another's folder) are not looked into.
    """
    files: dict[str, list[Path]] = {}
    for path in sorted(Path(run_dir).rglob("*.csv")):
        relative = path.relative_to(run_dir)
        if (relative.parts[0] in NOT_TABLES or path.name.startswith(".tmp-")
                or any((run_dir / Path(*relative.parts[:i]) / runinfo.CONFIG_JSON).exists()
                       for i in range(1, len(relative.parts)))):
            continue
        files.setdefault(table_name(relative), []).append(relative)
    return files


def run_meta(run_dir: Path) -> dict[str, object]:
    """The key columns of every row of a run: hash, run-id, name, directory, state and
    the ``config.<key>`` values.

    Raises:
        DamagedFile: config.json cannot be read, or is not the run's (its values would
            be reported as the run's).
    """
    info = runinfo.read_config(run_dir)
    if not info:
        raise DamagedFile(f"{run_dir / runinfo.CONFIG_JSON} is gone; restore it")
    problem = runinfo.identity_problem(run_dir, info, None)
    if problem is not None:
        raise DamagedFile(problem)
    meta: dict[str, object] = {
        "run_hash": info["hash"], "run_id": info["run_id"],
        "run_name": info["name"], "run_dir": str(run_dir),
        "state": runinfo.directory_state(run_dir, info["config"]).get("state")}
    meta.update({f"config.{k}": v for k, v in flatten(info["config"]).items()})
    return meta


def keyed(meta: dict[str, object], rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the run's key columns in front."""
    return pd.concat([pd.DataFrame([meta] * len(rows), index=rows.index), rows], axis=1)


def _read_files(run_dir: Path, table: str,
                on_damaged: Callable[[str], None]) -> list[pd.DataFrame]:
    """Every CSV of one run's ``table`` (:func:`table_files`) as it is, each with its
    ``source``; each one left out as damaged is reported to ``on_damaged``."""
    flagged = damaged_outputs(run_dir)
    parts = []
    for relative in table_files(run_dir).get(table, []):
        try:
            if str(relative) in flagged:
                raise DamagedFile(flagged[str(relative)])
            rows = read_csv_file(run_dir / relative, text_columns=("downsampling",))
        except DamagedFile as exc:
            on_damaged(f"left out {run_dir / relative}: {exc}")
            continue
        rows.insert(0, "source", str(relative))
        parts.append(rows)
    return parts


def table_rows(run_dir: Path, table: str, on_damaged: Callable[[str], None]) -> pd.DataFrame:
    """The rows of one run's ``table`` (not ``log``) without the run's key columns: every
    CSV of the table with its ``source``, and for a per-layer table the layer keys
    (:func:`with_layer_keys`); empty when it has none. Each CSV left out as damaged is
    reported to ``on_damaged``."""
    run_dir = Path(run_dir)
    parts = _read_files(run_dir, table, on_damaged)
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True)
    if table in LAYER_TABLES and "layer" in rows:
        rows = with_layer_keys(rows, network_order(run_dir))
    return rows


def run_table(run_dir: Path, table: str, on_damaged: Callable[[str], None]) -> pd.DataFrame:
    """The rows of one run's ``table`` (see module docstring); empty when it has none
    (``log``: one row of config and state when there is no log.csv yet). Each CSV left
    out as damaged is reported to ``on_damaged``.

    Raises:
        DamagedFile: the run's config.json cannot be used (:func:`run_meta`).
    """
    run_dir = Path(run_dir)
    meta = run_meta(run_dir)
    if table == LOG_TABLE:
        try:
            log = runinfo.read_log(run_dir)
        except DamagedFile as exc:
            on_damaged(f"left out the log of {run_dir}: {exc}")
            log = None
        return keyed(meta, pd.DataFrame([{}]) if log is None else log)
    rows = table_rows(run_dir, table, on_damaged)
    return rows if rows.empty else keyed(meta, rows)


def _ignore(message: str) -> None:
    """Drops a message: a file left out is reported where its own table is read."""


def network_order(run_dir: Path) -> list[str]:
    """The run's layers in network order (order of first call in the forward pass,
    :mod:`labkit.measures.layers`), as its files record it: ``receptive_field.csv`` (every
    Conv2d and Linear), then any layer only the other per-layer files know (the
    intrinsic-dimension and probe tables, the final epoch's saturation spectra: each in
    network order), placed after the layer it follows there. Damaged files are passed
    over; ``[]`` when no file names a layer."""
    run_dir = Path(run_dir)
    sequences = []
    for table in ("receptive_field", "intrinsic_dimension", "probes"):
        for rows in _read_files(run_dir, table, _ignore):
            if "layer" in rows:
                ranked = rows.sort_values("layer_index", kind="stable") \
                    if "layer_index" in rows else rows
                sequences.append([str(name) for name in dict.fromkeys(ranked["layer"])])
    try:
        sequences += [list(layers) for layers in final_spectra(run_dir)[1].values()]
    except DamagedFile:
        pass
    order: list[str] = []
    for sequence in sequences:
        for i, name in enumerate(sequence):
            if name not in order:
                before = [order.index(n) for n in sequence[:i] if n in order]
                order.insert(max(before) + 1 if before else 0, name)
    return order


def with_layer_keys(rows: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """``rows`` (with a ``layer`` column) with ``layer_index`` (place in ``order``, 0 for
    the first layer; empty for a layer ``order`` lacks) and ``relative_depth``
    (:func:`labkit.measures.depth.relative_depth`) right after ``layer``, replacing any
    such columns it had."""
    rows = rows.drop(columns=["layer_index", "relative_depth"], errors="ignore")
    place = {name: i for i, name in enumerate(order)}
    index = rows["layer"].astype(str).map(place).astype("Int64")
    after = rows.columns.get_loc("layer") + 1
    rows.insert(after, "layer_index", index)
    depth = relative_depth(index.astype(float).to_numpy(), len(order))
    rows.insert(after + 1, "relative_depth", depth)
    return rows


def available_tables(paths: list[Path]) -> list[str]:
    """Names of every table some run under ``paths`` holds, ``log`` first, then
    ``layers`` when some run has a per-layer measure (a per-layer table or spectra)."""
    names: set[str] = set()
    layered = False
    for run_dir in find_runs(paths):
        found = set(table_files(run_dir))
        names |= found
        layered = layered or bool(found & set(LAYER_TABLES)) or \
            (Path(run_dir) / SPECTRA_DIR).is_dir()
    names -= {LOG_TABLE, LAYERS_TABLE}
    return [LOG_TABLE, *([LAYERS_TABLE] if layered else []), *sorted(names)]


def collect(paths: list[Path], run_ids: tuple[str, ...] = (),
            on_damaged: Callable[[str], None] | None = None,
            table: str = LOG_TABLE,
            build: Callable[[Path, Callable[[str], None]], pd.DataFrame] | None = None
            ) -> pd.DataFrame:
    """One table across all runs under ``paths``, optionally only the given run-ids.

    Args:
        table: ``log`` or another table name (see module docstring).
        build: the rows of one run's table, given its directory and the report of
            files left out (raising DamagedFile when the run cannot be used); default
            :func:`run_table` of ``table`` (:mod:`labkit.outputs.layers` passes its own).
        on_damaged: called with a message for each run, or CSV of a run, left out
            because it cannot be read or is not what it claims; default:
            :func:`warnings.warn`.

    Raises:
        UserError: ``table`` is held by no run while there are runs (names the tables
            that exist), or every one was left out as damaged.
    """
    warn = on_damaged or (lambda message: warnings.warn(message, stacklevel=3))
    left_out = []

    def report(message: str) -> None:
        left_out.append(message)
        warn(message)

    tables = []
    runs = find_runs(paths)
    build = build or (lambda run_dir, report: run_table(run_dir, table, report))
    for run_dir in runs:
        try:
            tables.append(build(run_dir, report))
        except DamagedFile as exc:
            report(f"skipped {run_dir}: {exc}")
    tables = [t for t in tables if not t.empty]
    if not tables:
        where = ", ".join(map(str, paths))
        if left_out:
            raise UserError(f"every {table!r} table under {where} was left out as damaged "
                            f"(see the warnings); `labkit run` rewrites or recomputes them")
        if runs and table != LOG_TABLE:
            raise UserError(f"no run under {where} has a {table!r} table; tables found: "
                            f"{', '.join(available_tables(paths))}")
        return pd.DataFrame()
    result = pd.concat(tables, ignore_index=True)
    if run_ids:
        result = result[result["run_id"].isin(run_ids)].reset_index(drop=True)
    return result

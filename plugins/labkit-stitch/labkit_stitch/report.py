"""labkit-stitch's sections of ``labkit report``: the stitching tables of a grid of
stitch runs (read from their logs, as ``labkit stitch-table`` does), and the CKA tables
``labkit stitch-table`` wrote for it (``cka_table.csv`` in its default folder)."""
from __future__ import annotations

import html

import pandas as pd

from labkit.api import DamagedFile, RunConfig, html_table, read_csv_file
from labkit_stitch.catalogue import CKA_MEASURES
from labkit_stitch.tables import matrix, stitch_table, tables_folder

STITCH_TITLE = "Stitching: accuracy of A's bottom stitched into B's top"
CKA_TITLE = "Representational similarity (CKA) of the stitched networks"
VALUES = {"stitched": "stitched (A trained)", "random_sender": "random sender (A untrained)",
          "debiased": "debiased (stitched − random sender)"}


def _matrix_html(rows: pd.DataFrame, value: str, row: str, column: str, caption: str) -> str:
    table = matrix(rows, value, row, column).reset_index()
    return f"<p>{html.escape(caption)}</p>{html_table(table)}"


def stitch_section(runs: list[RunConfig]) -> str:
    """Per group of stitch runs (:func:`~labkit_stitch.tables.stitch_table`), its
    stitched, random-sender and debiased values, rows A's layer, columns B's layer."""
    table = stitch_table(runs)
    parts = []
    for group, rows in table.groupby("group", sort=False):
        first = rows.iloc[0]
        parts.append(f"<h3>{html.escape(group)}</h3><p>eval accuracy; A: "
                     f"<code>{html.escape(first['sender_run'])}</code> ({first['sender']:.4g}), "
                     f"B: <code>{html.escape(first['receiver_run'])}</code> "
                     f"({first['receiver']:.4g}). Empty: not trained yet, or unstitchable "
                     f"(see <code>labkit stitch-table --dry-run</code>).</p>")
        parts += [_matrix_html(rows, value, "sender_layer", "receiver_layer",
                               f"{caption}; rows: A's layer, columns: B's layer")
                  for value, caption in VALUES.items()]
    return "".join(parts)


def cka_section(runs: list[RunConfig]) -> str:
    """The CKA tables of ``cka_table.csv`` in the grid's stitch-table folder, one matrix
    per pair of networks and measure; ``""`` when there is none or it is damaged."""
    path = tables_folder(runs) / "cka_table.csv"
    try:
        table = read_csv_file(path, {"layer_a": "text", "layer_b": "text", "run_a": "text",
                                     "run_b": "text"}) if path.exists() else None
    except DamagedFile as exc:
        return f"<p>{html.escape(str(exc))}</p>"
    if table is None:
        return ""
    parts = []
    for (run_a, run_b), rows in table.groupby(["run_a", "run_b"], sort=False):
        parts.append(f"<h3>A <code>{html.escape(run_a)}</code>, B "
                     f"<code>{html.escape(run_b)}</code></h3>")
        parts += [_matrix_html(rows, measure, "layer_a", "layer_b",
                               f"{measure}; rows: A's layer, columns: B's layer")
                  for measure in CKA_MEASURES if measure in rows]
    return "".join(parts)


def report_sections(runs: list[RunConfig]) -> list[tuple[str, str]]:
    """The stitching tables of the grid's ``stitched`` runs and their CKA tables (none
    without such runs)."""
    stitched = [r for r in runs if r.config["model"]["name"] == "stitched"]
    if not stitched:
        return []
    sections = [(STITCH_TITLE, stitch_section(stitched))]
    cka = cka_section(stitched)
    return sections + ([(CKA_TITLE, cka)] if cka else [])

"""labkit-dino's section of ``labkit report``: the final k-NN and linear probe accuracies
of student and teacher of each ``dino`` run."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

from labkit.api import RunConfig, html_table, labelled_runs, readable_log

TITLE = "DINO probes: k-NN and linear accuracy of student and teacher"
PROBE = re.compile(r"^probe-(?P<split>.+)-(?P<network>student|teacher)-(?P<kind>knn|linear)$")


def is_dino(run: RunConfig) -> bool:
    """Whether the run trains with the ``dino`` method."""
    return (run.config.get("method") or {}).get("name") == "dino"


def probe_rows(run: RunConfig, label: str) -> list[dict[str, Any]]:
    """Per eval split and network (student, teacher): the last probed epoch and its
    k-NN and linear probe accuracies; ``[]`` without a readable log or probe columns."""
    log = readable_log(run)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for column in [] if log is None else log.columns:
        match = PROBE.match(column)
        probed = log[["epoch", column]].dropna() if match else None
        if probed is None or probed.empty:
            continue
        row = rows.setdefault((match["split"], match["network"]), {
            "run": label, "split": match["split"], "network": match["network"],
            "epoch": int(probed["epoch"].iloc[-1])})
        row["k-NN" if match["kind"] == "knn" else "linear"] = float(probed[column].iloc[-1])
    return list(rows.values())


def report_sections(runs: list[RunConfig]) -> list[tuple[str, str]]:
    """The probe table of the grid's ``dino`` runs (none without such runs)."""
    rows = [row for run, label in labelled_runs(runs, is_dino) for row in probe_rows(run, label)]
    if not rows:
        return []
    return [(TITLE, '<p class="muted">The last epoch each run was probed at.</p>'
             + html_table(pd.DataFrame(rows), "dino-probes"))]

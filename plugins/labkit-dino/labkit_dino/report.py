"""labkit-dino's section of ``labkit report``: the final k-NN and linear probe accuracies
of student and teacher of each ``dino`` run."""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

from labkit.api import DamagedFile, RunConfig, display_labels, html_table, runinfo

TITLE = "DINO probes: k-NN and linear accuracy of student and teacher"
PROBE = re.compile(r"^probe-(?P<split>.+)-(?P<network>student|teacher)-(?P<kind>knn|linear)$")


def probe_rows(run: RunConfig, label: str) -> list[dict[str, Any]]:
    """Per eval split and network (student, teacher): the last probed epoch and its
    k-NN and linear probe accuracies; ``[]`` without a readable log or probe columns."""
    try:
        log = runinfo.read_log(run.directory) if run.directory.is_dir() else None
    except DamagedFile:  # the report names it in the run's reason
        return []
    if log is None:
        return []
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for column in log.columns:
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
    labels = display_labels([r.config for r in runs])[0]
    rows = [row for run, label in zip(runs, labels)
            if (run.config.get("method") or {}).get("name") == "dino"
            for row in probe_rows(run, label)]
    if not rows:
        return []
    return [(TITLE, '<p class="muted">The last epoch each run was probed at.</p>'
             + html_table(pd.DataFrame(rows), "dino-probes"))]

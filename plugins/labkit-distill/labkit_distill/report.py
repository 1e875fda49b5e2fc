"""labkit-distill's section of ``labkit report``: how far each student agrees with its
teacher at the end of training."""
from __future__ import annotations

from typing import Any

import pandas as pd

from labkit.api import RunConfig, html_table, labelled_runs, readable_log

TITLE = "Distillation: student–teacher agreement"


def is_distill(run: RunConfig) -> bool:
    """Whether the run trains with the ``distill`` method."""
    return (run.config.get("method") or {}).get("name") == "distill"


def agreement_rows(run: RunConfig, label: str) -> list[dict[str, Any]]:
    """Per eval split with an ``<split>-agreement`` column in the run's log: the final
    student accuracy, teacher accuracy, agreement (share of images on which they predict
    the same class) and KL(teacher || student); ``[]`` without a readable log."""
    log = readable_log(run)
    if log is None:
        return []
    last = log.iloc[-1]
    splits = [c.removesuffix("-agreement") for c in log.columns if c.endswith("-agreement")]
    return [{"run": label, "split": split,
             "student accuracy": last.get(f"{split}-accuracy", float("nan")),
             "teacher accuracy": last.get(f"{split}-teacher_accuracy", float("nan")),
             "agreement": last[f"{split}-agreement"],
             "KL(teacher || student)": last.get(f"{split}-teacher_kl", float("nan"))}
            for split in splits]


def report_sections(runs: list[RunConfig]) -> list[tuple[str, str]]:
    """The agreement table of the grid's ``distill`` runs (none without such runs)."""
    rows = [row for run, label in labelled_runs(runs, is_distill)
            for row in agreement_rows(run, label)]
    if not rows:
        return []
    return [(TITLE, '<p class="muted">Final epoch. Agreement: share of images on which '
                    'student and teacher predict the same class.</p>'
             + html_table(pd.DataFrame(rows), "distill-agreement"))]

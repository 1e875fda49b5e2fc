"""Which checkpoints a run writes: mid-epoch ones (:class:`MidEpochCheckpoints`) and the
best epoch's (``best_metric``)."""
from __future__ import annotations

import math
import time
from typing import Any

from labkit.core.errors import UserError
from labkit.methods.base import RunContext
from labkit.store import runinfo


def is_better(row: dict[str, Any], best: dict[str, Any] | None, metric: str | None,
              mode: str) -> bool:
    """Whether ``row`` beats the best epoch so far on ``metric`` (``None``: no tracking).

    Raises:
        UserError: ``metric`` is no column of the log (lists the columns).
    """
    if metric is None:
        return False
    if metric not in row:
        raise UserError(f"best_metric {metric!r} is not a log column; choose one of "
                        f"{', '.join(k for k in row if k != 'epoch')}")
    value = float(row[metric])
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


def best_so_far(best: dict[str, Any] | None, history: list[dict[str, Any]],
                config: dict[str, Any]) -> dict[str, Any] | None:
    """The best epoch a resumed run goes on from: the checkpoint's ``best`` when it was
    chosen by the config's ``best_metric`` and ``best_mode``, else the best of
    ``history`` by them (``best.pt`` then stays the old choice, which analyses refuse,
    until a later epoch beats it)."""
    if best is None or runinfo.best_mismatch(best, config) is not None:
        best = None
        for row in history:
            if is_better(row, best, config["best_metric"], config["best_mode"]):
                best = best_record(row, config)
    return best


def best_record(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The ``best`` record of the epoch of log ``row`` (checkpoints, ``status.json``):
    its epoch, the value of ``best_metric``, and the metric and mode it was chosen by."""
    return {"epoch": row["epoch"], "metric": config["best_metric"],
            "value": float(row[config["best_metric"]]), "mode": config["best_mode"]}


class MidEpochCheckpoints:
    """When to write a mid-epoch checkpoint: after every ``checkpoint_steps``-th optimizer
    step of the run (its step count a multiple of N, on ``clock``, so a resume keeps the
    schedule) and/or when ``checkpoint_minutes`` passed since the last checkpoint of any
    kind. A step that ends an epoch gets the epoch's checkpoint instead."""

    def __init__(self, config: dict[str, Any], clock: RunContext):
        self.every, self.minutes = config["checkpoint_steps"], config["checkpoint_minutes"]
        self.enabled = self.every is not None or self.minutes is not None
        self.clock = clock
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether a checkpoint is due after the optimizer step just taken."""
        if self.every is not None and self.clock.step % self.every == 0:
            return True
        return self.minutes is not None and time.monotonic() - self.last >= 60 * self.minutes

    def saved(self) -> None:
        """A checkpoint was just written: the minutes count from now."""
        self.last = time.monotonic()


def check_checkpointable(metrics: dict[str, Any]) -> None:
    """Mid-epoch checkpoints store every metric's counts.

    Raises:
        UserError: a metric without ``state_dict``/``load_state_dict`` (names it).
    """
    for name, metric in metrics.items():
        if not (hasattr(metric, "state_dict") and hasattr(metric, "load_state_dict")):
            raise UserError(f"metric {name!r} cannot be checkpointed mid-epoch (it has no "
                            f"state_dict/load_state_dict); drop checkpoint_steps and "
                            f"checkpoint_minutes from the spec or leave the metric out")

"""Experiment trackers: an opt-in copy of every epoch's log row to TensorBoard and the like.

``log.csv`` stays the source of truth: a tracker only mirrors the rows the engine has
just written there (it never feeds anything back), so trackers are not part of a run's
identity, and a tracker that fails costs a warning, never the run.

A tracker is a registered component of kind ``loggers`` (spec field ``loggers``, e.g.
``"loggers": ["tensorboard"]``), built on the process that writes the run's files with
the run (``RunConfig``) as context. It is an object with

* ``log_epoch(epoch: int, row: dict[str, float]) -> None``: the epoch's log.csv row
  (a resumed run logs its epochs from where it resumed), and
* ``close() -> None``: training ended (finished, failed or interrupted).

Plugins add trackers (Weights & Biases, MLflow, …) through the same
``labkit_register`` hook as every component: ``registries.loggers.register("wandb",
WandbLogger)``.

The built-in ``tensorboard`` tracker needs the ``tensorboard`` package (``pip install
"labkit[tensorboard]"``); it writes event files under ``<run>/tensorboard/`` (or
``log_dir``), one scalar per log column with the epoch as step, names grouped by pass
(``train/loss``, ``eval/accuracy``, ``train/saturation_block1-conv1``).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from labkit.core.errors import UserError
from labkit.store.identity import RunConfig


class TensorBoardLogger:
    """Every numeric log column as a TensorBoard scalar, the epoch as step.

    Args:
        run: the run being trained.
        log_dir: folder of the event files; default ``<run directory>/tensorboard``.

    Raises:
        UserError: the ``tensorboard`` package is not installed (names the extra).
    """

    def __init__(self, run: RunConfig, log_dir: str | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise UserError("the tensorboard logger needs the tensorboard package; install "
                            "it with `pip install \"labkit[tensorboard]\"` or drop it from "
                            "the spec's loggers") from None
        self.directory = Path(log_dir) if log_dir else run.directory / "tensorboard"
        self.writer = SummaryWriter(str(self.directory))

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Write the row's numeric columns (``train-loss`` → ``train/loss``)."""
        for column, value in row.items():
            if column == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if not math.isfinite(value):
                continue
            split, _, name = column.partition("-")
            self.writer.add_scalar(f"{split}/{name}" if name else column, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"tensorboard": TensorBoardLogger}


class Trackers:
    """The spec's trackers of one run, each guarded: a tracker that raises is reported
    once and left out from then on (the CSV already holds the row)."""

    def __init__(self, trackers: dict[str, Any]):
        self.trackers = dict(trackers)

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log_epoch(epoch, row)
            except Exception as exc:  # noqa: BLE001 - a mirror must never cost the run
                warnings.warn(f"logger {name} failed ({type(exc).__name__}: {exc}); it is "
                              f"left out for the rest of the run, log.csv is complete",
                              stacklevel=2)
                del self.trackers[name]

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for name, tracker in self.trackers.items():
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"logger {name} failed to close ({exc})", stacklevel=2)

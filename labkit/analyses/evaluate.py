"""A finished run scored on another data set (distribution shift, CINIC-10, …).

The run's evaluated network (:attr:`FinishedRun.model`) is scored, in eval mode, on one
split of any registered data set with that data set's own transforms: mean loss and
every metric of the run. Classes are matched by name: the other data set may list them
in another order (its labels are mapped onto the run's), but a class the run does not
know is an error.

Soft labels (``soft_labels``, CIFAR-10H style): a ``.npy`` array of shape (images,
classes), row ``i`` the label probabilities of the split's ``i``-th image, columns in the
evaluated data set's class order; they are mapped onto the run's classes by the same name
matching (a class of the run that the data set lacks gets probability 0). Every value
must be finite and ≥ 0 and every row sum to 1 within :data:`SUM_TOLERANCE`. They add
``soft-cross-entropy``, ``soft-accuracy`` and ``soft-top1-agreement``
(:func:`labkit.training.evaluation.evaluate`).

Outputs in the run directory: ``evaluations.csv``, one row per data set, split and
soft-label file (``dataset`` — the resolved data-set spec as JSON —, ``split``,
``soft_labels`` — the file's absolute path, empty without —, ``soft_labels_sha256``,
``images``, ``loss``, the metrics and the soft columns); a new evaluation replaces the
row of its data set, split and soft-label file. Each is complete only with the record of
the final checkpoint, of the data set it was computed from (for folder data sets, the
digest of their content: :func:`labkit.spec.data_identity`) and of the soft-label
file's sha256, so an edited or relabelled file is scored again.
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from labkit.analyses.base import Analysis
from labkit.core.errors import DamagedFile, UserError
from labkit.spec import Component, data_identity, resolve_component
from labkit.store.atomic import write_csv
from labkit.store.readers import read_csv_file, read_npy_file
from labkit.training.build import build_component, make_metrics
from labkit.training.evaluation import evaluate
from labkit.training.progress import step, track

RESULTS_CSV = "evaluations.csv"
SUM_TOLERANCE = 1e-3
KEY = ("dataset", "split", "soft_labels")


def read_soft_labels(path: Path, images: int, classes: list[str], where: str) -> np.ndarray:
    """The ``(images, len(classes))`` probabilities stored in ``path``, checked.

    Raises:
        UserError: the file is missing or no .npy array, has another shape, or holds
            NaN, negative values or rows not summing to 1 within :data:`SUM_TOLERANCE`.
    """
    fix = (f"it must be a .npy array of shape ({images}, {len(classes)}): one row of label "
           f"probabilities per image of {where}, in its order, one column per class in the "
           f"order {', '.join(classes)}")
    if not path.is_file():
        raise UserError(f"evaluate.soft_labels: {path} does not exist; {fix}")
    values = read_npy_file(path, kinds="iuf", fix=f"write it with numpy.save; {fix}")
    if values.shape != (images, len(classes)):
        raise UserError(f"evaluate.soft_labels: {path} has shape {values.shape}; {fix}")
    values = values.astype(np.float64)
    for problem, bad in (("NaN or infinite values", ~np.isfinite(values)),
                         ("negative values", values < 0)):
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise UserError(f"evaluate.soft_labels: {path} holds {problem} (first at row "
                            f"{row}, column {column}: {values[row, column]}); give "
                            f"probabilities, every value finite and >= 0")
    sums = values.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if len(off):
        raise UserError(f"evaluate.soft_labels: row {off[0]} of {path} sums to "
                        f"{sums[off[0]]:.6g}, not 1 (±{SUM_TOLERANCE:g}; {len(off)} such rows); "
                        f"divide each row by its sum")
    return values


def _keys(table: pd.DataFrame) -> pd.DataFrame:
    """The key columns of a results table (tables written before soft labels lack one)."""
    keys = table.reindex(columns=list(KEY))
    return keys.fillna("").astype(str)


def shape_mismatch(spec: dict[str, Any], theirs: tuple[int, int],
                   mine: tuple[int, int]) -> str | None:
    """What keeps a run trained on ``mine`` images (channels, resolution in px) from
    scoring a data set (resolved spec ``spec``) of ``theirs``, and the fix; ``None`` when
    they fit. Channels are never converted: a run takes the channels it was trained on."""
    (channels, resolution), (want_channels, want_resolution) = theirs, mine
    name = spec["name"]
    if channels != want_channels:
        return (f"{name} gives {channels}-channel images, the run was trained on "
                f"{want_channels}-channel ones; labkit does not convert channels, so score it "
                f"on a data set of {want_channels}-channel images")
    if resolution != want_resolution:
        return (f"{name} gives {resolution} px images, the run was trained on "
                f"{want_resolution} px; give its resolution: "
                f"--on '{{\"name\": \"{name}\", \"resolution\": {want_resolution}}}'")
    return None


class _Relabelled(torch.utils.data.Dataset):
    """``(image, label)`` with labels mapped onto another class order."""

    def __init__(self, dataset: Any, mapping: list[int]):
        self.dataset, self.mapping = dataset, mapping

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return image, self.mapping[int(label)]


class Evaluate(Analysis):
    """Loss and metrics of the finished run on a split of another data set."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        dataset: str | dict[str, Any] = Field(
            description="the data set: a name or {\"name\": …, params}; its resolution "
                        "defaults to the run's")
        split: str = Field("eval", description="which of its splits: \"train\" or an eval "
                                               "split name")
        soft_labels: str | None = Field(
            None, description="optional .npy file of label probabilities, shape (images, "
                              "classes), rows in the split's order, columns in the data "
                              "set's class order")

    @cached_property
    def dataset_spec(self) -> dict[str, Any]:
        """The data set's resolved spec, at the run's resolution unless it says other."""
        raw = self.params.dataset
        raw = {"name": raw} if isinstance(raw, str) else dict(raw)
        registry = self.run.registries.datasets
        if "resolution" not in raw and "resolution" in registry.get(raw["name"]).params.model_fields:
            raw["resolution"] = self.run.data.resolution
        return resolve_component(Component(**raw), "datasets", "evaluate.dataset",
                                 self.run.registries)

    @cached_property
    def soft_labels_path(self) -> Path | None:
        """The soft-label file, absolute, or ``None``."""
        given = self.params.soft_labels
        return None if given is None else Path(given).expanduser().resolve()

    @cached_property
    def soft_labels_digest(self) -> str | None:
        """sha256 of the soft-label file (``None`` without one).

        Raises:
            UserError: the file does not exist.
        """
        path = self.soft_labels_path
        if path is None:
            return None
        if not path.is_file():
            raise UserError(f"evaluate.soft_labels: {path} does not exist; give a .npy file of "
                            f"label probabilities, shape (images, classes)")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def key(self) -> dict[str, str]:
        """The values of :data:`KEY` that name this evaluation's row."""
        return {"dataset": json.dumps(self.dataset_spec, sort_keys=True),
                "split": self.params.split,
                "soft_labels": "" if self.soft_labels_path is None else str(self.soft_labels_path)}

    def outputs(self) -> list[Path]:
        return [self.run.directory / RESULTS_CSV]

    def record_name(self) -> str:
        return f"{RESULTS_CSV}-{self._key()}"

    def _key(self) -> str:
        parts: list[Any] = [self.dataset_spec, self.params.split]
        if self.soft_labels_path is not None:  # records without soft labels keep their name
            parts.append(str(self.soft_labels_path))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    def inputs(self) -> dict[str, Any]:
        spec = self.dataset_spec
        extra = ({} if self.soft_labels_digest is None
                 else {"soft_labels": self.soft_labels_digest})
        return {**super().inputs(), "dataset": spec,
                "data": data_identity(spec, self.run.registries), **extra}

    def _mine(self, table: pd.DataFrame) -> pd.Series:
        """Which rows of ``table`` are this evaluation's."""
        keys = _keys(table)
        mine = pd.Series(True, index=table.index)
        for column, value in self.key().items():
            mine &= keys[column] == value
        return mine

    def shared_outputs(self) -> dict[Path, dict[str, str]]:
        return {self.outputs()[0]: self.key()}

    def _table(self) -> pd.DataFrame:
        """``evaluations.csv`` (key columns as text).

        Raises:
            DamagedFile: it cannot be read as a table.
        """
        return read_csv_file(self.outputs()[0], text_columns=KEY)

    def result(self) -> dict[str, Any]:
        """This evaluation's row of ``evaluations.csv`` (columns other evaluations fill
        and this one does not are left out).

        Raises:
            DamagedFile: the file cannot be read, or holds no row of this evaluation.
        """
        table = self._table()
        mine = table[self._mine(table)]
        if mine.empty:
            raise DamagedFile(f"{self.outputs()[0]} holds no row of this evaluation; "
                              f"evaluate again")
        row = mine.iloc[-1]
        return {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}

    def compute(self, progress: bool = True) -> None:
        run, spec = self.run, self.dataset_spec
        other = build_component(run.registries, "datasets", spec)
        splits = {"train": other.train_plain, **other.evals}
        if self.params.split not in splits:
            raise UserError(f"evaluate.split: {spec['name']} has no split "
                            f"{self.params.split!r}; it has {', '.join(splits)}")
        problem = shape_mismatch(spec, (other.in_channels, other.resolution),
                                 (run.data.in_channels, run.data.resolution))
        if problem:
            raise UserError(f"evaluate.dataset: {problem}")
        mine, theirs = run.data.info.get("classes"), other.info.get("classes")
        unknown = sorted(set(theirs or []) - set(mine or []))
        if not mine or not theirs or unknown:
            raise UserError(f"evaluate.dataset: classes are matched by name, and the run does "
                            f"not know {unknown or 'the classes'} of {spec['name']}; evaluate "
                            f"on a data set whose classes the run was trained on")
        mapping = [mine.index(name) for name in theirs]
        split = splits[self.params.split]
        soft = None
        if self.soft_labels_path is not None:
            given = read_soft_labels(self.soft_labels_path, len(split), theirs,
                                     f"{spec['name']} {self.params.split}")
            soft = torch.zeros(len(split), len(mine), dtype=torch.float64)
            soft[:, mapping] = torch.from_numpy(given)
        loader = DataLoader(_Relabelled(split, mapping), batch_size=run.config["eval_batch_size"])
        with step("evaluate", f"{spec['name']} {self.params.split} ({len(split)} images)",
                  progress=progress):
            scores = evaluate(run.model, track(loader, self.params.split, unit="batch",
                                               progress=progress, lines=False),
                              make_metrics(run.registries, run.config["metrics"],
                                           run.data.num_classes), run.device, soft)
        row = {**self.key(), "soft_labels_sha256": self.soft_labels_digest or "",
               "images": len(split), **scores}
        path = self.outputs()[0]
        try:  # the other evaluations' rows are kept; a damaged file is replaced
            table = self._table() if path.exists() else pd.DataFrame()
        except DamagedFile:
            table = pd.DataFrame()
        if len(table):
            table = table[~self._mine(table)]
        write_csv(path, pd.concat([table, pd.DataFrame([row])], ignore_index=True))


ANALYSES: dict[str, type[Analysis]] = {"evaluate": Evaluate}

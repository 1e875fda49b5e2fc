"""A finished run scored on another data set (distribution shift, CINIC-10, …).

The run's evaluated network (:attr:`FinishedRun.model`) is scored, in eval mode, on one
split of any registered data set with that data set's own transforms: mean loss and
every metric of the run. Classes are matched by name: the other data set may list them
in another order (its labels are mapped onto the run's), but a class the run does not
know is an error.

Outputs in the run directory: ``evaluations.csv``, one row per data set and split
(``dataset`` — the resolved data-set spec as JSON —, ``split``, ``images``, ``loss`` and
the metrics); a new evaluation replaces the row of its data set and split. Each is
complete only with the record of the final checkpoint and of the data set it was
computed from (for folder data sets, their listing digest).
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from labkit.analyses.base import Analysis
from labkit.atomic import write_csv
from labkit.build import build_component, make_metrics
from labkit.errors import UserError
from labkit.evaluation import evaluate
from labkit.spec import Component, data_identity, resolve_component

RESULTS_CSV = "evaluations.csv"


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

    def outputs(self) -> list[Path]:
        return [self.run.directory / RESULTS_CSV]

    def record_name(self) -> str:
        return f"{RESULTS_CSV}-{self._key()}"

    def _key(self) -> str:
        text = json.dumps([self.dataset_spec, self.params.split], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def inputs(self) -> dict[str, Any]:
        spec = self.dataset_spec
        return {**super().inputs(), "dataset": spec,
                "data": data_identity(spec, self.run.registries)}

    def is_complete(self) -> bool:
        if not super().is_complete():
            return False
        table = pd.read_csv(self.outputs()[0])
        return ((table["dataset"] == json.dumps(self.dataset_spec, sort_keys=True))
                & (table["split"] == self.params.split)).any()

    def compute(self, progress: bool = True) -> None:
        run, spec = self.run, self.dataset_spec
        other = build_component(run.registries, "datasets", spec)
        splits = {"train": other.train_plain, **other.evals}
        if self.params.split not in splits:
            raise UserError(f"evaluate.split: {spec['name']} has no split "
                            f"{self.params.split!r}; it has {', '.join(splits)}")
        if (other.in_channels, other.resolution) != (run.data.in_channels, run.data.resolution):
            raise UserError(
                f"evaluate.dataset: {spec['name']} gives {other.in_channels}-channel "
                f"{other.resolution} px images, the run was trained on "
                f"{run.data.in_channels}-channel {run.data.resolution} px; give its resolution")
        mine, theirs = run.data.info.get("classes"), other.info.get("classes")
        unknown = sorted(set(theirs or []) - set(mine or []))
        if not mine or not theirs or unknown:
            raise UserError(f"evaluate.dataset: classes are matched by name, and the run does "
                            f"not know {unknown or 'the classes'} of {spec['name']}; evaluate "
                            f"on a data set whose classes the run was trained on")
        mapping = [mine.index(name) for name in theirs]
        loader = DataLoader(_Relabelled(splits[self.params.split], mapping),
                            batch_size=run.config["eval_batch_size"])
        scores = evaluate(run.model, loader,
                          make_metrics(run.registries, run.config["metrics"],
                                       run.data.num_classes), run.device)
        row = {"dataset": json.dumps(spec, sort_keys=True), "split": self.params.split,
               "images": len(splits[self.params.split]), **scores}
        path = self.outputs()[0]
        table = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if len(table):
            table = table[~((table["dataset"] == row["dataset"])
                            & (table["split"] == row["split"]))]
        write_csv(path, pd.concat([table, pd.DataFrame([row])], ignore_index=True))


ANALYSES: dict[str, type[Analysis]] = {"evaluate": Evaluate}

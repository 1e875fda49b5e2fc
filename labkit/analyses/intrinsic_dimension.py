"""Intrinsic dimension beyond PCA: TwoNN and the Levina–Bickel MLE of every layer on a
seeded sample of each split (docs/layers.md).

For each split (the un-augmented train split and every eval split) ``samples`` images are
drawn without replacement, ``numpy.random.default_rng(seed)`` afresh for each split, and
kept in dataset order; the points of a layer are those images' activations, one row per
image, reduced as the latents reduce them (:func:`labkit.analyses.latents.reduce`: conv
maps average-pooled to at most d×d and flattened, or flattened whole with ``"none"``).
They are read from the run's latents when a complete extraction of that downsampling
holds every layer and split (checked against its sha256; stored as float16 unless
extracted as float32), else computed by forward hooks on the final network in eval mode
(float32; :func:`labkit.analyses.latents.stream`). The estimators
(:mod:`labkit.measures.intrinsic_dimension`) then run in float64 on those rows, each
repeated row kept once.

Output ``intrinsic_dimension.csv``: one row per layer (network order) and split with
``layer, layer_index, relative_depth, split, twonn, mle, samples`` (images drawn),
``points`` (distinct rows the estimators used), ``features``, the parameters ``k``,
``discard_fraction``, ``seed``, ``downsampling`` and ``read_from`` (``latents`` or
``activations``). ``layer_index`` counts every Conv2d and Linear of the network in order
of first call (:mod:`labkit.measures.layers`), ``relative_depth`` is
:func:`labkit.measures.depth.relative_depth` of it. An estimate that cannot be made (fewer
distinct points than the estimator needs) is left empty.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Subset

from labkit.analyses import latents
from labkit.analyses.base import Analysis
from labkit.core.registry import Seed
from labkit.measures.depth import relative_depth
from labkit.measures.intrinsic_dimension import levina_bickel, twonn
from labkit.measures.layers import measured_layers
from labkit.store.atomic import write_csv
from labkit.store.latent_layout import array_path, verify_files
from labkit.store.readers import read_npy_file
from labkit.training.progress import track

RESULTS_CSV = "intrinsic_dimension.csv"


class IntrinsicDimension(Analysis):
    """TwoNN and Levina–Bickel intrinsic dimension per layer and split:
    ``intrinsic_dimension.csv`` (module docstring)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        samples: int = Field(1000, ge=3, description="images drawn from each split (all of "
                                                     "a smaller split)")
        k: int = Field(20, ge=2, description="neighbours per point of the Levina–Bickel MLE")
        discard_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                        description="share of the largest TwoNN ratios "
                                                    "left out of the fit")
        seed: Seed = Field(0, description="seed of the sample of images of each split")
        downsampling: Annotated[int, Field(ge=1)] | Literal["none"] = Field(
            4, description="side d of the average-pooled conv maps (d×d), or 'none' (the "
                           "whole map flattened): one point per image, as the latents")
        layers: list[str] | None = Field(None, description="wildcards on layer names; null: "
                                                           "every Conv2d and Linear")
        latents_dir: str | None = Field(None, description="root of the latent datasets to "
                                                          "read; null: the run's own")

        @model_validator(mode="after")
        def _more_points_than_neighbours(self) -> "IntrinsicDimension.Params":
            if self.k >= self.samples:
                raise ValueError(f"k = {self.k} neighbours need more than k samples; give "
                                 f"samples > k")
            return self

    def outputs(self) -> list[Path]:
        return [self.run.directory / RESULTS_CSV]

    def _latents_dir(self) -> Path:
        return latents.locate(self.run.run, self.params.downsampling, self.params.latents_dir)

    @cached_property
    def order(self) -> list[str]:
        """Every Conv2d and Linear of the network, in network order."""
        return [name for name, _ in measured_layers(self.run.model)]

    @cached_property
    def chosen(self) -> list[str]:
        """The layers measured (``layers`` patterns), in network order."""
        return [name for name, _ in measured_layers(self.run.model, self.params.layers)]

    @property
    def splits(self) -> dict[str, Any]:
        """Split name → data set: the un-augmented train split, then the eval splits."""
        return {"train": self.run.data.train_plain, **self.run.data.evals}

    def _usable_latents(self) -> dict[str, Any] | None:
        """The manifest of a complete extraction holding every split and chosen layer."""
        manifest = latents.read_manifest(self._latents_dir())
        if manifest is None or not (set(self.chosen) <= set(manifest["plan"]["layers"])
                                    and set(self.splits) <= set(manifest["plan"]["splits"])):
            return None
        return manifest

    def inputs(self) -> dict[str, Any]:
        manifest = self._usable_latents()
        return {"latents": manifest["digest"]} if manifest is not None else super().inputs()

    def sample(self, images: int) -> np.ndarray:
        """Indices (ascending) of the images drawn from a split of ``images`` images."""
        count = min(self.params.samples, images)
        return np.sort(np.random.default_rng(self.params.seed).choice(images, count,
                                                                      replace=False))

    def points(self, split: str) -> tuple[dict[str, np.ndarray], str]:
        """Layer → the sampled images' rows ``(samples, features)`` of ``split`` (float64)
        in network order, and where they came from (``latents`` or ``activations``)."""
        dataset = self.splits[split]
        chosen = self.sample(len(dataset))
        manifest = self._usable_latents()
        if manifest is not None:
            directory = self._latents_dir()
            paths = {name: array_path(directory, split, name) for name in self.chosen}
            verify_files(directory, manifest, [path.name for path in paths.values()])
            return {name: np.asarray(read_npy_file(path, "f", mmap=True)[chosen],
                                     dtype=np.float64)
                    for name, path in paths.items()}, "latents"
        rows: dict[str, list[np.ndarray]] = {}
        loader = DataLoader(Subset(dataset, chosen.tolist()),
                            batch_size=self.run.config["eval_batch_size"])
        for batch, _ in latents.stream(self.run.model, loader, self.params.downsampling,
                                       self.params.layers):
            for name, values in batch.items():
                rows.setdefault(name, []).append(values.cpu().double().numpy())
        # a layer the forward pass never calls has no activations, hence no row
        return {name: np.concatenate(rows[name]) for name in self.chosen if name in rows}, \
            "activations"

    def compute(self, progress: bool = True) -> None:
        """Estimate every chosen layer of every split and write the table; ``progress``:
        show each split and layer as it is done (:mod:`labkit.training.progress`)."""
        params = self.params
        table = []
        for split in track(self.splits, "intrinsic_dimension", unit="split", progress=progress,
                           label=str):
            found, source = self.points(split)
            for name, x in track(found.items(), f"intrinsic_dimension {split}", unit="layer",
                                 progress=progress, label=lambda item: item[0]):
                index = self.order.index(name)
                table.append({
                    "layer": name, "layer_index": index,
                    "relative_depth": float(relative_depth(index, len(self.order))),
                    "split": split,
                    "twonn": _estimate(twonn, x, discard_fraction=params.discard_fraction),
                    "mle": _estimate(levina_bickel, x, k=params.k),
                    "samples": len(x), "points": len(np.unique(x, axis=0)),
                    "features": x.shape[1], "k": params.k,
                    "discard_fraction": params.discard_fraction, "seed": params.seed,
                    "downsampling": str(params.downsampling), "read_from": source})
        write_csv(self.outputs()[0], pd.DataFrame(table))


def _estimate(estimator: Any, x: np.ndarray, **kwargs: Any) -> float:
    """``estimator(x, **kwargs)``; NaN (an empty cell) where too few distinct points
    remain for it."""
    try:
        return estimator(x, **kwargs)
    except ValueError:
        return float("nan")


ANALYSES: dict[str, type[Analysis]] = {"intrinsic_dimension": IntrinsicDimension}

"""Similarity tables between the layers of two trained runs, on the same images.

Activations come from labkit's stored latents (:mod:`labkit.analyses.latents`) when a run has a
complete extraction in the requested reduction that holds every chosen layer, for the
same eval images, made from the final checkpoint the run holds now; otherwise they are
computed from the run's final network in eval mode, cut with torch.fx at the chosen
layers (:mod:`labkit_stitch.cut`), and reduced exactly as the latents would be. Either way the values agree, except that latents
stored as float16 round the activations.

Every measure (:mod:`labkit_stitch.catalogue`) sees the first ``max_samples`` images of
the split, in the split's order, as float64 matrices on the CPU (one row per image).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader

from labkit.api import (RunConfig, UserError, build_component, latents, read_npy_file,
                        run_fingerprint)
from labkit.api import registries as labkit_registries
from labkit_stitch import cut
from labkit_stitch.calibration import STATISTICS, calibrated_table
from labkit_stitch.catalogue import CKA_MEASURES, Choice, choose
from labkit_stitch.refs import trained_network

# dataset settings that never change the images of an eval split
_NOT_EVAL_IMAGES = ("root", "download", "augment")


class SimilarityOptions(BaseModel):
    """How a similarity table is computed."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field("eval", description="eval split whose images both networks see")
    reduction: Annotated[int, Field(ge=1)] | Literal["none"] = Field(
        "none", description="conv maps: 'none' flattens the whole map (C·H·W features); d "
                            "average-pools it to d×d first, as labkit's latents do")
    max_samples: int = Field(2048, ge=4, description="images every measure sees (the "
                                                     "kernel measures' memory grows as "
                                                     "max_samples²)")
    batch_size: int = Field(256, ge=1, description="images per forward pass")
    measures: list[str] = Field(list(CKA_MEASURES), min_length=1,
                                description="measures, each 'name' or 'name:key=value,...'")
    permutations: int = Field(0, ge=0, description="permutation-null draws per table, 0 for "
                                                   "none, else at least 2")
    seed: int = Field(0, description="seed of the permutations")

    @field_validator("measures")
    @classmethod
    def _known(cls, values: list[str]) -> list[str]:
        columns = [choose(value).column for value in values]  # ValueError names the fix
        if len(set(columns)) < len(columns):
            raise ValueError(f"a measure is given twice: {', '.join(values)}")
        return values

    @field_validator("permutations")
    @classmethod
    def _enough(cls, value: int) -> int:
        if value == 1:
            raise ValueError("a permutation null needs at least 2 permutations (0 for none)")
        return value

    def choices(self) -> list[Choice]:
        """The measures with their parameters."""
        return [choose(value) for value in self.measures]


def _eval_images(dataset: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dataset.items() if k not in _NOT_EVAL_IMAGES}


def stored_latents(run: RunConfig, layers: Sequence[str], dataset: dict[str, Any],
                   options: SimilarityOptions) -> tuple[Path, str] | None:
    """The run's latents directory and its manifest's digest when it can stand in for the
    network, else ``None``.

    It can when the extraction in ``options.reduction`` is complete, holds every layer
    and the split, and was made on the same eval images as ``dataset`` from the final
    checkpoint that the run's folder holds now (a copied run may point at the latents
    of its original, which count only when made from the same weights).
    """
    if _eval_images(run.config["dataset"]) != _eval_images(dataset):
        return None
    directory = latents.locate(run, options.reduction)
    manifest = latents.read_manifest(directory)
    if (manifest is None or options.split not in manifest["plan"]["splits"]
            or not set(layers) <= set(manifest["plan"]["layers"])):
        return None
    source, trained = manifest["plan"].get("source"), run_fingerprint(run)
    made_from = source.get("checkpoint") if isinstance(source, dict) else None
    if trained is None or made_from != trained.checkpoint:
        return None
    return directory, manifest["digest"]


def _latent_batches(directory: Path, layers: Sequence[str],
                    options: SimilarityOptions) -> Iterator[list[torch.Tensor]]:
    arrays = [read_npy_file(latents.array_path(directory, options.split, layer), "f", mmap=True)
              for layer in layers]
    for start in range(0, len(arrays[0]), options.batch_size):
        yield [torch.from_numpy(np.asarray(a[start:start + options.batch_size], np.float64))
               for a in arrays]


@torch.no_grad()
def _network_batches(run: RunConfig, layers: Sequence[str], images: Any,
                     options: SimilarityOptions, device: str) -> Iterator[list[torch.Tensor]]:
    extractor = cut.bottom(trained_network(run), list(layers)).to(device).eval()
    for batch, _ in DataLoader(images, batch_size=options.batch_size):
        outputs = extractor(batch.to(device))
        yield [latents.reduce(outputs[layer], options.reduction).double().cpu()
               for layer in layers]


def _first_rows(stream: Iterator[list[torch.Tensor]], layers: int, limit: int
                ) -> list[np.ndarray]:
    """The first ``limit`` rows of each layer's batches, as float64 numpy matrices."""
    kept: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    count = 0
    for batch in stream:
        for chunks, act in zip(kept, batch):
            chunks.append(act[:limit - count])
        count += len(batch[0][:limit - count])
        if count >= limit:
            break
    return [torch.cat(chunks).numpy() for chunks in kept]


def measure_columns(choice: Choice, permutations: int) -> list[str]:
    """The table columns of one measure: its value, and with ``permutations`` its null's
    ``<column>_null_mean``, ``_null_sd``, ``_z``, ``_p``."""
    statistics = STATISTICS if permutations else ()
    return [choice.column, *(f"{choice.column}_{s}" for s in statistics)]


def layer_similarity(run_a: RunConfig, layers_a: Sequence[str], run_b: RunConfig,
                     layers_b: Sequence[str], dataset: dict[str, Any],
                     options: SimilarityOptions, device: str = "cpu") -> pd.DataFrame:
    """The chosen measures between every layer of A and every layer of B.

    Args:
        run_a, run_b: trained runs (trained first when unfinished).
        layers_a, layers_b: layer names (see :mod:`labkit_stitch.cut`).
        dataset: resolved dataset config whose ``options.split`` both networks see.
        options: split, reduction, sample count, measures, permutations and seed.
        device: torch device of the forward passes.

    Returns:
        One row per layer pair, in the given orders: ``layer_a``, ``layer_b``, per
        measure :func:`measure_columns` (x = A's layer, y = B's layer; the null shuffles
        B's rows), then ``run_a``, ``run_b``, ``split``, ``reduction``, ``samples``
        (images every measure saw), ``permutations``, ``seed``, ``source_a`` and
        ``source_b`` (``latents`` or ``network``), ``latents_a`` and ``latents_b``
        (digest of the latents manifest read, ``None`` for ``network``).
    """
    layers_a = [cut.canonical(layer) for layer in layers_a]
    layers_b = [cut.canonical(layer) for layer in layers_b]
    data = build_component(labkit_registries(), "datasets", dataset)
    if options.split not in data.evals:
        raise UserError(f"no eval split {options.split!r}; the data set has "
                        f"{', '.join(data.evals)}")
    sources, manifests, activations = [], [], []
    for run, layers in ((run_a, layers_a), (run_b, layers_b)):
        stored = stored_latents(run, layers, dataset, options)
        sources.append("network" if stored is None else "latents")
        manifests.append(None if stored is None else stored[1])
        stream = (_network_batches(run, layers, data.evals[options.split], options, device)
                  if stored is None else _latent_batches(stored[0], layers, options))
        activations.append(_first_rows(stream, len(layers), options.max_samples))
    full_a, full_b = activations

    columns: dict[str, np.ndarray] = {}
    for choice in options.choices():
        try:
            if options.permutations:
                found = calibrated_table(choice, full_a, full_b, options.permutations,
                                         options.seed)
            else:
                found = {"value": choice.table(full_a, full_b)}
        except ValueError as exc:  # a parameter that does not fit these activations
            raise UserError(f"measure {choice.column}: {exc}") from None
        for name, key in zip(measure_columns(choice, options.permutations),
                             ("value", *STATISTICS)):
            columns[name] = found[key]
    rows = [{"layer_a": la, "layer_b": lb,
             **{name: float(values[i, j]) for name, values in columns.items()}}
            for i, la in enumerate(layers_a) for j, lb in enumerate(layers_b)]
    table = pd.DataFrame(rows)
    table["run_a"], table["run_b"] = str(run_a.directory), str(run_b.directory)
    table["split"], table["reduction"] = options.split, options.reduction
    table["samples"] = len(full_a[0])
    table["permutations"], table["seed"] = options.permutations, options.seed
    table["source_a"], table["source_b"] = sources
    table["latents_a"], table["latents_b"] = manifests
    return table

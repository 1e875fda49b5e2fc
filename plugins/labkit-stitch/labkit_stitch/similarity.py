"""CKA tables between the layers of two trained runs, on the same images.

Activations come from labkit's stored latents (:mod:`labkit.latents`) when a run has a
complete extraction in the requested reduction that holds every chosen layer, for the
same eval images; otherwise they are computed from the run's final network in eval
mode, cut with torch.fx at the chosen layers (:mod:`labkit_stitch.cut`), and reduced
exactly as the latents would be. Either way the values agree, except that latents
stored as float16 round the activations.

Linear and RBF CKA, biased and debiased, use the first ``max_samples`` images (they
need ``(n, n)`` Gram matrices); minibatch CKA runs over the whole split in batches of ``batch_size``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from labkit.api import (RunConfig, UserError, build_component, latents, read_npy_file,
                        registries as labkit_registries)
from labkit_stitch import cka, cut
from labkit_stitch.refs import trained_network

# dataset settings that never change the images of an eval split
_NOT_EVAL_IMAGES = ("root", "download", "augment")


class CKAOptions(BaseModel):
    """How a CKA table is computed."""

    model_config = ConfigDict(extra="forbid")

    split: str = Field("eval", description="eval split whose images both networks see")
    reduction: Annotated[int, Field(ge=1)] | Literal["none"] = Field(
        "none", description="conv maps: 'none' flattens the whole map (C·H·W features); d "
                            "average-pools it to d×d first, as labkit's latents do")
    max_samples: int = Field(2048, ge=4, description="images for linear and RBF CKA "
                                                     "(memory grows as max_samples²)")
    batch_size: int = Field(256, ge=4, description="minibatch size of minibatch CKA")
    threshold: float = Field(1.0, gt=0, description="RBF bandwidth σ as a multiple of the "
                                                    "median pairwise distance")


def _eval_images(dataset: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dataset.items() if k not in _NOT_EVAL_IMAGES}


def stored_latents(run: RunConfig, layers: Sequence[str], dataset: dict[str, Any],
                   options: CKAOptions) -> tuple[Path, str] | None:
    """The run's latents directory and its manifest's digest when it can stand in for the
    network, else ``None``.

    It can when the extraction in ``options.reduction`` is complete, holds every layer
    and the split, and was made on the same eval images as ``dataset``.
    """
    if _eval_images(run.config["dataset"]) != _eval_images(dataset):
        return None
    directory = latents.locate(run, options.reduction)
    manifest = latents.read_manifest(directory)
    if (manifest is None or options.split not in manifest["plan"]["splits"]
            or not set(layers) <= set(manifest["plan"]["layers"])):
        return None
    return directory, manifest["digest"]


def _latent_batches(directory: Path, layers: Sequence[str],
                    options: CKAOptions) -> Iterator[list[torch.Tensor]]:
    arrays = [read_npy_file(latents.array_path(directory, options.split, layer), "f", mmap=True)
              for layer in layers]
    for start in range(0, len(arrays[0]), options.batch_size):
        yield [torch.from_numpy(np.asarray(a[start:start + options.batch_size], np.float64))
               for a in arrays]


@torch.no_grad()
def _network_batches(run: RunConfig, layers: Sequence[str], images: Any, options: CKAOptions,
                     device: str) -> Iterator[list[torch.Tensor]]:
    extractor = cut.bottom(trained_network(run), list(layers)).to(device).eval()
    for batch, _ in DataLoader(images, batch_size=options.batch_size):
        outputs = extractor(batch.to(device))
        yield [latents.reduce(outputs[layer], options.reduction).double().cpu()
               for layer in layers]


def layer_cka(run_a: RunConfig, layers_a: Sequence[str], run_b: RunConfig,
              layers_b: Sequence[str], dataset: dict[str, Any], options: CKAOptions,
              device: str = "cpu") -> pd.DataFrame:
    """Linear, RBF and minibatch CKA between every layer of A and every layer of B.

    Args:
        run_a, run_b: trained runs (trained first when unfinished).
        layers_a, layers_b: layer names (see :mod:`labkit_stitch.cut`).
        dataset: resolved dataset config whose ``options.split`` both networks see.
        options: split, reduction, sample counts, RBF bandwidth.
        device: torch device of the forward passes.

    Returns:
        One row per layer pair, in the given orders: ``layer_a``, ``layer_b``,
        ``linear_cka``, ``rbf_cka``, ``debiased_linear_cka``, ``debiased_rbf_cka``,
        ``minibatch_cka``, then ``run_a``, ``run_b``,
        ``split``, ``reduction``, ``samples`` (images of linear and RBF CKA),
        ``source_a`` and ``source_b`` (``latents`` or ``network``), ``latents_a`` and
        ``latents_b`` (digest of the latents manifest read, ``None`` for ``network``).
    """
    layers_a = [cut.canonical(layer) for layer in layers_a]
    layers_b = [cut.canonical(layer) for layer in layers_b]
    data = build_component(labkit_registries(), "datasets", dataset)
    if options.split not in data.evals:
        raise UserError(f"no eval split {options.split!r}; the data set has "
                        f"{', '.join(data.evals)}")
    sources, manifests, streams = [], [], []
    for run, layers in ((run_a, layers_a), (run_b, layers_b)):
        stored = stored_latents(run, layers, dataset, options)
        sources.append("network" if stored is None else "latents")
        manifests.append(None if stored is None else stored[1])
        streams.append(_network_batches(run, layers, data.evals[options.split], options, device)
                       if stored is None else _latent_batches(stored[0], layers, options))

    minibatch = cka.MinibatchCKA(len(layers_a), len(layers_b))
    kept_a: list[list[torch.Tensor]] = [[] for _ in layers_a]
    kept_b: list[list[torch.Tensor]] = [[] for _ in layers_b]
    kept = 0
    for acts_a, acts_b in zip(*streams, strict=True):
        if len(acts_a[0]) >= 4:  # the unbiased HSIC needs 4 samples
            minibatch.update(torch.stack([cka.gram_linear(x) for x in acts_a]),
                             torch.stack([cka.gram_linear(y) for y in acts_b]))
        take = min(options.max_samples - kept, len(acts_a[0]))
        for chunks, act in [*zip(kept_a, acts_a), *zip(kept_b, acts_b)]:
            chunks.append(act[:take])
        kept += take
    full_a = [torch.cat(chunks) for chunks in kept_a]
    full_b = [torch.cat(chunks) for chunks in kept_b]
    linear = (torch.stack([cka.gram_linear(x) for x in full_a]),
              torch.stack([cka.gram_linear(y) for y in full_b]))
    rbf = (torch.stack([cka.gram_rbf(x, options.threshold) for x in full_a]),
           torch.stack([cka.gram_rbf(y, options.threshold) for y in full_b]))
    tables = {
        "linear_cka": cka.cka_matrix(*linear),
        "rbf_cka": cka.cka_matrix(*rbf),
        "debiased_linear_cka": cka.debiased_cka_matrix(*linear),
        "debiased_rbf_cka": cka.debiased_cka_matrix(*rbf),
        "minibatch_cka": minibatch.compute(),
    }
    rows = [{"layer_a": la, "layer_b": lb,
             **{name: float(values[i, j]) for name, values in tables.items()}}
            for i, la in enumerate(layers_a) for j, lb in enumerate(layers_b)]
    table = pd.DataFrame(rows)
    table["run_a"], table["run_b"] = str(run_a.directory), str(run_b.directory)
    table["split"], table["reduction"], table["samples"] = options.split, options.reduction, kept
    table["source_a"], table["source_b"] = sources
    table["latents_a"], table["latents_b"] = manifests
    return table

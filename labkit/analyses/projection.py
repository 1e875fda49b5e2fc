"""PCA-projection inference: how much of each layer's output space does the network use?

For each ``delta`` every projected layer's output ``x`` is replaced, during inference on
every eval split, by its projection onto the leading eigenvectors ``V`` of the layer's
covariance that explain that share of the variance:

    x  ->  mu + (x - mu) V V^T

with ``mu`` the layer's mean. All layers are projected at once. ``V`` holds the smallest
number of leading eigenvectors whose share of the variance reaches ``delta`` (the
``reach`` count of :mod:`labkit.measures.saturation`, one more than delve's intrinsic
dimensionality, which stops just short of ``delta``), so ``kept / width`` is the layer's
``reach`` saturation at that delta. At ``delta = 1`` every eigenvector is kept and the
layer is left untouched, so the network is exactly the unprojected one. Conv layers are
projected channelwise: the C-vector at every pixel, as delve's ``Conv2DPCALayer`` does
with a 1x1 convolution. Unlike that layer, which never sets its mean and so projects the
uncentred output, the projection here is centred, which makes it the PCA
reconstruction.

Control: the same layers projected onto a random orthonormal basis of the same rank
(seeded), which tells how much of the accuracy at a given rank is due to the chosen
directions rather than to the rank.

Covariances and means come from the final model (eval mode) on the training split
without augmentation (``run.data.train_plain``), so the eval splits the accuracy is
measured on never shaped the projection.

Outputs in the run directory: ``projected_results.csv`` (one row per delta and eval
split) and ``projected_results.png`` (accuracy against delta, drawn by
:func:`labkit.outputs.projection_plot.draw_projection`), named
``projected_results-<digest>.*`` for params other than the defaults; like every analysis's,
they count as complete only with the record of the parameters and checkpoint they were
computed from (:meth:`labkit.analyses.base.Analysis.produce`).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from labkit.analyses.base import Analysis
from labkit.core.registry import Seed
from labkit.measures.layers import measured_layers
from labkit.measures.pca_dimension import intrinsic_dimensionality
from labkit.measures.saturation import spectrum
from labkit.measures.saturation_tracker import SaturationTracker
from labkit.outputs.projection_plot import draw_projection
from labkit.spec.saturation import TRAIN_PASS, SaturationConfig
from labkit.store.atomic import write_csv
from labkit.training.build import make_metrics
from labkit.training.evaluation import evaluate
from labkit.training.progress import step, track

RESULTS_CSV = "projected_results.csv"
RESULTS_PNG = "projected_results.png"


def project(output: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``mean + (output - mean) @ matrix`` along the channel / feature dimension 1.

    Args:
        output: ``(N, C, ...)`` layer output (``(N, F)`` linear, ``(N, C, H, W)`` conv).
        mean: ``(C,)`` mean of the layer's output.
        matrix: ``(C, C)`` symmetric projection matrix ``V V^T``.
    """
    shape = (1, -1) + (1,) * (output.dim() - 2)
    centred = output - mean.view(shape)
    return torch.einsum("nc...,cd->nd...", centred, matrix) + mean.view(shape)


@contextmanager
def projected(layers: dict[str, nn.Module],
              projections: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Replace each layer's output by :func:`project` with its ``(mean, matrix)`` inside."""
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor, *, name: str) -> torch.Tensor:
        return project(output, *projections[name])

    handles = [layers[name].register_forward_hook(functools.partial(hook, name=name))
               for name in projections]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def principal_axes(cov: torch.Tensor) -> torch.Tensor:
    """``(width, width)`` eigenvectors of ``cov`` as columns, by decreasing eigenvalue."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return eigenvectors[:, eigenvalues.argsort(descending=True)]


def random_basis(width: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """``(width, rank)`` orthonormal columns spanning a uniformly random subspace (float64)."""
    gaussian = torch.randn(width, rank, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(gaussian).Q


class Projection(Analysis):
    """Accuracy and loss of the eval splits with every layer projected onto its top
    principal directions, per delta, against a random projection of the same rank."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        deltas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
            [0.9, 0.95, 0.99, 0.995, 0.999, 1.0], min_length=1,
            description="explained-variance shares to project at, each in (0, 1]")
        layers: list[str] | None = Field(
            None, description="layers to project (wildcards); null: the run's "
                              "saturation.layers, else every Conv2d and Linear")
        max_samples: int | None = Field(
            None, ge=1, description="training images the covariances are estimated on; "
                                    "null: the whole training split")
        seed: Seed = Field(0, description="seed of the random control bases")

    def outputs(self) -> list[Path]:
        """``projected_results.csv`` / ``.png`` at the default params; other params
        (``labkit project --deltas``, a second projection in the spec) add a suffix of
        their digest, so different projections never overwrite each other."""
        return self.named_by_params(RESULTS_CSV, RESULTS_PNG)

    def compute(self, progress: bool = True) -> None:
        run, params, data = self.run, self.params, self.run.data
        patterns = params.layers or (run.config.get("saturation") or {}).get("layers")
        layers = dict(measured_layers(run.model, patterns))
        with step("projection", f"covariances of {len(layers)} layers, unprojected scores",
                  progress=progress):
            moments = self._training_moments(layers)
            directions = {name: principal_axes(cov) for name, (_, cov) in moments.items()}
            unprojected = {split: self._score(split, layers, {}) for split in data.evals}

        def projections(bases: dict[str, torch.Tensor]) -> dict[str, tuple]:
            # a layer keeping every direction is left alone: exactly the identity
            return {name: (moments[name][0].float(), (basis @ basis.T).float())
                    for name, basis in bases.items() if basis.shape[1] < basis.shape[0]}

        generator = torch.Generator().manual_seed(params.seed)
        rows = []
        for delta in track(params.deltas, "projection", unit="delta", progress=progress,
                           label=lambda delta: f"{delta:g}"):
            kept = {name: intrinsic_dimensionality(spectrum(cov), delta, "reach")
                    for name, (_, cov) in moments.items()}
            pca = projections({name: directions[name][:, :k] for name, k in kept.items()})
            control = projections({
                name: random_basis(len(directions[name]), k, generator).to(
                    directions[name].device)
                for name, k in kept.items()})
            saturation = sum(k / len(directions[name]) for name, k in kept.items()) / len(kept)
            for split in data.evals:
                scores = self._score(split, layers, pca)
                control_scores = self._score(split, layers, control)
                rows.append({
                    "delta": delta, "split": split,
                    "accuracy": scores["accuracy"], "loss": scores["loss"],
                    "control_accuracy": control_scores["accuracy"],
                    "control_loss": control_scores["loss"],
                    "unprojected_accuracy": unprojected[split]["accuracy"],
                    "unprojected_loss": unprojected[split]["loss"],
                    "average_saturation": saturation,
                    **{f"kept-dimensions_{name}": k for name, k in kept.items()},
                })
        table = pd.DataFrame(rows)
        csv, png = self.outputs()
        write_csv(csv, table)
        draw_projection(table, png, f"run {run.directory.name}")

    def _loader(self, dataset: Any) -> DataLoader:
        config = self.run.config
        return DataLoader(dataset, batch_size=config["eval_batch_size"],
                          num_workers=config["num_workers"])

    def _training_moments(self, layers: dict[str, nn.Module]) -> dict[str, tuple]:
        """``{layer: (mean, covariance)}`` on the un-augmented training split, channelwise."""
        run = self.run
        tracker = SaturationTracker(
            SaturationConfig(layers=list(layers), conv_method="channelwise",
                             max_samples=self.params.max_samples), run.model, [TRAIN_PASS])
        with tracker.track(TRAIN_PASS, run.model), torch.no_grad():
            for images, _ in self._loader(run.data.train_plain):
                run.model(images.to(run.device))
        return tracker.moments(TRAIN_PASS)

    def _score(self, split: str, layers: dict[str, nn.Module],
               projections: dict[str, tuple]) -> dict[str, float]:
        """Mean loss and accuracy on eval ``split`` with ``projections`` applied."""
        run = self.run
        metrics = make_metrics(run.registries, ["accuracy"], run.data.num_classes)
        with projected(layers, projections):
            return evaluate(run.model, self._loader(run.data.evals[split]), metrics, run.device)


ANALYSES: dict[str, type[Analysis]] = {"projection": Projection}

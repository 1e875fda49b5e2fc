"""Direct matching: a stitch fitted in closed form, without training on the task.

A stitch trained on the task (:class:`~labkit_stitch.stitching.Stitch`, *task loss
matching*) may feed B activations unlike any B produces itself, on which B's top still
scores well: it can rate a distant layer more similar than the matching one, even a
layer more similar to another than to itself (Balogh and Jelasity, "How not to Stitch
Representations to Measure Similarity: Task Loss Matching versus Direct Matching", AAAI
2025, arXiv:2412.11299). Their *direct matching* stitch, the least-squares matching of
Csiszárik et al. ("Similarity and Matching of Neural Network Representations", NeurIPS
2021), is the affine map that best reproduces B's own activation at layer j from A's
at layer i, in the least-squares sense, on training images; the stitched network (A's
frozen bottom, the fitted stitch, B's frozen top) is then scored like a trained stitch.

The fit, per cell (A's layer i → B's layer j):

* activations of A and B in eval mode on the un-augmented training split
  (``DataBundle.train_plain``), A's resampled to B's height × width or flattened exactly
  as the trained stitch does (:func:`~labkit_stitch.stitching.to_receiver_grid`);
* rows: for maps, one per image and position (a 1 × 1 convolution is the same linear map
  at every position: ``(N, C, H, W)`` → ``N·H·W`` rows of ``C`` features); for vectors,
  one per image;
* ``X`` (rows × p, A) and ``Y`` (rows × q, B), centred by their column means ``x̄``, ``ȳ``;
  ``W = argmin ‖Yc − Xc W‖²_F + α ‖W‖²_F`` with the ridge ``α = ridge · tr(XcᵀXc) / p``
  (relative to the features' mean variance; the intercept is not penalised), ``b = ȳ −
  x̄ W``: ``W = (XcᵀXc + αI)⁺ XcᵀYc``, the pseudo-inverse dropping eigenvalues below
  :data:`RCOND` times the largest. With ``ridge=0`` this is the minimum-norm
  least-squares solution of ``numpy.linalg.lstsq`` on the centred activations (and its
  fit with an intercept column when ``X`` has full column rank);
* computed in float64 from running sums over batches (``XᵀX``, ``XᵀY``, column sums,
  count; shifted by the first batch's means against cancellation): memory ``O(p² + pq)``,
  never the activations of the whole split.

The authors' code (szegedai/stitching-ood, ``ps_inv`` from Csiszárik et al.) fits the
same affine map as ``pinv([X, 1]) Y`` in float32 on one random batch of training images,
without a ridge. With full column rank the two fits are equal; where ``X`` is rank
deficient (dead units) both reproduce the training activations equally well, but theirs
is the minimum norm of weight and bias together, which depends on where the origin of
``X`` lies, while this one leaves the intercept free (translation-invariant).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from labkit.api import RunConfig, build_component, evaluate, is_trained, make_metrics
from labkit.api import registries as labkit_registries
from labkit_stitch import cut
from labkit_stitch.refs import trained_network
from labkit_stitch.stitching import to_receiver_grid
from labkit_stitch.tables import group_of, stitched_params

RCOND = 1e-12
"""Eigenvalues of the (ridge-added) centred Gram matrix below this fraction of the largest
are treated as zero: singular values of the centred activations below 1e-6 of the
largest."""


@dataclass(frozen=True)
class DirectMatch:
    """How the direct-matching stitches are fitted and scored.

    Attributes:
        ridge: relative ridge term (see the module docstring), ≥ 0; 0 gives the
            minimum-norm least-squares fit.
        batch_size: images per forward pass.
        device: torch device of the forward passes and of the float64 sums.
    """

    ridge: float = 1e-6
    batch_size: int = 256
    device: str = "cpu"


def as_rows(activation: torch.Tensor) -> torch.Tensor:
    """A map ``(N, C, H, W)`` as ``(N·H·W, C)`` (one row per image and position, the rows a
    1 × 1 convolution maps alike); a vector batch ``(N, F)`` unchanged."""
    if activation.dim() == 4:
        return activation.permute(0, 2, 3, 1).reshape(-1, activation.shape[1])
    return activation


class LeastSquares:
    """Running sums of an affine least-squares fit of ``Y`` (rows × q) from ``X`` (rows ×
    p), in float64; fed batch by batch with :meth:`update`, solved once with
    :meth:`solve`."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: ``x`` ``(rows, p)``, ``y`` ``(rows, q)``, the same rows in order."""
        x, y = x.to(torch.float64), y.to(torch.float64)
        if self.count == 0:  # sums of shifted values: no cancellation for large means
            self.shift_x, self.shift_y = x.mean(0), y.mean(0)
            self.sum_x, self.sum_y = torch.zeros_like(self.shift_x), torch.zeros_like(self.shift_y)
            self.xx = x.new_zeros(x.shape[1], x.shape[1])
            self.xy = x.new_zeros(x.shape[1], y.shape[1])
        x, y = x - self.shift_x, y - self.shift_y
        self.count += len(x)
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y

    def solve(self, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The fit (module docstring): ``weight`` ``(p, q)`` and ``bias`` ``(q,)``, float64,
        with ``prediction = x @ weight + bias``.

        Raises:
            ValueError: no rows were added, or ``ridge`` < 0.
        """
        if self.count == 0:
            raise ValueError("no activations to fit")
        if ridge < 0:
            raise ValueError(f"ridge must be ≥ 0, not {ridge}")
        mean_x, mean_y = self.sum_x / self.count, self.sum_y / self.count
        xx = self.xx - self.count * torch.outer(mean_x, mean_x)  # centred XcᵀXc
        xy = self.xy - self.count * torch.outer(mean_x, mean_y)  # centred XcᵀYc
        alpha = ridge * torch.trace(xx) / len(xx)
        gram = xx + alpha * torch.eye(len(xx), dtype=xx.dtype, device=xx.device)
        weight = torch.linalg.pinv(gram, rtol=RCOND, hermitian=True) @ xy
        bias = (mean_y + self.shift_y) - (mean_x + self.shift_x) @ weight
        return weight, bias


class DirectStitch(nn.Module):
    """A fitted stitch: A's activation → (resampled or flattened as the trained stitch
    does) → ``x @ weight + bias`` per row (a 1 × 1 convolution for maps), computed in
    float64 and returned in the input's dtype.

    Args:
        weight: ``(p, q)`` from :meth:`LeastSquares.solve`.
        bias: ``(q,)``.
        size: B's height × width, or ``None`` when B takes a vector.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor,
                 size: tuple[int, ...] | None):
        super().__init__()
        self.size = size
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` or ``(N, F)`` → B's shape ``(N, q, H', W')`` or ``(N, q)``."""
        x = to_receiver_grid(activation, self.size).to(self.weight.device, torch.float64)
        if self.size is None:
            out = x @ self.weight + self.bias
        else:
            out = F.conv2d(x, self.weight.T[:, :, None, None], self.bias)
        return out.to(activation.dtype)


def fit_stitches(sender: nn.Module, receiver: nn.Module, cells: list[tuple[str, str]],
                 images: torch.utils.data.Dataset, options: DirectMatch
                 ) -> dict[tuple[str, str], DirectStitch]:
    """The direct-matching stitch of each cell ``(A's layer, B's layer)``, fitted in one
    pass over ``images`` (``(image, label)`` pairs) through both networks (eval mode)."""
    layers_a = list(dict.fromkeys(i for i, _ in cells))
    layers_b = list(dict.fromkeys(j for _, j in cells))
    extract_a = cut.bottom(sender, layers_a).to(options.device).eval()
    extract_b = cut.bottom(receiver, layers_b).to(options.device).eval()
    fits = {cell: LeastSquares() for cell in cells}
    sizes: dict[str, tuple[int, ...] | None] = {}
    with torch.no_grad():
        for batch, _ in DataLoader(images, batch_size=options.batch_size):
            batch = batch.to(options.device)
            outs_a, outs_b = extract_a(batch), extract_b(batch)
            for (i, j), fit in fits.items():
                target = outs_b[j]
                sizes[j] = tuple(target.shape[2:]) if target.dim() == 4 else None
                fit.update(as_rows(to_receiver_grid(outs_a[i], sizes[j])), as_rows(target))
    return {(i, j): DirectStitch(*fit.solve(options.ridge), sizes[j])
            for (i, j), fit in fits.items()}


def score_stitches(sender: nn.Module, receiver: nn.Module,
                   stitches: Mapping[tuple[str, str], DirectStitch], images: torch.utils.data.Dataset,
                   metric: str, num_classes: int, options: DirectMatch
                   ) -> dict[tuple[str, str], float]:
    """``metric`` (``loss`` or a registered metric, as the engine logs it) of each
    stitched network ``A up to i → stitch → B from j`` on ``images``; NaN for a metric
    the evaluation does not give."""
    registries = labkit_registries()
    names = [metric] if metric in registries.metrics else []
    values = {}
    for (i, j), stitch in stitches.items():
        network = nn.Sequential(cut.bottom(sender, i), stitch, cut.top(receiver, j))
        stats = evaluate(network.to(options.device).eval(),
                         DataLoader(images, batch_size=options.batch_size),
                         make_metrics(registries, names, num_classes),
                         torch.device(options.device))
        values[(i, j)] = float(stats.get(metric, np.nan))
    return values


def direct_match_values(runs: list[RunConfig], problems: Mapping[str, str | None],
                        split: str, metric: str, options: DirectMatch
                        ) -> dict[tuple[str, str, str], float]:
    """The direct-matching value of every stitchable cell of a grid of stitch runs.

    Each cell is fitted on its stitch runs' data set (the training split) with A's
    *trained* weights and scored on ``split`` with ``metric``, like the trained stitch's
    ``<split>-<metric>``. Cells with the same networks, layers and data set share one
    fit; one pass over the training split per pair of networks and data set.

    Args:
        runs: stitch runs (model ``stitched``).
        problems: per stitch run directory, why its cell is unstitchable, or ``None``.
        split, metric: what to report.
        options: ridge, batch size, device.

    Returns:
        ``{(group, sender_layer, receiver_layer): value}`` (groups as in
        :func:`~labkit_stitch.tables.group_of`); NaN where A or B is not trained, the data
        set has no such split, or the metric is not computed; unstitchable cells absent.
    """
    pairs: dict[tuple[str, str, str], dict] = {}
    for run in runs:
        if problems.get(str(run.directory)):
            continue
        params = stitched_params(run)
        a, b = params.sender.run_config(), params.receiver.run_config()
        dataset = json.dumps(run.config["dataset"], sort_keys=True)
        pair = pairs.setdefault((str(a.directory), str(b.directory), dataset),
                                {"a": a, "b": b, "dataset": run.config["dataset"], "cells": {}})
        pair["cells"].setdefault((params.sender_layer, params.receiver_layer), set()).add(
            group_of(run, params))
    values: dict[tuple[str, str, str], float] = {}
    for pair in pairs.values():
        found = _pair_values(pair["a"], pair["b"], pair["dataset"], list(pair["cells"]),
                             split, metric, options)
        for cell, groups in pair["cells"].items():
            values.update({(group, *cell): found[cell] for group in groups})
    return values


def _pair_values(a: RunConfig, b: RunConfig, dataset: dict, cells: list[tuple[str, str]],
                 split: str, metric: str, options: DirectMatch) -> dict[tuple[str, str], float]:
    data = build_component(labkit_registries(), "datasets", dataset)
    if not (is_trained(a) and is_trained(b)) or split not in data.evals:
        return {cell: np.nan for cell in cells}
    sender, receiver = trained_network(a), trained_network(b)
    stitches = fit_stitches(sender, receiver, cells, data.train_plain, options)
    return score_stitches(sender, receiver, stitches, data.evals[split], metric,
                          data.num_classes, options)

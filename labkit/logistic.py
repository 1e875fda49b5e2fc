"""Multinomial logistic regression on memory-mapped arrays, streamed in chunks.

The objective is scikit-learn's ``LogisticRegression(C=C)`` with the L-BFGS solver
(multinomial, L2 penalty on the weights, none on the intercept), divided by the number
of rows, which leaves its minimiser unchanged::

    f(W, b) = 1/n · Σ_i  -log softmax(W x_i + b)[y_i]  +  ||W||² / (2 C n)

so a probe's numbers keep scikit-learn's meaning. Unlike scikit-learn, which needs the
whole ``(rows, features)`` matrix in memory (and copies it to standardise it), every
pass here reads the rows chunk by chunk from the memory map: memory stays at one chunk
plus the weights whatever the number of rows (a pixelwise layer of 50 M rows included).
The standardisation statistics come from one extra pass (float64 sums). L-BFGS is
torch's, with strong-Wolfe line search; each evaluation of ``f`` and its gradient is a
pass over the rows, on the given device (a GPU when the run has one).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_ROWS = 1 << 16


def _chunks(features: np.ndarray, labels: np.ndarray, device: torch.device,
            positions: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` float32 / int64 tensors on ``device``, about :data:`CHUNK_ROWS` rows at
    a time. ``labels`` holds one label per image, whose ``positions`` rows are
    consecutive (a pixelwise layer's rows are image-major), so no per-row label array
    is ever built."""
    images = max(1, CHUNK_ROWS // positions)
    for first in range(0, len(labels), images):
        rows = features[first * positions:(first + images) * positions]
        x = torch.from_numpy(np.asarray(rows, dtype=np.float32))
        y = torch.from_numpy(np.repeat(np.asarray(labels[first:first + images],
                                                  dtype=np.int64), positions))
        yield x.to(device), y.to(device)


@dataclass
class StreamedLogistic:
    """A fitted probe: ``predict`` and ``score`` stream too.

    Attributes:
        weight: ``(classes, features)``; bias: ``(classes,)``; mean, scale:
        ``(features,)`` standardisation (zeros and ones without it); n_iter: L-BFGS
        iterations used.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    n_iter: int

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(rows, classes)`` scores of the raw rows ``x``."""
        return F.linear((x - self.mean) / self.scale, self.weight, self.bias)

    def score(self, features: np.ndarray, labels: np.ndarray, positions: int = 1) -> float:
        """Accuracy (share of rows whose argmax is their label), streamed; ``labels``
        and ``positions`` as for :func:`fit`."""
        correct = 0
        with torch.no_grad():
            for x, y in _chunks(features, labels, self.weight.device, positions):
                correct += int((self.logits(x).argmax(1) == y).sum())
        return correct / max(len(features), 1)


def standardisation(features: np.ndarray, device: torch.device,
                    standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of the rows (population, as scikit-learn's
    ``StandardScaler``; a constant feature gets scale 1), in one float64 pass."""
    width = features.shape[1]
    if not standardize:
        return torch.zeros(width, device=device), torch.ones(width, device=device)
    total = torch.zeros(width, dtype=torch.float64, device=device)
    squares = torch.zeros(width, dtype=torch.float64, device=device)
    for x, _ in _chunks(features, np.zeros(len(features), dtype=np.int64), device):
        x = x.double()
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(features)
    var = (squares / len(features) - mean * mean).clamp_min(0)
    scale = var.sqrt()
    scale[scale == 0] = 1.0
    return mean.float(), scale.float()


def fit(features: np.ndarray, labels: np.ndarray, classes: int, *, positions: int = 1,
        C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, standardize: bool = True,
        device: str | torch.device = "cpu") -> StreamedLogistic:
    """Fit the objective of the module docstring.

    Args:
        features: ``(rows, features)`` array, typically a read-only memory map (any
            float dtype; read in chunks as float32).
        labels: integer labels in ``[0, classes)``, one per image.
        classes: number of classes.
        positions: rows per image (``features`` has ``len(labels) * positions`` rows,
            each image's consecutive).
        C: inverse regularisation strength, as scikit-learn's.
        max_iter: most L-BFGS iterations.
        tol: stop when the largest absolute gradient entry falls below it.
        standardize: scale features to mean 0, variance 1 first.
        device: where the arithmetic runs.
    """
    device = torch.device(device)
    n = len(features)
    mean, scale = standardisation(features, device, standardize)
    weight = torch.zeros(classes, features.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=tol, tolerance_change=1e-12,
                                  history_size=10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        total = torch.zeros((), device=device)
        for x, y in _chunks(features, labels, device, positions):
            loss = F.cross_entropy(F.linear((x - mean) / scale, weight, bias), y,
                                   reduction="sum") / n
            loss.backward()
            total += loss.detach()
        penalty = (weight * weight).sum() / (2 * C * n)
        penalty.backward()
        return total + penalty.detach()

    optimizer.step(objective)
    n_iter = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    return StreamedLogistic(weight.detach(), bias.detach(), mean, scale, int(n_iter))

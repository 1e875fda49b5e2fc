"""Intrinsic dimension beyond PCA: TwoNN (Facco et al. 2017) and the Levina–Bickel
maximum-likelihood estimator (2004) with MacKay and Ghahramani's averaging (2005).

PCA-based counts (saturation's ``idim``) measure the linear span of a representation;
these estimators read only the distances between nearby points, so a curved
d-dimensional manifold in a wide space gives about d (Ansuini et al. 2019 use TwoNN on
every layer of trained networks).

Conventions shared by both:

* ``x`` is ``(n, p)``: n points (rows: examples, e.g. images), p coordinates (a layer's
  flattened features); anything numpy reads, converted to float64 on the CPU.
* Distances are Euclidean, between distinct rows, computed in float64 with torch in
  blocks of rows (memory ``block × n``), so n is limited by time (n² distances), not
  memory. ``max_points`` (with ``seed``) first draws a uniform sample of rows without
  replacement, ``numpy.random.default_rng(seed)``; neighbours are then found within the
  sample.
* Repeated rows (identical points, e.g. images that a layer maps to the same
  activation) are kept once, as Facco et al. advise: a zero distance has no defined
  ratio, and a copy beside a point would make its neighbours' ratios 1.
  :func:`duplicate_points` counts the rows dropped. The sample is drawn first, then
  repeated rows dropped; a ValueError is raised when fewer than 3 distinct points
  remain.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

BLOCK = 1024  # rows of the distance matrix computed at once


def subsample(x: ArrayLike, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """``x`` as float64 ``(n, p)``; when ``max_points`` is below n, a uniform sample of
    ``max_points`` rows without replacement (``numpy.random.default_rng(seed)``), in their
    original order."""
    points = np.asarray(x, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be a matrix (n points, p coordinates), got shape "
                         f"{points.shape}")
    if max_points is not None and max_points < len(points):
        chosen = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points = points[np.sort(chosen)]
    return points


def nearest_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Distances ``(n, k)`` from each row of ``x`` ``(n, p)`` to its k nearest other rows,
    ascending (a repeated row is at distance 0)."""
    if not 1 <= k < len(x):
        raise ValueError(f"needs more points than neighbours: k = {k}, n = {len(x)}")
    points = torch.from_numpy(x)
    found = []
    for start in range(0, len(x), BLOCK):
        block = torch.cdist(points[start:start + BLOCK], points,
                            compute_mode="donot_use_mm_for_euclid_dist")
        rows = torch.arange(len(block))
        block[rows, rows + start] = float("inf")  # a point is not its own neighbour
        found.append(torch.topk(block, k, dim=1, largest=False).values)
    return torch.cat(found).numpy()


def duplicate_points(x: ArrayLike, max_points: int | None = None, seed: int = 0) -> int:
    """How many rows of (the sample of) ``x`` repeat an earlier row: the rows the
    estimators drop."""
    points = subsample(x, max_points, seed)
    return len(points) - len(np.unique(points, axis=0))


def _distinct(x: ArrayLike, max_points: int | None, seed: int) -> np.ndarray:
    """The sample of ``x``, each repeated row kept once (in sorted order)."""
    points = np.unique(subsample(x, max_points, seed), axis=0)
    if len(points) < 3:
        raise ValueError(f"only {len(points)} distinct points; the estimate needs 3")
    return points


def twonn(x: ArrayLike, discard_fraction: float = 0.1, max_points: int | None = None,
          seed: int = 0) -> float:
    """TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez and Laio 2017) of the points
    ``x`` ``(n, p)``.

    For each point the ratio ``μ = r₂ / r₁`` of the distances to its second and first
    nearest neighbours; on a d-dimensional manifold of locally uniform density
    ``F(μ) = 1 − μ^(−d)``. The N ratios are sorted, the largest ``discard_fraction`` of
    them dropped (the paper's 10 %: the tail is noisiest), and the rest
    ``μ_(1) ≤ … ≤ μ_(m)``, ``m = ⌊N (1 − discard_fraction)⌋`` (at most N − 1: the largest
    ratio, where the empirical CDF is 1, never fits), fitted by least squares
    through the origin: ``−log(1 − i/N) = d · log μ_(i)``, so
    ``d = Σ log μ_(i) · (−log(1 − i/N)) / Σ (log μ_(i))²`` (empirical CDF ``i/N`` as in
    the paper and scikit-dimension's ``TwoNN``).

    Args:
        discard_fraction: share of the largest ratios left out, in [0, 1).
        max_points, seed: a seeded sample of rows first (module doc).

    Returns:
        The estimate d (a float; not rounded).
    """
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction}")
    distances = nearest_distances(_distinct(x, max_points, seed), 2)
    ratios = np.sort(distances[:, 1] / distances[:, 0])
    count = len(ratios)
    kept = min(int(count * (1 - discard_fraction)), count - 1)
    log_mu = np.log(ratios[:kept])
    target = -np.log(1 - np.arange(1, kept + 1) / count)
    return float(log_mu @ target / (log_mu @ log_mu))


def levina_bickel(x: ArrayLike, k: int = 20, max_points: int | None = None,
                  seed: int = 0) -> float:
    """Maximum-likelihood intrinsic dimension (Levina and Bickel 2004) of the points ``x``
    ``(n, p)``, averaged as MacKay and Ghahramani (2005) propose.

    With ``T_1 ≤ … ≤ T_k`` the distances from point i to its k nearest neighbours, the
    local estimate is ``m̂_i = [ (1/(k−1)) Σ_{j<k} log(T_k / T_j) ]^(−1)`` (Levina and
    Bickel's normalisation k − 1, scikit-dimension's ``MLE`` with ``unbiased=False``).
    The estimate averages the *inverses*: ``m̂ = [ (1/N) Σ_i m̂_i^(−1) ]^(−1)`` (the
    maximum-likelihood combination; scikit-dimension's ``comb="mle"``), not Levina and
    Bickel's mean of ``m̂_i``, which is biased upwards for small k.

    Args:
        k: neighbours per point, ≥ 2 (Levina and Bickel use 10 to 20).
        max_points, seed: a seeded sample of rows first (module doc).

    Returns:
        The estimate m̂ (a float).
    """
    if k < 2:
        raise ValueError(f"the MLE needs k ≥ 2 neighbours, got {k}")
    distances = nearest_distances(_distinct(x, max_points, seed), k)
    inverses = np.mean(np.log(distances[:, -1:] / distances[:, :-1]), axis=1)
    return float(1 / np.mean(inverses))

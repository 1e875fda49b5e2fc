"""Calibrated similarity scores: a measure's value against a permutation null.

What do unrelated representations score, at this number of examples and these widths?
The null shuffles the rows (examples) of ``y``, breaking the pairing of examples while
keeping each representation's own geometry, and recomputes the measure: ``permutations``
times, with permutations drawn from ``numpy.random.default_rng(seed)`` (the same ones for
every pair of a table, and for every measure given the same seed). From the null values:

* ``null_mean``, ``null_sd``: their mean and sample standard deviation (``ddof = 1``);
* ``z = (value − null_mean) / null_sd`` (NaN when ``null_sd`` is 0);
* ``p``: one-sided, with the +1 correction of Phipson and Smyth (2010), never 0:
  ``(1 + #{null ≥ value}) / (permutations + 1)`` for a similarity,
  ``(1 + #{null ≤ value}) / (permutations + 1)`` for a distance (small is similar).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labkit_stitch.catalogue import Choice
from labkit_stitch.measures import Activations, Representation

STATISTICS = ("null_mean", "null_sd", "z", "p")


def calibrated_table(choice: Choice, xs: Sequence[Activations],
                     ys: Sequence[Activations],
                     permutations: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A measure between every pair of ``xs`` and ``ys``, with its permutation null.

    Args:
        choice: the measure and its parameters.
        xs: activations ``(n, p_i)``; ys: activations ``(n, q_j)`` of the same n examples.
        permutations: null draws (shuffles of the rows of every ``y``), ≥ 2.
        seed: of the shuffles.

    Returns:
        ``{"value", "null_mean", "null_sd", "z", "p"}``, each ``(len(xs), len(ys))``.
    """
    if permutations < 2:
        raise ValueError(f"a permutation null needs at least 2 permutations, got {permutations}")
    xs, ys = choice.prepare(xs), choice.prepare(ys)
    value = choice.table(xs, ys)
    rng = np.random.default_rng(seed)
    null = np.stack([choice.table(xs, [_rows(y, order) for y in ys])
                     for order in (rng.permutation(len(ys[0])) for _ in range(permutations))])
    mean, sd = null.mean(axis=0), null.std(axis=0, ddof=1)
    as_extreme = null <= value if choice.measure.kind == "distance" else null >= value
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (value - mean) / sd, np.nan)
    return {"value": value, "null_mean": mean, "null_sd": sd, "z": z,
            "p": (1 + as_extreme.sum(axis=0)) / (permutations + 1)}


def _rows(y: Activations, order: np.ndarray) -> Activations:
    """``y`` with its examples (rows) in ``order``."""
    return y.rows(order) if isinstance(y, Representation) else y[order]


def calibrated(choice: Choice, x: Activations, y: Activations, permutations: int,
               seed: int = 0) -> dict[str, float]:
    """One pair's value and its permutation null (see :func:`calibrated_table`):
    ``{"value", "null_mean", "null_sd", "z", "p"}``."""
    return {key: float(values[0, 0])
            for key, values in calibrated_table(choice, [x], [y], permutations, seed).items()}

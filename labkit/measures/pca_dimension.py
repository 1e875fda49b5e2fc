"""The PCA-based counts of a layer's covariance spectrum, torch-free: the intrinsic
dimensionality at ``delta`` by a counting rule (:func:`intrinsic_dimensionality`, whose
share of the width is the saturation), the folder of the stored spectra and the names
of the log columns. :mod:`labkit.measures.saturation` describes the rules; reading the
spectra back (:mod:`labkit.measures.spectra`) needs no torch, so neither do the tables
built from them (``labkit results --table layers``)."""
from __future__ import annotations

import numpy as np

from labkit.spec.saturation import IdimRule

VIEW_STATS = ("lsat", "idim")
"""The statistics recomputed from the stored spectra at any ``delta`` and rule."""
SPECTRA_DIR = "spectra"
STAT_COLUMNS = {"lsat": "saturation", "idim": "intrinsic-dimensionality",
                "det": "covariance-determinant", "trc": "covariance-trace",
                "dtrc": "diagonal-trace"}
"""Log-column names of the statistics: delve's ``STATMAP`` entries (the test suite checks
them against delve's), kept here since importing delve loads pyplot, about 1.7 s of every
training process."""


def intrinsic_dimensionality(eigenvalues: np.ndarray, delta: float,
                             rule: IdimRule = "delve") -> int:
    """Directions of a layer's output space that explain ``delta`` of its variance.

    Args:
        eigenvalues: ``(width,)`` covariance eigenvalues in decreasing order
            (:func:`labkit.measures.saturation.spectrum`); negatives count as zero.
        delta: share of the variance, in (0, 1].
        rule: ``"delve"`` or ``"reach"`` (:mod:`labkit.measures.saturation`).

    Returns:
        The count, in ``[0, width]``; 0 for a layer without variance.
    """
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    width = len(values)
    if rule == "reach" and delta >= 1.0:
        return width
    total = values.sum()
    if not total > 0:
        return 0
    below = int((np.cumsum(values) / total < delta).sum())
    return below if rule == "delve" else min(below + 1, width)


def column_name(split: str, stat: str, layer: str) -> str:
    """PHD-LAB's log column of one statistic: ``train-saturation_block1-conv1``."""
    return f"{split}-{STAT_COLUMNS[stat]}_{layer}"

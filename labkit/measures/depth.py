"""A layer's relative depth: where it lies between the first and the last measured layer
of its network, so that networks of different depth share one axis (the per-layer
tables' ``relative_depth`` column and the x axis of the tail-pattern figure)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def relative_depth(index: ArrayLike, count: int) -> np.ndarray:
    """``index / (count − 1)``: 0 for the first of ``count`` layers in network order, 1
    for the last; 0 when the network has one layer.

    Args:
        index: layer position(s) in network order, 0-based (a number or an array).
        count: how many layers the order holds.

    Returns:
        float64 array of the shape of ``index`` (a 0-d array for a number).
    """
    positions = np.asarray(index, dtype=np.float64)
    return positions / (count - 1) if count > 1 else np.zeros_like(positions)

"""PCA-projection inference (issue 4; filled in by its implementation)."""
from labkit.analyses.base import Analysis

ANALYSES: dict[str, type[Analysis]] = {}

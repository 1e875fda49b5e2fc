"""Receptive fields, latents and probes (issue 5; filled in by its implementation)."""
from labkit.analyses.base import Analysis

ANALYSES: dict[str, type[Analysis]] = {}

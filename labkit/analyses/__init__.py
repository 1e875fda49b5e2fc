"""Post-training analyses (see base.Analysis). ``ANALYSES`` maps spec names to classes.

The names below load when first asked for (PEP 562), so that a command needing one
analysis (``labkit probes`` on stored latents) imports neither the others nor the data
sets and models they build (torchvision).
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Analysis", "FinishedRun", "ANALYSES"]


def __getattr__(name: str) -> Any:
    if name in ("Analysis", "FinishedRun"):
        return getattr(importlib.import_module("labkit.analyses.base"), name)
    if name == "ANALYSES":
        modules = [importlib.import_module(f"labkit.analyses.{m}") for m in (
            "layerwise", "projection", "saturation_views", "evaluate", "intrinsic_dimension")]
        return {name: cls for module in modules for name, cls in module.ANALYSES.items()}
    raise AttributeError(f"module 'labkit.analyses' has no attribute {name!r}")

"""Post-training analyses (see base.Analysis). ``ANALYSES`` maps spec names to classes."""
from labkit.analyses import evaluate, intrinsic_dimension, layerwise, projection, saturation_views
from labkit.analyses.base import Analysis, FinishedRun

ANALYSES: dict[str, type[Analysis]] = {**layerwise.ANALYSES, **projection.ANALYSES,
                                         **saturation_views.ANALYSES, **evaluate.ANALYSES,
                                         **intrinsic_dimension.ANALYSES}

__all__ = ["Analysis", "FinishedRun", "ANALYSES"]

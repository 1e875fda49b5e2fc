"""Measures of a set of points (a layer's activations or latents) that need no network:
:mod:`~labkit.measures.intrinsic_dimension` (TwoNN, Levina–Bickel MLE). Component layer;
numpy and torch only."""

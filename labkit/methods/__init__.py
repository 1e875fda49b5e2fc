"""Training methods: the training step belongs to a method (see base.Method)."""
from labkit.methods.base import Method, RunContext, StepResult
from labkit.methods.supervised import Supervised

METHODS = {"supervised": Supervised}

__all__ = ["Method", "RunContext", "StepResult", "Supervised", "METHODS"]

"""The training engine: one run, from config to finished directory.

:func:`train` (in :mod:`labkit.engine.run`) trains a run unless its final checkpoint is
intact, then runs its analyses; :func:`labkit.engine.loop.train_run` is the training
itself, read top to bottom: build everything from the resolved config, restore the
newest intact checkpoint, then per epoch train, evaluate every eval split, log,
checkpoint. The per-epoch log rows live inside the checkpoint and the CSV is rewritten
from them, so the CSV never disagrees with the weights a resume starts from.
"""
from labkit.engine.run import run_analyses, train

__all__ = ["train", "run_analyses"]

"""Probes without latents: the probe of every layer, for several ``C``, fitted from
forward passes of the trained network, nothing written but the results (docs/probes.md).

Each pass runs the network (eval mode, no augmentation, as :func:`labkit.analyses.latents.extract`
does) over the un-augmented train split and reduces every chosen layer's output by the
downsampling mode, batch by batch; :mod:`labkit.measures.logistic_stream` fits all layers and all
``C`` together on those batches (one pass for the standardisation, one per L-BFGS
evaluation, shared by every problem) and scores each eval split in one more pass. The
objective, standardisation and stopping test are those of the extract-then-probe path,
so the accuracies compare (``tests/test_probe_stream.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from labkit.analyses import latents
from labkit.measures import logistic_stream
from labkit.measures.layers import measured_layers
from labkit.training.progress import step, track

SOLVER = "lbfgs"
"""``probe_solver`` of streamed rows: full-batch L-BFGS, one pass per evaluation."""
INPUT_CACHE_BYTES = 256 << 20
"""A split whose transformed input images take at most this many bytes is kept in
memory after its first pass, so that loading and transforming the images (most of a
pass over a small network: 80 % for digits at 8 px) happens once; larger splits are
loaded again on every pass. Inputs, not latents: a layer's activations are often much
larger than the images."""


def _inputs(dataset: Dataset, batch_size: int) -> Callable[[], Iterable[Any]]:
    """What gives the ``(images, labels)`` batches of ``dataset`` once more on each call:
    its ``DataLoader``, or the batches it gave the first time (:data:`INPUT_CACHE_BYTES`)."""
    loader = DataLoader(dataset, batch_size=batch_size)
    image = dataset[0][0]
    if len(dataset) * image.numel() * image.element_size() > INPUT_CACHE_BYTES:
        return lambda: loader
    kept: list[Any] = []

    def batches() -> Iterable[Any]:
        if not kept:
            kept.extend(loader)
        return kept
    return batches


def stream_probes(model: torch.nn.Module, splits: dict[str, Dataset], mode: latents.Mode,
                  classes: int, Cs: Sequence[float], *, max_iter: int = 1000,
                  tol: float = 1e-4, standardize: bool = True,
                  layers: Sequence[str] | None = None, batch_size: int = 512,
                  report: Callable[[str], None] | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """Fit and score the probe of every layer for every ``C`` from forward passes.

    Args:
        model: the trained network, on the device the fits run on (put in eval mode).
        splits: split → dataset of ``(image, label)``, never augmented, ``"train"``
            (fitted on) first.
        mode: downsampling of conv maps (:mod:`labkit.analyses.latents`).
        classes: number of classes.
        Cs: inverse regularisation strengths (scikit-learn's ``C``).
        max_iter, tol, standardize: as :class:`labkit.analyses.probes.ProbeParams`.
        layers: wildcards on layer names; ``None``: every Conv2d and Linear.
        batch_size: images per forward pass.
        report: receives a line about the passes when the fit ends.
        progress: show the fit as one step, and each pass's batches on a terminal
            (:mod:`labkit.training.progress`).

    Returns:
        The columns of :func:`labkit.analyses.probes.run_probes` (``latents_digest`` empty: no
        latents), a block of rows in network order per ``C``, ``fit_seconds`` the wall
        time of the whole streamed fit (shared by its rows), ``probe_solver``
        :data:`SOLVER` and ``probe_mode`` ``stream``.
    """
    inputs = {split: _inputs(dataset, batch_size) for split, dataset in splits.items()}
    count = {split: 0 for split in splits}

    def passes(split: str) -> Iterable[logistic_stream.Batch]:
        count[split] += 1
        batches = inputs[split]()
        return track(latents.stream(model, batches, mode, layers),
                     f"pass {count[split]} over {split}", unit="batch", progress=progress,
                     total=len(batches), lines=False)

    Cs = list(Cs)
    others = [split for split in splits if split != "train"]
    order = [name for name, _ in measured_layers(model, layers)]
    with step("probes", f"streamed, {len(order)} layers × {len(Cs)} C", progress=progress):
        result = logistic_stream.fit(passes, others, classes, Cs, max_iter=max_iter, tol=tol,
                                     standardize=standardize,
                                     device=next(model.parameters()).device)
    if report is not None:
        report(f"streamed probes: {len(Cs)} C × {len(result.fits) // len(Cs)} layer(s) in "
               f"{result.passes['train']} passes over train (one per evaluation, all shared), "
               f"{result.seconds:.1f} s; no latents written")
    rows = []
    for C in Cs:
        for name in (n for n in order if (n, C) in result.fits):
            fitted = result.fits[name, C]
            rows.append({"layer": name, "downsampling": str(mode),
                         "features": fitted.weight.shape[1],
                         "train_accuracy": fitted.train_accuracy,
                         **{f"{split}_accuracy": fitted.scores[split] for split in others},
                         "converged": fitted.converged, "fit_seconds": result.seconds,
                         "latents_digest": None, "probe_C": C, "probe_max_iter": max_iter,
                         "probe_tol": tol, "probe_standardize": standardize,
                         "probe_solver": SOLVER, "probe_mode": "stream"})
    return pd.DataFrame(rows)

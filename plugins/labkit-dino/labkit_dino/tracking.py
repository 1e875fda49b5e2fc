"""Opt-in trackers of a DINO run, writing tidy CSV (and ``.npy`` arrays) into the run directory.

All are off by default; the method's parameters switch them on (README, *Trackers*).

* :class:`GradientStats` (``track_grads``): per epoch and named parameter of the student
  (encoder and head), over the epoch's optimizer steps ``s = 1 … S`` that gave the
  parameter a gradient ``g_s`` (complete: accumulated, unscaled, summed over processes;
  taken *before* the engine clips it; a frozen last layer has none):
  ``grad_norm = mean_s ||g_s||``, ``grad_mean = mean_{s,i} g_si``,
  ``grad_std = sqrt(mean_{s,i} g_si² − grad_mean²)`` (pooled over steps and entries),
  ``grad_var = mean_s ||g_s − ḡ||² = mean_s ||g_s||² − ||ḡ||²`` with ``ḡ = mean_s g_s``
  (the trace of the step gradients' covariance: the gradient noise), and
  ``grad_mean_norm = ||ḡ||``. File ``dino_grad_stats.csv``.
* :func:`parameter_rows` (``track_params``): per epoch, network (student, teacher) and
  named parameter, after the epoch's last step: ``numel``, ``norm`` (L2), ``mean``,
  ``std`` (over the entries, without Bessel's correction). File ``dino_param_stats.csv``.
* :func:`network_outputs` (``save_outputs``, ``histogram_bins``): each network's
  ``embeddings`` ``(N, D)``, ``projections`` ``(N, K)`` (head outputs) and ``logits``
  ``(N, K)`` (``(projections − centre) / τ``, the loss's input, with the temperature at
  the epoch's last step) of every eval split, in eval mode and dataset order. Saved as
  ``dino_outputs/e<epoch>_<split>_<network>_<kind>.npy`` (float32) listed in
  ``dino_outputs/index.csv`` (``epoch, split, network, kind, file, rows, dim``), with the
  samples' labels in ``dino_outputs/labels.csv`` (``split, row, label``); histograms of
  the values (``histogram_bins`` equal bins from the minimum to the maximum of each
  array) in ``dino_histograms.csv`` (``epoch, split, network, kind, bin, left, right,
  count``).

Rows of an epoch are replaced when that epoch is written again (a resumed run), so the
files hold each epoch once.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.api import atomic_open, write_csv
from labkit_dino.networks import DinoNet

GRAD_STATS = "dino_grad_stats.csv"
PARAM_STATS = "dino_param_stats.csv"
HISTOGRAMS = "dino_histograms.csv"
OUTPUTS_DIR = "dino_outputs"
OUTPUT_KINDS = ("embeddings", "projections", "logits")


def replace_epoch_rows(path: Path, rows: list[dict[str, Any]], epoch: int) -> None:
    """Write ``rows`` (all of ``epoch``) into the CSV ``path``, replacing that epoch's and
    later epochs' rows (left by a run interrupted after writing them)."""
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_csv(path)
        new = pd.concat([old[old["epoch"] < epoch], new], ignore_index=True)
    write_csv(path, new)


class GradientStats:
    """Sums over an epoch's optimizer steps of each named parameter's gradient.

    Args:
        named: ``(name, parameter)`` pairs to track.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        self.named = named
        self.reset()

    def reset(self) -> None:
        """Start a new epoch."""
        self.total = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in self.named}
        # per parameter: [steps, Σ ||g_s||, Σ ||g_s||²]
        self.moments = {name: [0, 0.0, 0.0] for name, _ in self.named}

    @torch.no_grad()
    def record(self) -> None:
        """Add the gradients the parameters hold now (one optimizer step)."""
        for name, p in self.named:
            if p.grad is None:
                continue
            g = p.grad.detach().double()
            self.total[name] += g
            sq = float((g * g).sum())
            moments = self.moments[name]
            moments[0] += 1
            moments[1] += sq ** 0.5
            moments[2] += sq

    def rows(self, epoch: int) -> list[dict[str, Any]]:
        """One row per parameter with at least one gradient this epoch (module docstring)."""
        rows = []
        for name, p in self.named:
            steps, norms, squares = self.moments[name]
            if steps == 0:
                continue
            mean_grad = self.total[name] / steps
            mean = float(mean_grad.mean())
            mean_sq = squares / (steps * p.numel())
            rows.append({"epoch": epoch, "network": "student", "parameter": name,
                         "numel": p.numel(), "steps": steps, "grad_norm": norms / steps,
                         "grad_mean": mean,
                         "grad_std": max(mean_sq - mean * mean, 0.0) ** 0.5,
                         "grad_var": max(squares / steps - float((mean_grad ** 2).sum()), 0.0),
                         "grad_mean_norm": float(mean_grad.norm())})
        return rows

    def state_dict(self) -> dict[str, Any]:
        """The sums so far (a checkpoint may be taken mid-epoch): tensors and numbers."""
        return {"total": {n: t.clone() for n, t in self.total.items()},
                "moments": {n: list(m) for n, m in self.moments.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, tensor in state["total"].items():
            self.total[name].copy_(tensor)
        self.moments = {n: [int(m[0]), float(m[1]), float(m[2])]
                        for n, m in state["moments"].items()}


@torch.no_grad()
def parameter_rows(networks: dict[str, DinoNet], epoch: int) -> list[dict[str, Any]]:
    """Per network and named parameter (probes excluded): ``numel, norm, mean, std``."""
    rows = []
    for network, net in networks.items():
        for name, p in net.dino_parameters():
            x = p.detach().double()
            rows.append({"epoch": epoch, "network": network, "parameter": name,
                         "numel": p.numel(), "norm": float(x.norm()), "mean": float(x.mean()),
                         "std": float(x.std(correction=0)) if p.numel() > 1 else 0.0})
    return rows


@torch.no_grad()
def network_outputs(net: DinoNet, dataset: Dataset, batch_size: int, device: torch.device,
                    temperature: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``{kind: (N, dim) float32}`` for :data:`OUTPUT_KINDS` and the labels ``(N,)`` of
    ``dataset`` in order; ``net`` must be in eval mode. Centres are read, not moved."""
    parts: dict[str, list[torch.Tensor]] = {kind: [] for kind in OUTPUT_KINDS}
    labels = []
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        embeddings, projections = net([images.to(device)])
        parts["embeddings"].append(embeddings[0].float().cpu())
        parts["projections"].append(projections[0].float().cpu())
        parts["logits"].append(((projections[0] - net.head.center) / temperature).float().cpu())
        labels.append(torch.as_tensor(targets))
    return ({kind: torch.cat(p).numpy() for kind, p in parts.items()},
            torch.cat(labels).numpy())


def histogram_rows(values: np.ndarray, bins: int, **keys: Any) -> Iterator[dict[str, Any]]:
    """``bins`` equal-width bins from ``values.min()`` to ``values.max()``, one row each."""
    counts, edges = np.histogram(values, bins=bins)
    for i, count in enumerate(counts):
        yield {**keys, "bin": i, "left": float(edges[i]), "right": float(edges[i + 1]),
               "count": int(count)}


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` through labkit's atomic writer: the file at ``path`` is always whole."""
    with atomic_open(path, "wb") as stream:
        np.save(stream, array)

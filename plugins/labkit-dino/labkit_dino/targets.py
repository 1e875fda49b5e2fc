"""Noisy supervised targets, for comparison runs that train the student on labels.

* label noise (ratio ``r``): ``round(r · N)`` samples, chosen by a seeded permutation,
  get a label drawn uniformly from the ``C`` classes (it may equal the true one);
* logit noise (temperature ``τ``): every sample's target is a fixed Gaussian logit
  vector ``z / (sqrt(K) · τ)``, ``z ~ N(0, I_K)`` over the ``K`` outputs — its norm is
  about ``1/τ``, so a small ``τ`` gives sharp random targets.

With ``resample`` the noise is drawn anew at every access (from torch's global RNG,
which the engine checkpoints) instead of once per sample (from a generator seeded
with ``seed``). Label noise is the reference codebase's ``LabelNoiseWrapper``; logit
noise its ``LogitNoiseWrapper``, whose resampled logits lack the ``1/sqrt(K)`` factor
that its fixed ones have — here both have it.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


class NoisyTargets(Dataset):
    """``(x, label)`` items of ``base`` with noisy targets.

    Args:
        base: dataset of ``(x, int label)``.
        num_classes: ``C``, the range of random labels.
        num_outputs: ``K``, the length of a logit target.
        label_noise: ratio ``r`` in [0, 1] of samples with a random label.
        logit_temp: ``τ > 0``: targets are noise logits (float ``(K,)``), not labels;
            ``None``: labels.
        resample: draw the noise at every access.
        seed: seed of the fixed noise.
    """

    def __init__(self, base: Dataset, num_classes: int, num_outputs: int,
                 label_noise: float = 0.0, logit_temp: float | None = None,
                 resample: bool = False, seed: int = 0):
        self.base = base
        self.num_classes = num_classes
        self.num_outputs = num_outputs
        self.label_noise = label_noise
        self.logit_temp = logit_temp
        self.resample = resample
        n = len(base)
        generator = torch.Generator().manual_seed(seed)
        if logit_temp is not None:
            self.logits = torch.randn(n, num_outputs, generator=generator) / math.sqrt(num_outputs)
        # sample index -> its random label; -1: keeps its own label
        self.random_labels = torch.full((n,), -1, dtype=torch.long)
        noisy = torch.randperm(n, generator=generator)[:round(n * label_noise)]
        self.random_labels[noisy] = torch.randint(num_classes, (len(noisy),), generator=generator)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, label = self.base[i]
        if self.logit_temp is not None:
            logits = (torch.randn(self.num_outputs) / math.sqrt(self.num_outputs)
                      if self.resample else self.logits[i])
            return x, logits / self.logit_temp
        if self.resample:
            if torch.rand(()) < self.label_noise:
                label = int(torch.randint(self.num_classes, ()))
        elif self.random_labels[i] >= 0:
            label = int(self.random_labels[i])
        return x, label

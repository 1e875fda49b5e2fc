"""Student initialisation relative to the teacher (the random-teacher paper's locality study).

With ``θ_t`` a teacher parameter and ``θ_r`` the same parameter of a fresh random
initialisation (independent of the teacher's, same distribution):

* ``teacher``:      ``θ_s = θ_t``
* ``random``:       ``θ_s = θ_r``
* ``interpolated``: ``θ_s = (1 - α) θ_t + α θ_r``, divided by ``sqrt((1 - α)² + α²)``
  with the variance-preserving correction
* ``neighborhood``: ``θ_s = θ_t + ε θ_r``, divided by ``sqrt(1 + ε²)`` with the
  variance-preserving correction

For zero-mean ``θ_t``, ``θ_r`` of equal variance ``σ²`` the uncorrected mixtures have
variance ``((1 - α)² + α²) σ²`` and ``(1 + ε²) σ²``; the correction restores ``σ²``, so
the student starts at the scale its initialisation scheme intends. As in the reference
codebase it applies to every parameter (biases and normalisation weights included),
never to buffers (BatchNorm statistics, centering).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from labkit_dino.networks import DinoNet

StudentInit = Literal["teacher", "random", "interpolated", "neighborhood"]


def student_weights(teacher: torch.Tensor | None, fresh: torch.Tensor | None, mode: StudentInit,
                    alpha: float = 0.0, eps: float = 0.0,
                    variance_preserving: bool = False) -> torch.Tensor:
    """One student parameter from the teacher's and a fresh random one (same shape).

    ``fresh`` is unused (may be ``None``) for ``mode="teacher"``, ``teacher`` for
    ``mode="random"``. See the module docstring.
    """
    if mode == "teacher":
        return teacher.clone()
    if mode == "random":
        return fresh.clone()
    if mode == "interpolated":
        mixed = (1.0 - alpha) * teacher + alpha * fresh
        scale = math.sqrt((1.0 - alpha) ** 2 + alpha ** 2)
    else:
        mixed = teacher + eps * fresh
        scale = math.sqrt(1.0 + eps ** 2)
    return mixed / scale if variance_preserving else mixed


@torch.no_grad()
def initialise_student(student: DinoNet, teacher: DinoNet, fresh: DinoNet | None,
                       mode: StudentInit, alpha: float = 0.0, eps: float = 0.0,
                       variance_preserving: bool = False) -> None:
    """Overwrite the encoder and head parameters of ``student`` in place.

    ``fresh`` is the random draw, of the student's architecture (``None`` only for
    ``mode="teacher"``); the teacher must share it unless ``mode="random"``.
    """
    targets = [p for _, p in student.dino_parameters()]
    unused = [None] * len(targets)
    teacher_params = unused if mode == "random" else [p for _, p in teacher.dino_parameters()]
    fresh_params = unused if mode == "teacher" else [p for _, p in fresh.dino_parameters()]
    for s, t, r in zip(targets, teacher_params, fresh_params, strict=True):
        s.copy_(student_weights(t, r, mode, alpha, eps, variance_preserving))

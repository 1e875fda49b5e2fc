"""Contrastive representation distillation with its memory bank (CRD, Tian et al. 2020).

Both networks' features are embedded by learned linear maps and L2-normalised: v_s, v_t
``(N, d)``. Two memories of the size of the training set, M_s and M_t ``(n_data, d)``,
hold a momentum average of each training item's student and teacher embedding. For a
batch item i (its position in the training set) and K negatives j_1 … j_K, items of
other classes drawn uniformly (RepDistiller's "exact" mode):

    h_s(i, j) = exp(v_s[i]·M_t[j] / τ) / Z_s        student anchor, teacher memory
    h_t(i, j) = exp(v_t[i]·M_s[j] / τ) / Z_t        teacher anchor, student memory

Z_s, Z_t are fixed at the first batch ever (mean of the unnormalised values × n_data)
and kept in the checkpoint. With P_n = 1 / n_data the NCE loss of one side is

    L_h = −(1/N) Σ_i [ log(h(i, i) / (h(i, i) + K·P_n + ε))
                      + Σ_k log(K·P_n / (h(i, j_k) + K·P_n + ε)) ],    ε = 1e-7

and L_CRD = L_{h_s} + L_{h_t}. After the loss, the batch's rows are updated:
M[i] ← normalise(m·M[i] + (1 − m)·v[i]), m the momentum. The memories start uniform in
[−σ, σ], σ = 1/√(d/3). Checked against RepDistiller's ``crd/criterion.py``
(``CRDLoss``, ``ContrastLoss``, ``Embed``) and ``crd/memory.py`` (``ContrastMemory``).

Under ``nproc`` > 1 each process updates the memory rows of its own batches only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit.api import UserError

EPS = 1e-7


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """The NCE loss of one side (module docstring), ``scores`` ``(N, 1 + K)``: h of the
    positive in column 0, of the K negatives after it, already divided by Z."""
    noise = (scores.shape[1] - 1) / n_data  # K · P_n
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / len(scores)


class ContrastMemory(nn.Module):
    """The CRD head: embeddings, memories, normalisers, negative sampling and the loss.

    Args:
        student_dim, teacher_dim: sizes of the flattened features.
        labels: ``(n_data,)`` label of every training item, in training-set order.
        dim: d, the embedding size.
        negatives: K, negatives per positive.
        tau: τ, the temperature.
        momentum: m, the memory's momentum.

    Buffers (checkpointed with the head): ``memory_student``, ``memory_teacher``
    ``(n_data, d)``; ``normalisers`` ``(2,)`` = (Z_s, Z_t), −1 until the first batch.
    """

    def __init__(self, student_dim: int, teacher_dim: int, labels: torch.Tensor, *, dim: int,
                 negatives: int, tau: float, momentum: float):
        super().__init__()
        self.n_data, self.negatives, self.tau, self.momentum = len(labels), negatives, tau, momentum
        self.embed_student = nn.Linear(student_dim, dim)
        self.embed_teacher = nn.Linear(teacher_dim, dim)
        bound = 1.0 / math.sqrt(dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(self.n_data, dim) * 2 * bound - bound)
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        # training items sorted by class: the negatives of class c are every item outside
        # c's block, drawn as one uniform index that skips the block
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        if (counts == self.n_data).any():
            raise UserError("CRD draws its negatives from the other classes, but the training "
                            "split has only one class; use another loss")
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` training positions of other classes than each item's, uniform, with
        replacement (torch's global RNG, which the engine checkpoints)."""
        label = self.labels[index]
        start, count = self.class_start[label, None], self.class_count[label, None]
        draw = torch.rand(len(index), self.negatives, device=index.device)
        slot = (draw * (self.n_data - count)).long()
        return self.order[torch.where(slot < start, slot, slot + count)]

    def embed(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised embeddings ``(N, d)`` of the flattened features."""
        return (F.normalize(self.embed_student(student.flatten(1)), dim=1),
                F.normalize(self.embed_teacher(teacher.flatten(1)), dim=1))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, index: torch.Tensor,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        """L_CRD of the batch, then the memory update (in training mode only).

        Args:
            student, teacher: ``(N, ...)`` features of the batch.
            index: ``(N,)`` positions of the batch's items in the training set.
            negatives: ``(N, K)`` positions of the negatives; ``None``: drawn by
                :meth:`draw_negatives`.
        """
        v_s, v_t = self.embed(student, teacher)
        if negatives is None:
            negatives = self.draw_negatives(index)
        rows = torch.cat([index[:, None], negatives], dim=1)  # positive first
        scores_s = torch.exp(torch.einsum("nkd,nd->nk", self.memory_teacher[rows], v_s) / self.tau)
        scores_t = torch.exp(torch.einsum("nkd,nd->nk", self.memory_student[rows], v_t) / self.tau)
        if self.normalisers[0] < 0:
            self.normalisers.copy_(torch.stack([scores_s.mean(), scores_t.mean()]).detach()
                                   * self.n_data)
        loss = (nce_loss(scores_s / self.normalisers[0], self.n_data)
                + nce_loss(scores_t / self.normalisers[1], self.n_data))
        if self.training:
            with torch.no_grad():
                for memory, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
                    memory[index] = F.normalize(self.momentum * memory[index]
                                                + (1 - self.momentum) * v, dim=1)
        return loss

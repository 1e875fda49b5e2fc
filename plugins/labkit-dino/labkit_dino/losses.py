"""The multi-crop loss between student predictions and teacher (or label) targets.

Shapes: ``V_s`` student views and ``V_t`` target views of ``N`` samples over ``K``
outputs. A pair ``(i, j)`` compares target view ``i`` with student view ``j`` (indices
into the crop list); which pairs count is the *pairing*:

* ``all``: every target view with every student view;
* ``same``: only a view with itself;
* ``opposite``: only different views (DINO's choice).

With ``p_t = softmax(target logits)`` and ``log p_s = log_softmax(student logits)``:

* ``CE``:     mean over pairs of mean over samples of ``-Σ_k p_t log p_s``
* ``KL``:     ``CE`` minus the target entropy ``H(p_t)`` of the pair (so KL(p_t ‖ p_s))
* ``H_pred``: mean over student views and samples of ``H(p_s)``
* ``MSE``:    mean over pairs and samples of ``mean_k (student logit - target logit)²``

This is the reference codebase's ``multicrop_loss``. Every value is returned, the chosen
one is minimised, the others are logged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Pairing = Literal["all", "same", "opposite"]
LossName = Literal["CE", "KL", "H_pred", "MSE"]


def view_pairs(target_views: list[int], student_views: list[int],
               pairing: Pairing) -> list[tuple[int, int]]:
    """Positions ``(i, j)`` into ``target_views`` and ``student_views`` to compare.

    ``target_views`` / ``student_views``: crop indices seen by each side.
    """
    pairs = []
    for i, crop_t in enumerate(target_views):
        for j, crop_s in enumerate(student_views):
            if pairing == "all" or (pairing == "same") == (crop_t == crop_s):
                pairs.append((i, j))
    return pairs


@dataclass
class Targets:
    """What the student is fitted to, per target view.

    Attributes:
        values: ``(V_t, N, K)`` target logits (teacher logits, noise logits) or one-hot
            labels; compared to the student's logits by ``MSE``.
        probs: ``(V_t, N, K)`` target distribution for ``CE``/``KL``.
    """

    values: torch.Tensor
    probs: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "Targets":
        return cls(logits, F.softmax(logits, dim=-1))

    @classmethod
    def from_labels(cls, labels: torch.Tensor, num_outputs: int, views: int) -> "Targets":
        """One-hot targets of ``labels`` ``(N,)`` over ``num_outputs``, repeated for ``views``."""
        one_hot = F.one_hot(labels, num_outputs).float().unsqueeze(0).expand(views, -1, -1)
        return cls(one_hot, one_hot)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``H(p) = -Σ_k p log p`` over the last dimension (``0 log 0 = 0``)."""
    return torch.special.entr(probs).sum(dim=-1)


def multicrop_loss(student_logits: torch.Tensor, targets: Targets,
                   pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Every loss of the module docstring, as scalar tensors keyed by name.

    Args:
        student_logits: ``(V_s, N, K)``, already centred and divided by the temperature.
        targets: the target views.
        pairs: from :func:`view_pairs`; must not be empty.
    """
    log_preds = F.log_softmax(student_logits, dim=-1)
    target_entropy = entropy(targets.probs)                         # (V_t, N)
    ce, kl, mse = [], [], []
    for i, j in pairs:
        pair_ce = -(targets.probs[i] * log_preds[j]).sum(dim=-1)    # (N,)
        ce.append(pair_ce.mean())
        kl.append((pair_ce - target_entropy[i]).mean())
        mse.append((student_logits[j] - targets.values[i]).square().mean())
    return {
        "CE": torch.stack(ce).mean(),
        "KL": torch.stack(kl).mean(),
        "H_pred": entropy(log_preds.exp()).mean(),
        "MSE": torch.stack(mse).mean(),
        "H_target": target_entropy.mean(),
    }

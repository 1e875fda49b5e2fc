"""Supervised training with cross-entropy on the labels."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from labkit.methods.base import Method, StepResult


class Supervised(Method):
    """Minimise the cross-entropy between the network's outputs and the labels.

    The targets are labels ``(N,)`` or, under the spec's ``batch_augment`` (mixup /
    cutmix), probability rows ``(N, C)``: the cross-entropy with probabilities,
    −Σ_c ỹ_c log softmax(z)_c, which for a mixed pair equals
    λ·CE(z, y_i) + (1 − λ)·CE(z, y_j). Label smoothing applies in both cases
    (ỹ → (1 − ε)·ỹ + ε/C).
    """

    accepts_soft_targets = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
                                       description="label smoothing of the cross-entropy")

    def training_step(self, batch: Any) -> StepResult:
        images, targets = batch
        logits = self.context.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.params.label_smoothing)
        return StepResult(loss=loss, batch_size=len(targets), logits=logits, targets=targets)

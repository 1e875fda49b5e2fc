"""Evaluation passes: a model over one split, mean loss and metrics."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, metrics: dict[str, Any],
             device: torch.device, soft_targets: torch.Tensor | None = None) -> dict[str, float]:
    """Mean cross-entropy per sample and metrics of ``model`` over one split.

    Args:
        soft_targets: optional ``(images, classes)`` label probabilities (CIFAR-10H style),
            row ``i`` for the ``i``-th image the loader yields, columns in the model's
            class order. Adds, as means over the images, ``soft-cross-entropy``
            (−Σ p log softmax(z)), ``soft-accuracy`` (the probability the labels put on
            the predicted class) and ``soft-top1-agreement`` (the predicted class is one
            the labels give their highest probability; ties all agree), computed in
            float64.

    Raises:
        ValueError: ``soft_targets`` has another number of rows than the loader images.
    """
    loss_sum, seen = 0.0, 0
    soft = torch.zeros(3, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        if soft_targets is not None:
            p = soft_targets[seen:seen + len(targets)].to(device, torch.float64)
            soft += soft_sums(logits, p)
        seen += len(targets)
        for metric in metrics.values():
            metric.update(logits, targets)
    stats = {"loss": loss_sum / seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    if soft_targets is not None:
        if len(soft_targets) != seen:
            raise ValueError(f"{len(soft_targets)} rows of soft targets for {seen} images")
        names = ("soft-cross-entropy", "soft-accuracy", "soft-top1-agreement")
        stats.update(zip(names, (soft / seen).tolist()))
    return stats


def soft_sums(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Sums over a batch of −Σ p log softmax(z), p[predicted] and top-1 agreement."""
    log_q = F.log_softmax(logits.double(), dim=1)
    predicted = logits.argmax(dim=1, keepdim=True)
    on_predicted = p.gather(1, predicted).squeeze(1)
    # classes without probability add nothing, even where the model gives them none
    cross = torch.where(p > 0, p * log_q, torch.zeros_like(p))
    return torch.stack([-cross.sum(), on_predicted.sum(),
                        (on_predicted >= p.max(dim=1).values).double().sum()])

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
             device: torch.device) -> dict[str, float]:
    """Mean cross-entropy per sample and metrics of ``model`` over one split."""
    loss_sum, seen = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        seen += len(targets)
        for metric in metrics.values():
            metric.update(logits, targets)
    stats = {"loss": loss_sum / seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    return stats

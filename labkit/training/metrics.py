"""Built-in metrics, accumulated over a whole pass (never averaged over batches).

A metric is an object with ``update(logits, targets)`` and ``compute() -> float``;
factories take ``num_classes``. Classification metrics share one confusion matrix
implementation so accuracy, balanced accuracy and Matthews correlation agree exactly.
The loss is not a metric: the engine logs the mean loss per sample itself.

A metric may also offer ``state_dict() -> dict[str, Tensor]`` and
``load_state_dict(state)``: its accumulated counts, such that the element-wise sum of
two passes' states is the state of both passes joined. The engine needs them to
checkpoint mid-epoch (``checkpoint_steps``) and to sum a pass over several processes
(``nproc``); every built-in metric has them.
"""
from __future__ import annotations

from typing import Any

import torch


class ConfusionMetric:
    """Base for metrics computed from the confusion matrix of top-1 predictions.

    Per batch only the predictions are kept; the C × C matrix (rows: true class) is built
    once per pass, in :attr:`matrix`, because per-batch bookkeeping is what a training
    loop over small models pays for.

    Args:
        num_classes: number of classes C.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.predictions: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` (N, C), ``targets`` (N,) integer classes."""
        self.predictions.append(logits.argmax(dim=1))
        self.targets.append(targets)

    @property
    def matrix(self) -> torch.Tensor:
        """The float64 confusion matrix of everything added so far."""
        c = self.num_classes
        return self._counts().reshape(c, c).double()

    def _counts(self) -> torch.Tensor:
        c = self.num_classes
        if not self.targets:
            return self.counts.clone()
        idx = torch.cat(self.targets).cpu().long() * c + torch.cat(self.predictions).cpu()
        return self.counts + torch.bincount(idx, minlength=c * c)

    def state_dict(self) -> dict[str, Any]:
        """The confusion counts so far (flattened C × C, int64)."""
        return {"counts": self._counts()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s counts."""
        self.counts = state["counts"].clone().long()
        self.predictions, self.targets = [], []

    def compute(self) -> float:
        raise NotImplementedError


class Accuracy(ConfusionMetric):
    """Share of samples whose top-1 prediction is the label."""

    def compute(self) -> float:
        m = self.matrix
        total = m.sum()
        return float(m.trace() / total) if total else float("nan")


class BalancedAccuracy(ConfusionMetric):
    """Mean per-class recall over the classes present in the pass."""

    def compute(self) -> float:
        m = self.matrix
        support = m.sum(dim=1)
        present = support > 0
        if not present.any():
            return float("nan")
        return float((m.diag()[present] / support[present]).mean())


class MCC(ConfusionMetric):
    """Multi-class Matthews correlation coefficient (Gorodkin's R_K statistic)."""

    def compute(self) -> float:
        m = self.matrix
        t, p = m.sum(dim=1), m.sum(dim=0)
        n, correct = m.sum(), m.trace()
        if n == 0:
            return float("nan")  # no labelled sample in the pass (e.g. a label-free method)
        denom = torch.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
        return float((correct * n - (t * p).sum()) / denom) if denom > 0 else 0.0


class TopKAccuracy:
    """Share of samples whose label is among the ``k`` highest logits."""

    def __init__(self, num_classes: int, k: int = 5):
        self.k = min(k, num_classes)
        self.hits = 0
        self.count = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        top = logits.topk(self.k, dim=1).indices
        self.hits += int((top == targets.view(-1, 1)).any(dim=1).sum())
        self.count += int(targets.numel())

    def compute(self) -> float:
        return self.hits / self.count if self.count else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """Hits and samples so far."""
        return {"hits": torch.tensor(self.hits), "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s counts."""
        self.hits, self.count = int(state["hits"]), int(state["count"])


def top5_accuracy(num_classes: int) -> TopKAccuracy:
    """Top-5 accuracy (top-C when there are fewer than five classes)."""
    return TopKAccuracy(num_classes, 5)


METRICS = {"accuracy": Accuracy, "top5_accuracy": top5_accuracy, "mcc": MCC,
           "balanced_accuracy": BalancedAccuracy}

"""The method interface: everything the engine asks of a training method.

The engine owns the loop (epochs, batches, optimizer step, evaluation, checkpoints,
logs); the method owns what happens inside a step and which networks exist. A plugin
adds a method by subclassing :class:`Method` and registering the class:

    registries.methods.register("my_method", MyMethod)

What a method can do without touching the engine:

* extra networks (a frozen teacher loaded from another run): build them in
  ``__init__`` and return them from :meth:`Method.modules` so they move with the
  engine's train/eval switches and are checkpointed;
* frozen sub-networks with trainable parts: return only the trainable parameters from
  :meth:`Method.parameters`, and keep frozen modules in eval mode by overriding
  :meth:`Method.train`;
* multi-view batches without labels: wrap the training set in
  :meth:`Method.train_dataset` and return ``logits=None`` from the step;
* per-step and per-epoch work (an EMA update): :meth:`Method.after_step`,
  :meth:`Method.end_epoch` (which may return extra log columns);
* state that must survive a resume (a centering vector, a step counter):
  :meth:`Method.state_dict` / :meth:`Method.load_state_dict` (tensors and primitives).
* mixed batches (the spec's ``batch_augment``: mixup / cutmix): set
  :attr:`Method.accepts_soft_targets` and read ``(images, targets)`` with ``targets``
  either labels ``(N,)`` or probability rows ``(N, C)``.

See docs/methods.md for a worked example.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset

from labkit.data.bundle import DataBundle


@dataclass
class RunContext:
    """What the engine hands a method.

    Attributes:
        config: the run's resolved config (JSON-ready dict).
        model: the network built from ``config["model"]``, already on ``device``.
        data: the run's datasets.
        device: torch device of the run.
        run_dir: the run's directory (for files the method writes).
        registries: the registries, to build further components.
        run_id: the run's ``--run-id`` (runs a method trains on demand, such as a
            teacher, belong under the same one by default).
        progress: whether progress is shown (:mod:`labkit.training.progress`).
        steps_per_epoch: optimizer steps in one epoch (batches / ``accumulate``); set by
            the engine once the training loader exists, before the first step.
        total_steps: optimizer steps of the whole run (``epochs × steps_per_epoch``, or
            the spec's ``steps`` budget when smaller).
        step: optimizer steps taken so far (0 before the first one); the engine counts
            it and restores it on resume, so per-step schedules
            (:func:`labkit.training.schedules.value_at`) read it rather than keep their own.
        rank: this process's rank in a run on several processes (``nproc``); only rank 0
            should write files. 0 in a one-process run.
    """

    config: dict[str, Any]
    model: nn.Module
    data: DataBundle
    device: torch.device
    run_dir: Path
    registries: Any
    run_id: str = ""
    progress: bool = False
    steps_per_epoch: int = 0
    total_steps: int = 0
    step: int = 0
    rank: int = 0


@dataclass
class StepResult:
    """What one training step returns.

    Attributes:
        loss: scalar tensor, the batch's mean loss; the engine back-propagates it.
        batch_size: number of samples in the batch (weights the logged mean loss).
        logits: ``(N, C)`` outputs for the train metrics, or ``None`` (no labels).
        targets: ``(N,)`` labels matching ``logits``, or the batch's soft targets
            ``(N, C)`` (the train metrics then score their argmax), or ``None``.
    """

    loss: torch.Tensor
    batch_size: int
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


class Method:
    """Base class of training methods; subclasses override what they need.

    Args:
        context: the run context.
        params: an instance of the class's ``Params`` model (spec parameters).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    #: Whether :meth:`training_step` takes batches whose targets are soft, ``(N, C)``
    #: probability rows (what the spec's ``batch_augment``, mixup / cutmix, produces).
    #: A method leaving it false is refused, before training, in a run with
    #: ``batch_augment``.
    accepts_soft_targets: bool = False

    def __init__(self, context: RunContext, params: BaseModel):
        self.context = context
        self.params = params

    def modules(self) -> dict[str, nn.Module]:
        """Named networks whose weights the checkpoint holds (``"model"`` first)."""
        return {"model": self.context.model}

    def parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates."""
        return self.context.model.parameters()

    def train(self, mode: bool = True) -> None:
        """Switch every network to training (``mode=True``) or evaluation mode."""
        for module in self.modules().values():
            module.train(mode)

    def train_dataset(self, dataset: Dataset) -> Dataset:
        """The dataset the training loader iterates (wrap it for multi-view batches)."""
        return dataset

    def training_step(self, batch: Any) -> StepResult:
        """Compute the loss of one batch (already on the device)."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step")

    def before_optimizer_step(self) -> None:
        """Called when a step's gradients are complete (accumulated, unscaled under
        16-mixed) and before the engine clips them and steps the optimizer: drop or edit
        gradients here (DINO's frozen last layer sets them to ``None``)."""

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. an EMA teacher update). ``context.step``
        is still the 0-based index of the step just taken; the engine counts it up
        right after this call."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after each epoch's training pass; returns extra log columns (declare
        them in :meth:`log_columns`)."""
        return {}

    @classmethod
    def log_columns(cls, params: dict[str, Any], splits: list[str]) -> list[str] | None:
        """The log.csv columns :meth:`end_epoch` adds, as shell-style patterns, known
        before training (``labkit plan`` checks a ``best_metric`` against them).

        Args:
            params: the method's resolved spec parameters.
            splits: the run's eval split names (``"*"`` where the data set does not
                tell them before it is built).

        Returns:
            the patterns; ``None``: the method cannot tell (any column name is then
            taken as a ``best_metric``). Default: none when :meth:`end_epoch` is not
            overridden, ``None`` when it is.
        """
        return [] if cls.end_epoch is Method.end_epoch else None

    def eval_model(self) -> nn.Module:
        """The network whose logits the eval splits are scored on."""
        return self.context.model

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the networks' weights (tensors and primitives)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

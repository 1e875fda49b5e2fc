"""One pass over the training set (:func:`train_one_epoch`) and where an epoch in
progress stands (:class:`EpochPosition`, what a mid-epoch checkpoint stores)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from labkit.core.errors import RunFailed
from labkit.data.mixing import hard_labels
from labkit.methods.base import Method
from labkit.training import distributed
from labkit.training.evaluation import to_device
from labkit.training.progress import track
from labkit.training.stepper import Stepper


@dataclass
class EpochPosition:
    """Where the epoch in progress stands; a mid-epoch checkpoint stores it.

    Attributes:
        batches: training batches of the epoch done so far.
        loss_sum: sum over the samples seen of their loss; seen: samples seen.
        seconds: training time of the epoch before this process took over.
    """

    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0


def channels_last(batch: Any) -> Any:
    """``batch`` with every 4-d tensor in channels_last memory layout."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: channels_last(v) for k, v in batch.items()}
    return batch


def train_one_epoch(method: Method, loader: DataLoader, stepper: Stepper,
                    metrics: dict[str, Any], device: torch.device, epoch: int,
                    progress: bool, position: EpochPosition | None = None,
                    batches: int | None = None, on_step: Callable[[EpochPosition], None] | None = None,
                    layout: Callable[[Any], Any] | None = None,
                    on_start: Callable[[], None] | None = None,
                    augment: Callable[[Any], Any] | None = None) -> dict[str, float]:
    """One pass over the training set; returns mean loss per sample and metrics.

    Args:
        position: where a resumed epoch stands (its loader already skips the batches
            done); ``None``: from the start.
        batches: batches of the whole epoch (the step boundaries count from its start);
            default ``len(loader)``.
        on_step: called with the position after every optimizer step that neither ends
            the epoch nor the run's step budget (mid-epoch checkpoints).
        layout: applied to every batch on the device (channels_last).
        on_start: called once the loader's iterator exists (a resume restores the RNG
            state there, as creating the iterator draws from it).
        augment: applied to every batch on the device before the step (the spec's
            ``batch_augment``: mixup / cutmix, drawing from torch's global RNG).

    The epoch ends early when the run's step budget (``context.total_steps``) is spent.
    """
    method.train(True)
    position = position or EpochPosition()
    batches = batches or len(loader)
    clock = stepper.clock
    iterator = iter(loader)
    if on_start is not None:
        on_start()
    for batch in track(iterator, "train", unit="batch", progress=progress, total=batches,
                       done=position.batches, lines=False):
        batch = to_device(batch, device)
        if augment is not None:
            batch = augment(batch)
        with stepper.autocast():
            result = method.training_step(layout(batch) if layout else batch)
        loss = result.loss.item()
        if not math.isfinite(loss) and not stepper.distributed:  # else: checked summed
            raise RunFailed(f"non-finite training loss ({loss}) at epoch {epoch}, "
                            f"step {position.batches + 1}; lower the learning rate or check "
                            f"the data")
        stepper.backward(result.loss, result.batch_size)
        position.batches += 1
        position.loss_sum += loss * result.batch_size
        position.seen += result.batch_size
        if result.logits is not None:
            for metric in metrics.values():
                metric.update(result.logits.detach().float(), hard_labels(result.targets))
        if position.batches % stepper.accumulate == 0 or position.batches == batches:
            stepper.step()
            if clock.total_steps and clock.step >= clock.total_steps:
                break
            if on_step is not None and position.batches < batches:
                on_step(position)
    totals = reduce_pass(position, metrics)
    stats = {"loss": totals.loss_sum / totals.seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    return stats


def reduce_pass(position: EpochPosition, metrics: dict[str, Any]) -> EpochPosition:
    """The pass's loss sum and sample count over every process, and each metric's counts
    summed in place (unchanged in a one-process run)."""
    if not distributed.active():
        return position
    states = {name: m.state_dict() for name, m in metrics.items()}
    totals = torch.tensor([position.loss_sum, float(position.seen)], dtype=torch.float64)
    distributed.all_reduce_sum([totals, *(t for s in states.values() for t in s.values())])
    for name, metric in metrics.items():
        metric.load_state_dict(states[name])
    return EpochPosition(position.batches, float(totals[0]), int(totals[1]), position.seconds)


def loader_options(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader settings of the run's device: on CUDA, pinned host memory (batches are
    copied with ``non_blocking``) and, with workers, workers kept between epochs (their
    base seed from a private generator: torch's own stays untouched, and the seeded
    samples make the workers' seeds irrelevant); elsewhere torch's defaults."""
    if device.type != "cuda":
        return {"num_workers": workers}
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": True}
    if workers:
        options.update(persistent_workers=True, generator=torch.Generator().manual_seed(0))
    return options



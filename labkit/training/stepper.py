"""How batch losses become optimizer steps: accumulation, clipping, precision, the
scheduled weight decay and the run's step clock (:class:`Stepper`)."""
from __future__ import annotations

import math
from typing import Any

import torch

from labkit.core.errors import RunFailed
from labkit.methods.base import Method, RunContext
from labkit.training import distributed
from labkit.training.schedules import value_at


def scaled_lr(config: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's spec with ``lr`` scaled by ``batch_size × accumulate / 256`` when
    the config's ``lr_scaling`` is ``linear`` (the rule of Goyal et al. that DINO and timm
    recipes use); unchanged otherwise."""
    spec = dict(config["optimizer"])
    if config["lr_scaling"] == "linear" and "lr" in spec:
        spec["lr"] = spec["lr"] * config["batch_size"] * config["accumulate"] / 256
    return spec


class Stepper:
    """How batch losses become optimizer steps: accumulation, clipping, precision, and the
    run's step clock.

    Args:
        optimizer: the optimizer; parameters: what it optimises (for clipping).
        accumulate: micro-batches per step. Their gradients are summed weighted by
            their sizes and divided by the step's sample count, so a step equals one on
            the micro-batches joined (up to float rounding) when the model has no
            batch statistics.
        clip_grad_norm: clip the gradients' global L2 norm to this; ``None``: off.
        precision: ``"32"``, ``"bf16"`` or ``"16-mixed"`` (autocast of the forward pass;
            16-mixed with a dynamic loss scaler, whose state the checkpoint keeps).
        device: where the run computes.
        method: the training method, whose ``before_optimizer_step`` and ``after_step``
            hooks frame every step; its ``context.step`` is the clock this counts.
        weight_decay: a number or :class:`~labkit.training.schedules.Schedule` set before each
            step as the weight decay of every parameter group built with a non-zero one
            (a group built with 0, such as DINO's biases and norms, keeps 0; when no
            group has any, of all groups); ``None``: the optimizer's.

    One step: average the accumulated gradients, unscale them (16-mixed),
    ``method.before_optimizer_step()``, clip, set the scheduled weight decay, step the
    optimizer, step a per-step schedule, ``method.after_step()``, count the step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter],
                 accumulate: int, clip_grad_norm: float | None, precision: str,
                 device: torch.device, method: Method, weight_decay: Any = None):
        self.optimizer, self.parameters = optimizer, parameters
        self.accumulate, self.clip = accumulate, clip_grad_norm
        self.device, self.method, self.weight_decay = device, method, weight_decay
        self.dtype = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        self.samples = 0  # of the step being accumulated
        # the groups a weight-decay schedule sets: those built with decay (a method's
        # no-decay group of biases and norms keeps 0), or all when none has any
        self.decayed = ([g for g in optimizer.param_groups if g.get("weight_decay")]
                        or optimizer.param_groups)
        self.scheduler: Any = None  # a learning-rate schedule stepped after every step
        # several processes: each sums its shard's losses; the sums are reduced per step
        self.distributed = distributed.world_size() > 1
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    @property
    def clock(self) -> RunContext:
        """The run context whose ``step``, ``steps_per_epoch``, ``total_steps`` this keeps."""
        return self.method.context

    def autocast(self) -> Any:
        """Context of a forward pass in the run's precision."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor, batch_size: int) -> None:
        """Back-propagate one micro-batch's mean loss."""
        if self.accumulate > 1 or self.distributed:  # summed now; divided by the step's count
            loss = loss * batch_size
        self.scaler.scale(loss).backward()
        self.samples += batch_size
        if self.distributed:
            self.loss_sum += loss.detach().double().cpu()

    def step(self) -> None:
        """The optimizer step of the accumulated micro-batches (of every process).

        Raises:
            RunFailed: the step's loss, summed over the processes, is not finite (all
                processes raise together).
        """
        samples = self.samples
        if self.distributed:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            totals = torch.tensor([float(samples), float(self.loss_sum)], dtype=torch.float64)
            distributed.all_reduce_sum([*grads, totals])
            samples, loss = int(totals[0]), float(totals[1])
            self.loss_sum.zero_()
            if not math.isfinite(loss):
                raise RunFailed(f"non-finite training loss ({loss / samples}) at optimizer step "
                                f"{self.clock.step + 1}; lower the learning rate or check the data")
        if self.accumulate > 1 or self.distributed:
            for p in self.parameters:
                if p.grad is not None:
                    p.grad.div_(samples)
        self.scaler.unscale_(self.optimizer)  # a no-op unless 16-mixed
        self.method.before_optimizer_step()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        if self.weight_decay is not None:
            clock = self.clock
            decay = value_at(self.weight_decay, clock.step, clock.steps_per_epoch,
                             clock.total_steps)
            for group in self.decayed:
                group["weight_decay"] = decay
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.samples = 0
        if self.scheduler is not None:
            self.scheduler.step()
        self.method.after_step()
        self.clock.step += 1



"""Built-in optimizers and learning-rate schedules.

Optimizer factories take ``params`` (what ``method.parameters()`` returns) plus spec
parameters. Schedule factories take the optimizer, ``epochs`` — the run's length in
schedule steps — and ``steps_per_epoch``: ``None`` when labkit steps the schedule once
per epoch (``scheduler_interval: "epoch"``, the default; ``epochs`` is then the number
of epochs), or the optimizer steps per epoch when it steps after every optimizer step
(``epochs`` is then the run's optimizer steps). Parameters counted in epochs
(``warmup_epochs``, ``step_size``, ``milestones``) mean epochs either way: per step they
are multiplied by ``steps_per_epoch``. Every schedule but PHD-LAB's presets accepts a
linear warm-up from ``lr * warmup_start`` to ``lr`` before the schedule proper starts,
of ``warmup_epochs`` epochs plus ``warmup_steps`` optimizer steps (steps need the
per-step interval). A third-party schedule factory without a ``steps_per_epoch``
parameter is given the run's length in schedule steps as ``epochs`` and nothing else.

PHD-LAB's optimizer presets are the schedules ``lrs`` (StepLR, 10 epochs, γ=0.1) and
``lrs60`` (StepLR, 20 epochs, γ=0.1), used with the ``sgd`` optimizer, whose defaults
(lr 0.1, momentum 0.9, weight decay 5e-4) are PHD-LAB's.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim import lr_scheduler as sched

from labkit.core.errors import UserError


def _check_steps(step_size: int, gamma: float) -> None:
    if step_size < 1 or not gamma > 0:
        raise UserError(f"scheduler: step_size {step_size} and gamma {gamma} must be at least "
                        f"1 and above 0")


def sgd(params: Iterable, lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 5e-4, nesterov: bool = False) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (optionally Nesterov) momentum.

    Args:
        lr: learning rate (PHD-LAB's default 0.1).
        momentum: momentum factor.
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum.
    """
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def adam(params: Iterable, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (L2 penalty added to the gradient).

    Args:
        lr: learning rate.
        beta1, beta2: decay rates of the first and second moment estimates.
        weight_decay: L2 penalty added to the gradient.
    """
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


def adamw(params: Iterable, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
          weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay).

    Args:
        lr: learning rate.
        beta1, beta2: decay rates of the first and second moment estimates.
        weight_decay: decoupled weight decay per step (times ``lr``).
    """
    return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


def radam(params: Iterable, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Rectified Adam.

    Args:
        lr: learning rate.
        beta1, beta2: decay rates of the first and second moment estimates.
        weight_decay: L2 penalty added to the gradient.
    """
    return torch.optim.RAdam(params, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


OPTIMIZERS = {"sgd": sgd, "adam": adam, "adamw": adamw, "radam": radam}


def _per_epoch(steps_per_epoch: int | None) -> int:
    """Schedule steps per epoch: 1 when stepped per epoch."""
    return steps_per_epoch or 1


def _with_warmup(optimizer: torch.optim.Optimizer, main: sched.LRScheduler | None,
                 warmup: int, warmup_start: float) -> sched.LRScheduler:
    if not 0 < warmup_start <= 1:
        raise UserError(f"scheduler.warmup_start is {warmup_start}; give the share of the "
                        f"learning rate to start the warm-up at, in (0, 1]")
    main = main or sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=warmup_start, end_factor=1.0,
                          total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def warmup_length(warmup_epochs: int, warmup_steps: int, steps_per_epoch: int | None) -> int:
    """The warm-up's length in schedule steps: epochs times steps per epoch, plus steps.

    Raises:
        UserError: a negative length, or ``warmup_steps`` with a per-epoch schedule.
    """
    if warmup_epochs < 0 or warmup_steps < 0:
        raise UserError(f"scheduler.warmup_epochs is {warmup_epochs} and warmup_steps "
                        f"{warmup_steps}; give 0 (no warm-up) or a positive number of each")
    if warmup_steps and steps_per_epoch is None:
        raise UserError("scheduler.warmup_steps counts optimizer steps, but the schedule is "
                        "stepped once per epoch; add \"scheduler_interval\": \"step\" to the "
                        "spec or give warmup_epochs instead")
    return warmup_epochs * _per_epoch(steps_per_epoch) + warmup_steps


def step(optimizer: torch.optim.Optimizer, epochs: int, step_size: int = 30,
         gamma: float = 0.1, warmup_epochs: int = 0, warmup_start: float = 0.1,
         warmup_steps: int = 0, steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    Args:
        step_size: epochs between decays.
        gamma: factor of each decay.
        warmup_epochs: epochs of linear warm-up from ``lr * warmup_start`` to ``lr``
            before the schedule proper starts (added to ``warmup_steps``).
        warmup_start: share of the learning rate the warm-up starts at, in (0, 1].
        warmup_steps: optimizer steps of warm-up (needs ``scheduler_interval: "step"``).
    """
    _check_steps(step_size, gamma)
    per = _per_epoch(steps_per_epoch)
    return _with_warmup(optimizer, sched.StepLR(optimizer, step_size * per, gamma),
                        warmup_length(warmup_epochs, warmup_steps, steps_per_epoch), warmup_start)


def multistep(optimizer: torch.optim.Optimizer, epochs: int,
              milestones: list[int] = [150, 250], gamma: float = 0.1,  # noqa: B006 (copied by pydantic)
              warmup_epochs: int = 0, warmup_start: float = 0.1, warmup_steps: int = 0,
              steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """Multiply the learning rate by ``gamma`` at each epoch in ``milestones``.

    Args:
        milestones: epochs after which the rate decays.
        gamma: factor of each decay.
        warmup_epochs: epochs of linear warm-up from ``lr * warmup_start`` to ``lr``
            before the schedule proper starts (added to ``warmup_steps``).
        warmup_start: share of the learning rate the warm-up starts at, in (0, 1].
        warmup_steps: optimizer steps of warm-up (needs ``scheduler_interval: "step"``).
    """
    per = _per_epoch(steps_per_epoch)
    return _with_warmup(optimizer, sched.MultiStepLR(optimizer, [m * per for m in milestones], gamma),
                        warmup_length(warmup_epochs, warmup_steps, steps_per_epoch), warmup_start)


def cosine(optimizer: torch.optim.Optimizer, epochs: int, eta_min: float = 0.0,
           warmup_epochs: int = 0, warmup_start: float = 0.1, warmup_steps: int = 0,
           steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """Cosine decay from the base rate to ``eta_min`` over the run after the warm-up.

    Args:
        eta_min: learning rate at the end of the run.
        warmup_epochs: epochs of linear warm-up from ``lr * warmup_start`` to ``lr``
            before the schedule proper starts (added to ``warmup_steps``).
        warmup_start: share of the learning rate the warm-up starts at, in (0, 1].
        warmup_steps: optimizer steps of warm-up (needs ``scheduler_interval: "step"``).
    """
    warm = warmup_length(warmup_epochs, warmup_steps, steps_per_epoch)
    main = sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warm), eta_min=eta_min)
    return _with_warmup(optimizer, main, warm, warmup_start)


def warmup(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 5,
           warmup_start: float = 0.1, warmup_steps: int = 0,
           steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """Linear warm-up over ``warmup_epochs`` epochs plus ``warmup_steps`` steps, constant
    afterwards.

    Args:
        warmup_epochs: epochs of linear warm-up from ``lr * warmup_start`` to ``lr``
            before the schedule proper starts (added to ``warmup_steps``).
        warmup_start: share of the learning rate the warm-up starts at, in (0, 1].
        warmup_steps: optimizer steps of warm-up (needs ``scheduler_interval: "step"``).
    """
    return _with_warmup(optimizer, None, warmup_length(warmup_epochs, warmup_steps, steps_per_epoch),
                        warmup_start)


def lrs(optimizer: torch.optim.Optimizer, epochs: int, step_size: int = 10,
        gamma: float = 0.1, steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """PHD-LAB's ``lrs`` preset: StepLR every 10 epochs.

    Args:
        step_size: epochs between decays.
        gamma: factor of each decay.
    """
    _check_steps(step_size, gamma)
    return sched.StepLR(optimizer, step_size * _per_epoch(steps_per_epoch), gamma)


def lrs60(optimizer: torch.optim.Optimizer, epochs: int, step_size: int = 20,
          gamma: float = 0.1, steps_per_epoch: int | None = None) -> sched.LRScheduler:
    """PHD-LAB's ``lrs60`` preset (for 60-epoch runs): StepLR every 20 epochs.

    Args:
        step_size: epochs between decays.
        gamma: factor of each decay.
    """
    _check_steps(step_size, gamma)
    return sched.StepLR(optimizer, step_size * _per_epoch(steps_per_epoch), gamma)


SCHEDULERS = {"step": step, "multistep": multistep, "cosine": cosine, "warmup": warmup,
              "lrs": lrs, "lrs60": lrs60}

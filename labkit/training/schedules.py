"""Values that change per optimizer step: a method's momentum or temperature, the weight decay.

A scheduled value is written in a spec either as a number (constant) or as an object
``{"shape": "cosine", "start": 0.996, "end": 1.0, "epochs": null}``: a ramp from
``start`` to ``end`` over the first ``epochs`` epochs (``null``: the whole run), then
constant at ``end``. The value is indexed by the optimizer step ``s = 0, 1, …`` (the
number of optimizer steps taken before the current batch), with ``n`` the number of
steps of the ramp and ``t = min(s / (n - 1), 1)``:

* ``linear``: ``start + (end - start) · t``
* ``cosine``: ``start + (end - start) · (1 - cos(π t)) / 2``
* ``exp``:    ``start · (end / start) ** t``

These are the random-teacher codebase's ``LinSched``/``CosSched``/``ExpSched`` (and, with
``epochs``, its ``LinWarmup``/``CosWarmup``/``ExpWarmup``): DINO's teacher momentum is
``{"shape": "cosine", "start": 0.996, "end": 1.0}`` and its weight decay
``{"shape": "cosine", "start": 0.04, "end": 0.4}``.

A method reads the step clock from its :class:`~labkit.methods.base.RunContext`
(``step``, ``steps_per_epoch``, ``total_steps``, kept by the engine and restored on
resume) and evaluates its values with :func:`value_at`; the engine schedules the
spec's ``weight_decay`` the same way.
"""
from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Schedule(BaseModel):
    """A ramp from ``start`` to ``end`` over the first ``epochs`` epochs, then constant."""

    model_config = ConfigDict(extra="forbid")

    shape: Literal["linear", "cosine", "exp"] = Field(
        "cosine", description="ramp shape: linear, cosine (half period) or exponential")
    start: float = Field(description="value at the first optimizer step")
    end: float = Field(description="value at the end of the ramp and after it")
    epochs: int | None = Field(
        None, ge=1, description="length of the ramp in epochs; null: the whole run")

    @model_validator(mode="after")
    def _positive_for_exp(self) -> "Schedule":
        if self.shape == "exp" and (self.start <= 0 or self.end <= 0):
            raise ValueError("an 'exp' schedule needs start > 0 and end > 0")
        return self

    def value(self, step: int, steps_per_epoch: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` (0-based) of a run of ``total_steps``."""
        ramp = total_steps if self.epochs is None else self.epochs * steps_per_epoch
        t = min(step / (ramp - 1), 1.0) if ramp > 1 else 1.0
        if self.shape == "linear":
            return self.start + (self.end - self.start) * t
        if self.shape == "cosine":
            return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * t)) / 2.0
        return self.start * (self.end / self.start) ** t


# Union rather than ``float | Schedule`` so that pydantic tries the number first and a
# JSON object second; labkit's grid expansion sees the Schedule model inside it.
Scheduled = Union[float, Schedule]


def value_at(scheduled: float | Schedule | dict, step: int, steps_per_epoch: int,
             total_steps: int) -> float:
    """The value of a number-or-schedule at optimizer step ``step`` (see module docstring);
    a schedule may also be given in its JSON form (a dict, as resolved configs hold it)."""
    if isinstance(scheduled, dict):
        scheduled = Schedule.model_validate(scheduled)
    if isinstance(scheduled, Schedule):
        return scheduled.value(step, steps_per_epoch, total_steps)
    return float(scheduled)

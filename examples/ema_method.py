"""Worked example of a labkit method: supervised training with an EMA copy of the network.

The EMA network is an extra model (checkpointed through ``modules()``), updated after
every optimizer step (``after_step``), evaluated on the eval splits (``eval_model``),
and its update counter is method state (``state_dict``). Register it from a plugin:

    @hookimpl
    def labkit_register(registries):
        registries.methods.register("ema_supervised", EmaSupervised)

and use it in a spec: ``"method": {"name": "ema_supervised", "momentum": 0.99}``.
"""
from __future__ import annotations

import copy

import torch
from pydantic import BaseModel, ConfigDict, Field

from labkit.api import Supervised, hookimpl


class EmaSupervised(Supervised):
    """Cross-entropy on the student; the eval splits score an EMA of its weights."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
        momentum: float = Field(0.99, ge=0.0, le=1.0, description="EMA momentum per step")

    def __init__(self, context, params):
        super().__init__(context, params)
        self.ema = copy.deepcopy(context.model).requires_grad_(False)
        self.updates = 0

    def modules(self):
        return {"model": self.context.model, "ema": self.ema}

    def parameters(self):
        return self.context.model.parameters()  # the EMA copy is never optimised

    @torch.no_grad()
    def after_step(self) -> None:
        m = self.params.momentum
        for ema_p, p in zip(self.ema.parameters(), self.context.model.parameters()):
            ema_p.mul_(m).add_(p, alpha=1 - m)
        for ema_b, b in zip(self.ema.buffers(), self.context.model.buffers()):
            ema_b.copy_(b)
        self.updates += 1

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {"ema-updates": float(self.updates)}

    @classmethod
    def log_columns(cls, params: dict, splits: list[str]) -> list[str]:
        return ["ema-updates"]  # end_epoch's column: `labkit plan` checks best_metric by it

    def eval_model(self):
        return self.ema

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]


@hookimpl
def labkit_register(registries):
    registries.methods.register("ema_supervised", EmaSupervised)

"""The spec's ``batch_augment`` settings (mixup, cutmix) and the check that a method
takes the soft targets they produce; the mixing itself is :mod:`labkit.data.mixing`.
Apart from it, so that reading a spec imports no torch."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from labkit.core.errors import UserError


class Mixup(BaseModel):
    """``{"name": "mixup", "alpha": 0.2, "prob": 1.0}``."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["mixup"] = "mixup"
    alpha: float = Field(0.2, gt=0, description="λ ~ Beta(alpha, alpha)")
    prob: float = Field(1.0, ge=0, le=1, description="share of batches that are mixed")


class CutMix(BaseModel):
    """``{"name": "cutmix", "alpha": 1.0, "prob": 1.0}``."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["cutmix"] = "cutmix"
    alpha: float = Field(1.0, gt=0, description="λ ~ Beta(alpha, alpha), then the box's "
                                                "exact share")
    prob: float = Field(1.0, ge=0, le=1, description="share of batches that are mixed")


BatchAugment = Mixup | CutMix
KINDS = ("mixup", "cutmix")


def check_soft_targets(method: Any, method_name: str) -> None:
    """Refuse ``batch_augment`` for a method (class or instance) that cannot take soft
    targets; the spec checks it when a grid is validated, the engine when a run starts.

    Raises:
        UserError: its ``accepts_soft_targets`` is false or missing.
    """
    if not getattr(method, "accepts_soft_targets", False):
        raise UserError(f"method {method_name!r} does not accept the soft targets that "
                        f"batch_augment produces; set batch_augment to null (or use a method "
                        f"whose accepts_soft_targets is true, such as supervised)")

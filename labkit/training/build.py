"""Building components from their resolved specs, and seeding.

A resolved component spec is ``{"name": …, <params>}`` as :func:`labkit.spec.expand`
leaves it; the registries (filled by the plugin manager) say which class or factory the
name stands for and validate the params.
"""
from __future__ import annotations

import inspect
import random
from typing import Any

import numpy as np
import torch

from labkit.core.errors import UserError
from labkit.core.registry import Registries


def build_component(registries: Registries, kind: str, spec: dict[str, Any], **context: Any) -> Any:
    """Create a registered component from its resolved spec ``{"name": …, params…}``."""
    params = {k: v for k, v in spec.items() if k != "name"}
    registry = registries[kind]
    entry = registry.get(spec["name"])
    if isinstance(entry.obj, type) and hasattr(entry.obj, "Params"):
        return registry.create(spec["name"], params=entry.params.model_validate(params), **context)
    return registry.create(spec["name"], **context, **params)


def check_buildable(config: dict[str, Any], registries: Registries) -> None:
    """Build a resolved config's model, optimizer and schedule without data or weights,
    so that the mistakes their constructors catch (an unknown torchvision name, hidden
    units below one, a negative learning rate, a bad schedule) are reported before any
    run starts.

    Only labkit's own components are built here: a plugin's factory may do real work
    (the stitched model loads, even trains, the networks it joins), which must not
    happen while a spec is merely checked. The model is built on the ``meta`` device for
    the dataset's ``resolution`` (32 for a dataset without one), 3 channels and 10
    classes: only its parameters are checked; a model that needs the real data shape
    fails at run time.

    Raises:
        UserError: naming the component and the constructor's complaint.
    """
    def ours(kind: str, key: str) -> bool:
        return registries[kind].get(config[key]["name"]).plugin == "labkit"

    meta_model(config, registries)
    if not ours("optimizers", "optimizer"):
        return
    try:
        optimizer = build_component(registries, "optimizers", config["optimizer"],
                                    params=[torch.nn.Parameter(torch.zeros(1))])
    except (UserError, ValueError) as exc:
        raise UserError(f"optimizer: {exc}") from None
    if config.get("scheduler") and ours("schedulers", "scheduler"):
        try:
            build_scheduler(registries, config, optimizer, steps_per_epoch=1)
        except (UserError, ValueError) as exc:
            raise UserError(f"scheduler: {exc}") from None


def meta_model(config: dict[str, Any], registries: Registries) -> torch.nn.Module | None:
    """A resolved config's model built on the ``meta`` device (no memory, no weights
    loaded) for the dataset's ``resolution`` (32 for a dataset without one), 3 channels
    and 10 classes: its module names and parameter shapes, before any data is read.

    Returns:
        the model; ``None`` for a plugin's model (its factory may do real work: the
        stitched model loads, even trains, the networks it joins) or one that needs the
        real data shape (the real build reports real problems).

    Raises:
        UserError: the constructor's complaint, naming the model.
    """
    if registries.models.get(config["model"]["name"]).plugin != "labkit":
        return None
    resolution = config["dataset"].get("resolution")
    if not isinstance(resolution, int):  # a plugin's dataset without the parameter
        resolution = 32
    try:
        with torch.device("meta"):
            # pretrained weights are checked when the spec is resolved, not loaded here
            model = {k: v for k, v in config["model"].items() if k != "weights"}
            return build_component(registries, "models", model, num_classes=10,
                                   in_channels=3, resolution=resolution)
    except UserError as exc:
        raise UserError(f"model: {exc}") from None
    except Exception:  # a shape this check guessed; the real build reports real problems
        return None


def build_scheduler(registries: Registries, config: dict[str, Any],
                    optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    total_steps: int | None = None) -> Any:
    """The config's learning-rate schedule (``None`` without one), laid out for the run.

    Under ``scheduler_interval: "epoch"`` it is stepped once per epoch and spans the
    run's epochs (those the ``steps`` budget reaches); under ``"step"`` it is stepped
    after every optimizer step and spans ``total_steps`` (default: every epoch's). A
    factory that takes ``steps_per_epoch`` gets it (``None`` per epoch) and counts its
    epoch parameters in epochs; one that does not is only told the length.
    """
    if not config.get("scheduler"):
        return None
    total_steps = total_steps or config["epochs"] * steps_per_epoch
    per_step = config["scheduler_interval"] == "step"
    length = total_steps if per_step else -(-total_steps // steps_per_epoch)
    factory = registries["schedulers"].get(config["scheduler"]["name"]).obj
    extra: dict[str, Any] = {}
    if "steps_per_epoch" in inspect.signature(factory).parameters:
        extra["steps_per_epoch"] = steps_per_epoch if per_step else None
    return build_component(registries, "schedulers", config["scheduler"], optimizer=optimizer,
                           epochs=length, **extra)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_metrics(registries: Registries, names: list[str], num_classes: int) -> dict[str, Any]:
    """Fresh metric objects ``{name: metric}`` for one pass over ``num_classes`` classes."""
    return {name: registries.metrics.create(name, num_classes=num_classes) for name in names}

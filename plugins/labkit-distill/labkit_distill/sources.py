"""Datasets built on other registered datasets: naming a source, its labels, its pixels.

A dataset of this plugin names its source datasets in the spec like any component,
``"base": "digits"`` or ``"base": {"name": "fashionmnist", "root": "/data"}``. The
source is validated and resolved (defaults filled in) when the spec is, so a typo fails
before anything runs and the run identity holds the source's full settings.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from torch.utils.data import Dataset

from labkit.api import (DataBundle, SplitDataset, UserError, build_component, build_transform,
                        params_model, validate_json_types)
from labkit.api import registries as labkit_registries

# set by the dataset built on a source, never by the source's own spec
SET_BY_WRAPPER = ("resolution", "augment")


def resolve_source(value: str | dict[str, Any]) -> dict[str, Any]:
    """A source dataset as the spec names it, validated, as ``{"name": …, params…}``.

    Raises:
        ValueError: not a dataset, an unknown name or parameter, or a parameter the
            wrapping dataset sets (pydantic reports it with its JSON path).
    """
    component = {"name": value} if isinstance(value, str) else dict(value)
    name = component.pop("name", None)
    if not isinstance(name, str):
        raise ValueError('a source dataset is a name or {"name": ..., <params>}')
    fixed = [key for key in SET_BY_WRAPPER if key in component]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: set by the dataset built on {name!r}; give it "
                         f"there, not in the source")
    registry = labkit_registries().datasets
    if name not in registry:
        raise ValueError(registry.unknown_message(name))
    try:
        params = validate_json_types(registry.get(name).params, component)
    except ValidationError as exc:  # one line per problem, its key inside the source first
        raise ValueError("; ".join(
            f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors())) from None
    resolved = params.model_dump(mode="json")
    return {"name": name, **{k: v for k, v in resolved.items() if k not in SET_BY_WRAPPER}}


def source_params(name: str, factory: Callable[..., DataBundle],
                  fields: tuple[str, ...]) -> type[BaseModel]:
    """The factory's spec parameters (from its signature, as labkit derives them), with
    ``fields`` resolved by :func:`resolve_source`. Register with ``params=``."""

    derived = params_model(name, factory, ())

    class Params(derived):  # type: ignore[misc, valid-type]
        # defaults are resolved too: "digits" by default or by hand is the same run
        model_config = ConfigDict(**derived.model_config, validate_default=True)

        @field_validator(*fields)
        @classmethod
        def _resolve(cls, value: str | dict[str, Any]) -> dict[str, Any]:
            return resolve_source(value)

    Params.__name__ = derived.__name__
    return Params


def build_source(source: dict[str, Any], resolution: int) -> DataBundle:
    """Build a resolved source at ``resolution`` pixels, unaugmented.

    Raises:
        UserError: the source cannot produce that resolution.
    """
    accepted = labkit_registries().datasets.get(source["name"]).params.model_fields
    fixed = {"resolution": resolution, "augment": "none"}
    bundle = build_component(labkit_registries(), "datasets",
                             {**source, **{k: v for k, v in fixed.items() if k in accepted}})
    if bundle.resolution != resolution:
        raise UserError(f"source dataset {source['name']!r} gives {bundle.resolution}-pixel "
                        f"images where {resolution} are needed; choose another source")
    return bundle


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every item's label, in order; read from label arrays when the dataset exposes them
    (``labels``, or ``base`` + ``indices`` over a base with ``labels``/``targets``), so
    images are decoded only when there is no other way."""
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    base, indices = getattr(dataset, "base", None), getattr(dataset, "indices", None)
    for attr in ("labels", "targets"):
        if indices is not None and hasattr(base, attr):
            return np.asarray(getattr(base, attr))[np.asarray(indices)]
    return np.array([int(label) for _, label in dataset])


def pixel_range(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Black and white, ``(channels, 1, 1)`` each, in the bundle's (normalised) pixel values."""
    channels = bundle.in_channels
    mean, std = bundle.info.get("mean"), bundle.info.get("std")
    if mean is None:
        return torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1)
    mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return -mean / std, (1 - mean) / std


def augmenter(resolution: int, augment: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """labkit's augmentation preset for float image tensors already at ``resolution``."""
    return build_transform(resolution=resolution, native=resolution, augment=augment,
                           mean=None, std=None, pil_input=False)


def train_on_eval(base: str | dict[str, Any] = "cifar10", resolution: int = 32,
                  augment: str = "none") -> DataBundle:
    """A dataset with its splits swapped: train on its ``eval`` split, evaluate on its train.

    HKD's setting: CIFAR-10H gives human soft labels for the 10 000 CIFAR-10 *test*
    images, so the student trains on those (``soft_labels.file`` rows then follow this
    training split) and is evaluated on the 50 000 training images.

    Args:
        base: the data set whose splits are swapped (a name or ``{"name": …, params}``).
        resolution: image side in pixels.
        augment: augmentation preset of the new training split (the base's ``eval``).

    Returns:
        A :class:`DataBundle`: ``train`` = the base's ``eval`` (with ``augment``),
        ``evals["eval"]`` = the base's training split, unaugmented.
    """
    source = build_source(resolve_source(base), resolution)
    held_out = source.evals["eval"]
    return DataBundle(
        train=SplitDataset(held_out, np.arange(len(held_out)), augmenter(resolution, augment)),
        evals={"eval": source.train_plain},
        train_plain=held_out,
        num_classes=source.num_classes,
        in_channels=source.in_channels,
        resolution=resolution,
        info={**source.info, "name": "train_on_eval", "base": source.info, "augment": augment,
              "sizes": {"train": len(held_out), "eval": len(source.train_plain)}},
    )

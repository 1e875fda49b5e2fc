"""Mistakes in a run that show before it trains: labkit's own answer to the
``labkit_check_run`` hook (:mod:`labkit.core.hookspecs`), which ``labkit plan``,
``run --dry-run`` and every command reading a spec ask of every run they validate.

Each check reads the resolved config, the registries and, where layer names matter,
the model built on the ``meta`` device (:func:`labkit.training.build.meta_model`): nothing is
trained, no data set is loaded. What a check reads from outside the spec (a folder's
files, a soft-label file) is noted (:func:`labkit.store.identity.note_outside`, as
:func:`labkit.spec.data_identity` does), so that a grid depending on it is validated
again by every command.
"""
from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path
from typing import Any

import torch

from labkit.core.errors import UserError
from labkit.core.registry import Registries
from labkit.measures.layers import MEASURED_TYPES, measured_layers
from labkit.measures.pca_dimension import column_name
from labkit.measures.saturation import TRACKED_TYPES
from labkit.spec import Component, data_identity, resolve_component
from labkit.spec.saturation import TRAIN_PASS, SaturationConfig
from labkit.store.identity import note_outside
from labkit.training.build import meta_model

# log.csv columns of every run besides the passes' own
RUN_COLUMNS = ("epoch", "lr", "epoch_seconds")


def run_problems(config: dict[str, Any], registries: Registries) -> list[str]:
    """Every mistake in one resolved config that shows before training, one line each
    (JSON path first, then the fix): the device, ``saturation.splits`` naming no pass,
    a logger whose package is missing, layer patterns that match no layer, a
    ``best_metric`` that names no log column, the data sets, splits and files of
    ``evaluate`` analyses. (The run's own data set is read where its identity is: a folder data set
    without its folder fails validation.)"""
    problems = device_problems(config["device"])
    problems += split_problems(config, registries)
    problems += logger_problems(config, registries)
    model = meta_model(config, registries)
    if model is not None:
        problems += layer_problems(config, registries, model)
    problems += best_metric_problems(config, registries, model)
    for i, analysis in enumerate(config["analyses"]):
        ours = registries.analyses.get(analysis["name"]).plugin == "labkit"
        if analysis["name"] == "evaluate" and ours:
            problems += evaluate_problems(analysis, f"analyses.{i}", config, registries)
    return problems


# the device types labkit trains on (whether this machine has one is checked where a
# run starts: labkit.cli.commands.common.check_device)
DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_problems(device: str) -> list[str]:
    """A device torch cannot parse, or one of a type labkit does not train on (``meta``
    holds shapes, not numbers)."""
    fix = "give cpu, cuda, cuda:N or mps"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        return [f"device: {device!r} is no torch device; {fix}"]
    if kind == "meta":
        return [f"device: meta holds shapes, not numbers: nothing can train on it; {fix}"]
    if kind not in DEVICE_TYPES:
        return [f"device: labkit trains on {', '.join(DEVICE_TYPES)} devices, not {kind}; {fix}"]
    return []


def eval_splits(dataset: dict[str, Any], registries: Registries) -> list[str] | None:
    """The eval split names of a resolved data set, as its factory declares them
    (``eval_splits(params)``); ``None`` when it does not (they are known once built)."""
    declare = getattr(registries.datasets.get(dataset["name"]).obj, "eval_splits", None)
    return declare({k: v for k, v in dataset.items() if k != "name"}) if declare else None


def split_problems(config: dict[str, Any], registries: Registries) -> list[str]:
    """``saturation.splits`` naming a pass the run does not have."""
    wanted = (config.get("saturation") or {}).get("splits")
    evals = eval_splits(config["dataset"], registries)
    if not wanted or evals is None:
        return []
    passes = [TRAIN_PASS, *evals]
    unknown = [split for split in wanted if split not in passes]
    return [f"saturation.splits: unknown pass(es) {unknown}; this run has "
            f"{', '.join(passes)}"] if unknown else []


def logger_problems(config: dict[str, Any], registries: Registries) -> list[str]:
    """labkit's ``tensorboard`` logger without the package it writes with."""
    problems = []
    for i, logger in enumerate(config["loggers"]):
        ours = registries.loggers.get(logger["name"]).plugin == "labkit"
        if ours and logger["name"] == "tensorboard" and importlib.util.find_spec(
                "tensorboard") is None:
            problems.append(f"loggers.{i}: the tensorboard logger needs the tensorboard "
                            f"package; install it with `pip install \"labkit[tensorboard]\"` "
                            f"or drop it from the spec's loggers")
    return problems


def dataset_problems(dataset: dict[str, Any], path: str, registries: Registries) -> list[str]:
    """A data set whose files are missing, for the data sets identified by their files
    (:func:`labkit.spec.data_identity`, which reads them as their loader does: a
    folder data set without its folder is an error there)."""
    try:
        data_identity(dataset, registries)
    except UserError as exc:
        return [f"{path}: {exc}"]
    return []


def layer_problems(config: dict[str, Any], registries: Registries,
                   model: torch.nn.Module) -> list[str]:
    """Layer patterns that match no layer of the model: ``saturation.layers`` and the
    ``layers`` of labkit's own analyses."""
    wanted: list[tuple[str, list[str], tuple[type, ...]]] = []
    saturation = config.get("saturation")
    if saturation and saturation.get("layers"):
        wanted.append(("saturation.layers", saturation["layers"], TRACKED_TYPES))
    for i, analysis in enumerate(config["analyses"]):
        if analysis.get("layers") and registries.analyses.get(analysis["name"]).plugin == "labkit":
            wanted.append((f"analyses.{i}.layers", analysis["layers"], MEASURED_TYPES))
    problems = []
    for path, patterns, types in wanted:
        try:
            measured_layers(model, patterns, types)
        except UserError as exc:
            problems.append(f"{path}: {exc}; fix the patterns")
    return problems


def log_columns(config: dict[str, Any], registries: Registries,
                model: torch.nn.Module | None, saturation: bool = True) -> list[str] | None:
    """The columns the run's log.csv will have, as shell-style patterns (``*`` where a
    name is known only once the data set or the model is built), or ``None`` when the
    method cannot tell (:meth:`labkit.methods.Method.log_columns`).

    Columns: ``epoch``, ``lr``, ``epoch_seconds``; per pass (``train`` and every eval
    split, as the dataset factory's ``eval_splits(params)`` names them) the loss, every
    metric and, with the spec's ``saturation`` (unless ``saturation`` is false), each
    statistic of each tracked layer; the method's.
    """
    method = registries.methods.get(config["method"]["name"]).obj
    declare = getattr(method, "log_columns", None)
    if declare is None:
        return None
    evals = eval_splits(config["dataset"], registries) or ["*"]
    extra = declare({k: v for k, v in config["method"].items() if k != "name"}, evals)
    if extra is None:
        return None
    per_pass = ["loss", *config["metrics"]]
    if saturation and config.get("saturation") is not None:
        sat = SaturationConfig.model_validate(config["saturation"])
        layers = (["*"] if model is None else
                  [name for name, _ in measured_layers(model, sat.layers, TRACKED_TYPES)])
        per_pass += [column_name("", stat, layer)[1:] for stat in sat.stats for layer in layers]
    return [*RUN_COLUMNS, *(f"{split}-{column}" for split in [TRAIN_PASS, *evals]
                            for column in per_pass), *extra]


def best_metric_problems(config: dict[str, Any], registries: Registries,
                         model: torch.nn.Module | None) -> list[str]:
    """A ``best_metric`` that names no column of the run's log (:func:`log_columns`)."""
    metric = config.get("best_metric")
    if metric is None:
        return []
    columns = log_columns(config, registries, model)
    if columns is None or any(fnmatch.fnmatchcase(metric, c) for c in columns):
        return []
    shown = [c for c in log_columns(config, registries, model, saturation=False) or []
             if c not in RUN_COLUMNS]
    more = " and the saturation columns" if config.get("saturation") is not None else ""
    return [f"best_metric: {metric!r} is no column of this run's log.csv; choose one of "
            f"{', '.join(shown[:24])}{' …' if len(shown) > 24 else ''}{more}"]


def evaluate_problems(analysis: dict[str, Any], path: str, config: dict[str, Any],
                      registries: Registries) -> list[str]:
    """The data set an ``evaluate`` analysis names (unknown, invalid parameters, missing
    files) and its soft-label file."""
    raw = analysis.get("dataset")
    raw = {"name": raw} if isinstance(raw, str) else dict(raw or {})
    name = raw.get("name")
    if not isinstance(name, str) or name not in registries.datasets:
        return [f"{path}.dataset: {registries.datasets.unknown_message(str(name))}"]
    resolution = config["dataset"].get("resolution")
    if ("resolution" not in raw and isinstance(resolution, int)
            and "resolution" in registries.datasets.get(name).params.model_fields):
        raw["resolution"] = resolution  # as the analysis does: the run's, unless given
    try:
        dataset = resolve_component(Component(**raw), "datasets", f"{path}.dataset", registries)
    except UserError as exc:
        return [str(exc)]
    problems = dataset_problems(dataset, f"{path}.dataset", registries)
    splits = eval_splits(dataset, registries)
    split = analysis.get("split", "eval")
    if splits is not None and split not in [TRAIN_PASS, *splits]:
        problems.append(f"{path}.split: {name} has no split {split!r}; it has "
                        f"{', '.join([TRAIN_PASS, *splits])}")
    soft = analysis.get("soft_labels")
    if soft is not None:
        note_outside(f"soft-label file {soft}")
        if not Path(soft).expanduser().is_file():
            problems.append(f"{path}.soft_labels: {soft} does not exist; give a .npy file of "
                            f"label probabilities, shape (images, classes)")
    return problems

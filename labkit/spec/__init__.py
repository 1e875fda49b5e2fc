"""Specs: the JSON a researcher writes, validated by pydantic and expanded into a grid.

A JSON list given where the schema expects one value is a grid axis, at any depth
(``"lr": [0.1, 0.01]`` inside the optimizer object, a list of objects where one object
is expected). Fields that are lists by type (``metrics``, ``analyses``) are not axes;
a list of lists there is. The grid is the cartesian product of all axes.

Components (model, dataset, method, optimizer, scheduler, analyses) are written as a
name or as an object ``{"name": ..., <params>}``; the params are validated against the
pydantic model the registry holds for that name, which also injects defaults.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labkit.core.errors import UserError
from labkit.core.registry import UNTYPED, Registries, Seed
from labkit.spec.batch_augment import CutMix, Mixup, check_soft_targets
from labkit.spec.saturation import SaturationConfig
from labkit.store.identity import RunConfig, folder_name_problem, note_outside
from labkit.training.schedules import Scheduled

ModelT = TypeVar("ModelT", bound=BaseModel)


class LauncherConfig(BaseModel):
    """The spec's ``launcher`` section; command-line options override each field."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["local", "slurm", "submitit-local"] = Field(
        "local", description="local: this machine (see jobs); slurm: one submitit job array "
                             "per grid; submitit-local: the same job array run locally by "
                             "submitit (to try the cluster path)")
    jobs: int = Field(1, ge=1, description="local: runs trained in parallel worker processes")
    partition: str | None = Field(None, description="slurm partition")
    gpus_per_task: int = Field(0, ge=0, description="GPUs per task (one task = one run)")
    cpus_per_task: int = Field(2, ge=1, description="CPU cores per task")
    mem_gb: float | None = Field(None, description="memory per task, GiB")
    time: int = Field(60, ge=1, description="time limit per task in minutes; on timeout the "
                                            "task is requeued and resumes from its checkpoint")
    array_parallelism: int = Field(32, ge=1, description="tasks of the array running at once")
    max_requeues: int = Field(3, ge=0, description="timeouts after which a task gives up")


class Component(BaseModel):
    """A registered component chosen by ``name``; every other key is a parameter."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="registered name (see `labkit list KIND`)")

    @property
    def params(self) -> dict[str, Any]:
        """The component's parameters (every key but ``name``)."""
        return dict(self.model_extra or {})


def _component_field(kind: str, default: Any = ..., description: str = "") -> Any:
    return Field(default, description=description, json_schema_extra={"registry": kind})


def _as_component(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Spec(BaseModel):
    """One run's settings; a spec file holds this with lists as grid axes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("experiment", description="label of the spec, one folder name (plot "
                                                "and report name their outputs by it; no "
                                                "path separator, at most 100 characters); "
                                                "not part of run identity")
    model: Component = _component_field("models", description="network to train")
    dataset: Component = _component_field(
        "datasets", Component(name="digits"), "data set with its params (resolution, augment, …)")
    method: Component = _component_field(
        "methods", Component(name="supervised"), "training method owning the training step")
    optimizer: Component = _component_field("optimizers", Component(name="sgd"), "optimizer")
    scheduler: Component | None = _component_field(
        "schedulers", None, "learning-rate schedule, stepped once per epoch; null: constant")
    epochs: int = Field(30, ge=1, description="number of training epochs")
    batch_size: int = Field(128, ge=1, description="training batch size (of one micro-batch "
                                                   "when accumulating)")
    accumulate: int = Field(
        1, ge=1, description="micro-batches per optimizer step: gradients of `accumulate` "
                             "batches are summed (weighted by their sizes), so a step sees "
                             "batch_size × accumulate samples; part of identity")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the global L2 norm of the gradients to this before "
                                "each optimizer step; null: no clipping; part of identity")
    precision: Literal["32", "bf16", "16-mixed"] = Field(
        "32", description="32: float32; bf16: bfloat16 autocast of the forward pass; "
                          "16-mixed: float16 autocast with a dynamic loss scaler "
                          "(checkpointed); part of identity: the numbers change")
    seed: Seed = Field(0, description="seed of weights init, data order and augmentation "
                                      "(0 ≤ seed < 2³²)")
    metrics: list[str] = Field(
        ["accuracy", "top5_accuracy", "mcc", "balanced_accuracy"],
        description="metrics logged per epoch for train and every eval split",
        json_schema_extra={"registry": "metrics"})
    saturation: SaturationConfig | None = Field(
        None, description="saturation tracking of every layer on the train and eval passes "
                          "(delve); {} tracks with the defaults; null: off")
    analyses: list[Component] = Field(
        [], description="post-training analyses, each skipped when its output is complete",
        json_schema_extra={"registry": "analyses"})
    loggers: list[Component] = Field(
        [], description="experiment trackers mirroring every epoch's log row, e.g. "
                        "[\"tensorboard\"] (pip install labkit[tensorboard]); plugins add "
                        "others; log.csv stays the source of truth; not part of identity",
        json_schema_extra={"registry": "loggers"})
    logs_dir: str = Field("logs", description="root of run directories; not part of identity")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0; not part of identity")
    eval_batch_size: int = Field(512, ge=1, description="batch size of evaluation passes; not part of identity")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes; not part of identity: every "
                             "sample's augmentation is seeded on its own, so any worker "
                             "count trains the same weights")
    scheduler_interval: Literal["epoch", "step"] = Field(
        "epoch", description="step the learning-rate schedule after every epoch, or after "
                             "every optimizer step (its length and step-counted params, "
                             "warmup_epochs / step_size / milestones, then count optimizer "
                             "steps); part of identity")
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="linear: the optimizer's lr times batch_size × accumulate / 256; "
                            "part of identity")
    best_metric: str | None = Field(
        None, description="a log.csv column (e.g. \"eval-accuracy\") whose best epoch is kept "
                          "as checkpoints/best.pt; null: none; not part of identity")
    best_mode: Literal["max", "min"] = Field(
        "max", description="whether the best epoch has the largest or smallest best_metric")
    analysis_checkpoint: Literal["final", "best"] = Field(
        "final", description="which network the analyses read: the final epoch's or the "
                             "best_metric's best; not part of identity")
    threads: int = Field(
        1, ge=1, description="torch intra-op CPU threads the run trains and evaluates with; "
                             "part of identity, because CPU results depend on it (the "
                             "order of floating-point sums)")
    steps: int | None = Field(
        None, ge=1, description="optimizer-step budget: training ends after min(epochs × "
                                "steps per epoch, steps) steps (the last epoch may be cut "
                                "short); null: all epochs; part of identity")
    weight_decay_schedule: Scheduled | None = Field(
        None, description="weight decay of every optimizer parameter group per optimizer "
                          "step: a number or {\"shape\": \"cosine\", \"start\": 0.04, "
                          "\"end\": 0.4} (see labkit.training.schedules); null: the optimizer's "
                          "own weight_decay; part of identity")
    checkpoint_steps: int | None = Field(
        None, ge=1, description="also checkpoint mid-epoch after every this many optimizer "
                                "steps of the run (global steps N, 2N, …, across epochs and "
                                "resumes; checkpoints/partial_<step>.pt; a resume continues "
                                "from it exactly); null: epoch ends only; not part of identity")
    checkpoint_minutes: float | None = Field(
        None, gt=0, description="also checkpoint mid-epoch when this many minutes passed since "
                                "the last checkpoint; null: off; not part of identity")
    keep_checkpoints: int = Field(
        2, ge=1, description="epoch checkpoints kept: the newest this many intact ones (best.pt "
                             "and the final one are never removed); not part of identity")
    channels_last: bool = Field(
        False, description="keep the network's weights and the batches in channels_last "
                           "memory layout (faster convolutions on GPUs with tensor cores); "
                           "part of identity: kernels differ, so do the last bits")
    compile: bool = Field(
        False, description="train through torch.compile(model) (needs a working C++ "
                           "compiler on CPU, Triton on GPU); part of identity: fused "
                           "kernels round differently")
    nproc: int = Field(
        1, ge=1, description="processes that train each run together (torch.distributed: one "
                             "per GPU with NCCL, or CPU processes with gloo); each computes "
                             "batch_size / nproc samples of every batch; part of identity "
                             "above 1 (BatchNorm statistics are per process, and sums are "
                             "ordered otherwise)")
    data_loader: Literal["torch", "device"] = Field(
        "torch", description="torch: torchvision's per-image transforms in DataLoader "
                             "workers; device: the whole training set held on the run's "
                             "device and augmented batchwise there (small data sets on a "
                             "GPU); part of identity: the augmentations differ")
    batch_augment: Mixup | CutMix | list[Mixup | CutMix] | None = Field(
        None, description="mixup / cutmix of every training batch, producing soft targets "
                          "(labkit/data/mixing.py): {\"name\": \"mixup\", \"alpha\": 0.2, "
                          "\"prob\": 1.0}, {\"name\": \"cutmix\", \"alpha\": 1.0}, or a "
                          "list of them to draw one per batch (a list of lists is a grid "
                          "axis); the method must accept soft targets; null: off; part of "
                          "identity")
    launcher: LauncherConfig = Field(
        LauncherConfig(), description="where the runs execute (local workers, slurm job "
                                      "array); command-line options win; not part of identity")

    @field_validator("model", "dataset", "method", "optimizer", "scheduler", mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return _as_component(value)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        problem = folder_name_problem(value)
        if problem:  # plot, report and the stitch tables name files and folders by it
            raise ValueError(f"the spec's name becomes a folder and file name, but {problem}; "
                             f"give a short label (letters, digits, '-', '_', '.')")
        return value

    @field_validator("logs_dir")
    @classmethod
    def _a_usable_folder(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("give the folder runs are written under, e.g. \"logs\"")
        if Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"{value} is a file, not a folder; give a folder")
        return value

    @model_validator(mode="after")
    def _processes_can_share_the_run(self) -> "Spec":
        if self.nproc == 1:
            return self
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} does not split into {self.nproc} "
                             f"equal shards; give a batch_size divisible by nproc {self.nproc}")
        if self.checkpoint_steps or self.checkpoint_minutes:
            raise ValueError("mid-epoch checkpoints are not supported with nproc > 1 yet; drop "
                             "checkpoint_steps / checkpoint_minutes or set nproc to 1")
        if self.data_loader == "device":
            raise ValueError("data_loader \"device\" does not shard across processes yet; set "
                             "\"data_loader\": \"torch\" or nproc to 1")
        return self

    @model_validator(mode="after")
    def _best_needs_a_metric(self) -> "Spec":
        if self.analysis_checkpoint == "best" and self.best_metric is None:
            raise ValueError("analysis_checkpoint \"best\" reads the best_metric's best epoch, "
                             "but best_metric is null; name a log column in best_metric "
                             "(e.g. \"eval-accuracy\") or set analysis_checkpoint to \"final\"")
        return self

    @field_validator("analyses", "loggers", mode="before")
    @classmethod
    def _names_only(cls, value: Any) -> Any:
        return [_as_component(v) for v in value] if isinstance(value, list) else value


# ---------------------------------------------------------------- grid expansion

def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union annotation (``X | None`` → ``[X, NoneType]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _is_list_type(annotation: Any) -> bool:
    return any(typing.get_origin(a) in (list, tuple, set, frozenset) or a in (list, tuple)
               for a in _unwrap(annotation))


def _model_type(annotation: Any, value: Any = None) -> type[BaseModel] | None:
    """The pydantic model of ``annotation``; in a union of models, the one that ``value``
    (a dict) fits: the first whose fields hold all its keys and whose ``name`` (when both
    have one) admits the value's name, else the first model."""
    models = [a for a in _unwrap(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) > 1 and isinstance(value, dict):
        for model in models:
            if set(value) <= set(model.model_fields) and _admits_name(model, value.get("name")):
                return model
    return models[0] if models else None


def _admits_name(model: type[BaseModel], name: Any) -> bool:
    field = model.model_fields.get("name")
    if field is None or name is None or isinstance(name, list):
        return True
    allowed = typing.get_args(field.annotation) if typing.get_origin(
        field.annotation) is typing.Literal else (field.default,)
    return name in allowed or field.default is None


def _is_untyped(field: Any) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(UNTYPED))


def _registry_kind(field: Any) -> str | None:
    extra = field.json_schema_extra
    return extra.get("registry") if isinstance(extra, dict) else None


def _alternatives(value: Any, annotation: Any, kind: str | None, path: str,
                  registries: Registries) -> list[Any]:
    """Every value that ``value`` stands for, one per grid point."""
    if isinstance(value, list) and not _is_list_type(annotation):
        if not value:
            raise UserError(f"{path or 'spec'}: an empty list is a grid axis with no values; "
                            f"give one value, or a list of the values to try")
        return [alt for item in value
                for alt in _alternatives(item, annotation, kind, path, registries)]
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            return value  # a list of lists in a list-typed field: each inner list is one point
        return [value]
    model = _model_type(annotation, value)
    if model is Component and kind is not None:
        return _component_alternatives(_as_component(value), kind, path, registries)
    if model is not None and isinstance(value, dict):
        return _object_alternatives(value, model, path, registries)
    return [value]


def _object_alternatives(value: dict, model: type[BaseModel], path: str,
                         registries: Registries) -> list[dict]:
    fields = model.model_fields
    axes = []
    for key, item in value.items():
        field = fields.get(key)
        if field is None:  # an unknown key: validation reports it with "did you mean"
            axes.append([item])
            continue
        if isinstance(item, list) and _is_untyped(field):
            raise UserError(
                f"{_join(path, key)}: this parameter has no type annotation, so labkit cannot "
                f"tell whether the list {item!r} is one value or a grid axis of values; "
                f"annotate it in the component's code (list[...] for a value, the item's "
                f"type for an axis)")
        axes.append(_alternatives(item, field.annotation, _registry_kind(field),
                                  _join(path, key), registries))
    size = math.prod(len(axis) for axis in axes)
    if size > MAX_GRID_POINTS:
        raise UserError(f"{path or 'spec'}: the grid has {size:,} points, more than "
                        f"{MAX_GRID_POINTS:,}; split it into several specs, or shorten its "
                        f"lists (every list where one value is expected is an axis)")
    return [dict(zip(value.keys(), combo)) for combo in itertools.product(*axes)]


def _component_alternatives(value: Any, kind: str, path: str,
                            registries: Registries) -> list[Any]:
    if not isinstance(value, dict) or "name" not in value:
        return [value]  # not a component: validation reports it with its path
    out: list[Any] = []
    names = value["name"] if isinstance(value["name"], list) else [value["name"]]
    if not names:
        raise UserError(f"{_join(path, 'name')}: an empty list is a grid axis with no values; "
                        f"give a name, or a list of the names to try")
    for name in names:
        params = {k: v for k, v in value.items() if k != "name"}
        registry = registries[kind]
        if not isinstance(name, str) or name not in registry:
            out.append({"name": name, **params})  # validation reports the unknown name
            continue
        params_model = registry.get(name).params
        for combo in _object_alternatives(params, params_model, path, registries):
            out.append({"name": name, **combo})
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------- validation

def _format_validation_error(exc: ValidationError, model: type[BaseModel] | None,
                             prefix: str, value: Any = None) -> str:
    """One line per problem of ``value`` (validated against ``model``): its JSON path
    under ``prefix`` and the fix. pydantic's names of union members in a location (a
    discriminated union's tag, a member class) are no part of the spec's path: they are
    dropped, the member the value was meant for gives the valid keys and "did you mean",
    and the complaints of the other members are left out."""
    lines: list[str] = []
    for err in exc.errors():
        path, holder, meant = _walk(model, err["loc"], value)
        if not meant:
            continue
        loc = _join(prefix, ".".join(map(str, path))) if path else prefix or "spec"
        if err["type"] == "extra_forbidden":
            key = str(path[-1])
            valid = list(holder.model_fields) if holder else []
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            line = (f"{loc}: unknown key {key!r}.{hint} Valid keys here: "
                    f"{', '.join(valid) or '(none)'}.")
        elif err["type"] == "missing":
            line = f"{loc}: required value missing; add it to the spec."
        elif err["type"] == "value_error" and not path:  # about the whole object
            line = f"{loc}: {err['ctx']['error']}"
        elif err["type"] == "value_error":  # a validator's own message says the fix
            line = f"{loc}: {err['ctx']['error']} (got {_as_json(err.get('input'))})"
        else:
            line = f"{loc}: {err['msg']} (got {_as_json(err.get('input'))}); fix the value."
        if line not in lines:
            lines.append(line)
    return "\n".join(lines) or str(exc)


def _as_json(value: Any, width: int = 80) -> str:
    """``value`` as the spec writes it (``true``, ``null``, ``"text"``), cut to ``width``."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _members(annotation: Any) -> list[Any]:
    """The alternatives of ``annotation`` other than ``None``, ``Annotated`` unwrapped."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    members = [a for a in _unwrap(annotation) if a is not type(None)]
    return [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in members]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _member_of_tag(members: list[Any], tag: str) -> Any:
    """The union member that pydantic names ``tag`` in an error location: a
    discriminated union's tag (a ``name``), a model's class name (possibly inside a
    validator's label), ``list[…]``, ``literal[…]``, a type's name (``int``,
    ``constrained-int``); ``None`` when none fits."""
    for member in members:
        origin = typing.get_origin(member)
        if _is_model(member):
            names = member.model_fields.get("name")
            allowed = (typing.get_args(names.annotation) if names is not None and
                       typing.get_origin(names.annotation) is typing.Literal else ())
            if tag == member.__name__ or tag.endswith(f"{member.__name__}]") or tag in allowed:
                return member
        elif origin is typing.Literal and tag.startswith("literal["):
            return member
        elif origin is not None and tag.startswith(f"{getattr(origin, '__name__', '')}["):
            return member
        elif tag.removeprefix("constrained-") == getattr(member, "__name__", None):
            return member
    return None


def _meant(members: list[Any], value: Any) -> Any:
    """The member of a union that ``value`` was written for: for an object, the model
    whose keys and name fit it; for a list, the list type; for text, a string or
    literal type; for a number, a number type; ``None`` when no member is of the
    value's kind (then every member's complaint counts)."""
    models = [m for m in members if _is_model(m)]
    if isinstance(value, dict) and models:
        named = [m for m in models if _admits_name(m, value.get("name"))] or models
        return next((m for m in named if set(value) <= set(m.model_fields)), named[0])
    lists = [m for m in members if typing.get_origin(m) in (list, tuple)]
    if isinstance(value, list):
        return lists[0] if lists else None
    kinds = (str,) if isinstance(value, str) else (int, float, bool)
    return next((m for m in members if m in kinds or (typing.get_origin(m) is typing.Literal
                 and all(isinstance(a, kinds) for a in typing.get_args(m)))), None)


def _walk(model: type[BaseModel] | None, loc: tuple, value: Any
          ) -> tuple[list[Any], type[BaseModel] | None, bool]:
    """The spec path of an error location, the model holding its last key, and whether
    the error belongs to the union member the value was meant for (see
    :func:`_format_validation_error`)."""
    path: list[Any] = []
    annotation: Any = model
    holder: type[BaseModel] | None = model
    meant = True
    for part in loc:
        members = _members(annotation)
        if isinstance(part, str) and len(members) > 1:  # pydantic names the member tried
            member = _member_of_tag(members, part)
            chosen = _meant(members, value)
            if member is not None and chosen is not None:
                meant = meant and member is chosen
            annotation = member
            continue
        members = _members(annotation)
        models = [m for m in members if _is_model(m)]
        if isinstance(part, int):
            items = [typing.get_args(m)[0] for m in members
                     if typing.get_origin(m) in (list, tuple) and typing.get_args(m)]
            annotation = items[0] if items else None
            value = value[part] if isinstance(value, list) and part < len(value) else None
        elif models:
            holder = models[0]
            field = holder.model_fields.get(str(part))
            annotation = field.annotation if field else None
            value = value.get(part) if isinstance(value, dict) else None
        else:
            annotation, holder = None, None
            value = value.get(part) if isinstance(value, dict) else None
        path.append(part)
    return path, holder, meant


def validate_json_types(model: type[ModelT], value: Any) -> ModelT:
    """``model`` validated from ``value`` (JSON data: dicts, lists, strings, numbers,
    booleans, null) with JSON's types kept apart: a boolean is never taken as a number
    nor a number as a boolean, a float (``1.0``, ``-0.0``) never as an integer; an
    integer is a float where a float is asked for. This is pydantic's strict mode for
    JSON input, so strings still become paths and lists tuples where a model asks.

    Raises:
        pydantic.ValidationError: as :meth:`BaseModel.model_validate` does.
    """
    return model.model_validate_json(json.dumps(value), strict=True)


def resolve_component(value: Component, kind: str, path: str,
                      registries: Registries) -> dict[str, Any]:
    """A component's resolved spec ``{"name": …, params with defaults}``.

    Raises:
        UserError: an unknown name or invalid params, named by ``path``.
    """
    registry = registries[kind]
    try:
        entry = registry.get(value.name)
    except UserError as exc:
        raise UserError(f"{path}.name: {exc}") from None
    try:
        params = validate_json_types(entry.params, value.params)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, entry.params, path, value.params)) from None
    return {"name": value.name, **params.model_dump(mode="json")}


def resolve(raw: dict[str, Any], registries: Registries) -> dict[str, Any]:
    """Validate one grid point and return its resolved config (defaults filled in).

    Raises:
        UserError: naming the JSON path of every problem and how to fix it.
    """
    _check_finite(raw, "")
    try:
        spec = validate_json_types(Spec, raw)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, Spec, "", raw)) from None
    resolved = spec.model_dump(mode="json")
    for key, field in Spec.model_fields.items():
        kind = _registry_kind(field)
        value = getattr(spec, key)
        if kind is None or value is None:
            continue
        if key == "metrics":
            for i, name in enumerate(value):
                if name not in registries.metrics:
                    raise UserError(f"metrics.{i}: {registries.metrics.unknown_message(name)}")
        elif isinstance(value, list):
            resolved[key] = [resolve_component(v, kind, f"{key}.{i}", registries)
                             for i, v in enumerate(value)]
        else:
            resolved[key] = resolve_component(value, kind, key, registries)
    if resolved.get("batch_augment"):
        method = resolved["method"]["name"]
        try:
            check_soft_targets(registries.methods.get(method).obj, method)
        except UserError as exc:
            raise UserError(f"batch_augment: {exc}") from None
    try:
        data = data_identity(resolved["dataset"], registries)
    except UserError as exc:  # a data set read from files that are not there
        raise UserError(f"dataset: {exc}") from None
    if data:
        resolved["data"] = data
    weights = weights_identity(resolved["model"], registries)
    if weights:
        resolved["weights"] = weights
    return resolved


def inline_run(spec: dict[str, Any], naming: dict[str, Any], run_id: str,
               registries: Registries) -> RunConfig:
    """A run another run names by its spec (a distillation teacher, an init run), as
    that run trains it: resolved again with the ``logs_dir`` and ``name`` of the naming
    run's config ``naming``, under ``run_id``. ``spec`` may be a resolved config (its
    derived ``data`` is derived anew).

    Raises:
        UserError: the spec does not validate.
    """
    spec = {k: v for k, v in spec.items() if k != "data"}
    where = {"logs_dir": naming["logs_dir"], "name": naming["name"]}
    return RunConfig(resolve({**spec, **where}, registries), run_id)


def weights_identity(model: dict[str, Any], registries: Registries) -> dict[str, Any]:
    """What identifies a model's pretrained weights (their URL, or a file's sha256), so
    that other weights are another run: ``{}`` for an untrained model. A model factory
    opts in with an attribute ``weights_identity(rest of name, params) -> dict``."""
    entry, rest = registries.models.resolve(model["name"])
    identify = getattr(entry.obj, "weights_identity", None)
    if identify is None:
        return {}
    found = identify(rest, {k: v for k, v in model.items() if k != "name"})
    if found:
        note_outside(f"the weights of model {model['name']!r}")
    return found


def _check_finite(value: Any, path: str) -> None:
    """Refuse NaN and infinities anywhere (JSON has none, but Python's reader takes
    ``NaN`` and ``Infinity``): no setting means anything with them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path or 'spec'}: {value} is not a finite number; give a number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, _join(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, _join(path, i))


def data_identity(dataset: dict[str, Any], registries: Registries) -> dict[str, Any]:
    """What identifies a dataset's files beyond its params: for datasets read from a
    folder of files, the folder and a digest of their content (every file the loader
    reads: relative path, label, sha256; see :func:`labkit.data.splits.content_digest`),
    so that two folders with other files never share a run. Built-in sets whose files
    are fixed (and checksummed by torchvision) are identified by their params alone:
    ``{}``.

    A dataset factory opts in with an attribute ``data_identity(params) -> dict``.
    """
    entry = registries.datasets.get(dataset["name"])
    identify = getattr(entry.obj, "data_identity", None)
    if identify is None:
        return {}
    found = identify({k: v for k, v in dataset.items() if k != "name"})
    if found:
        note_outside(f"the files of dataset {dataset['name']!r}")
    return found


# beyond this a grid is almost surely a mistake (and takes long to even list)
MAX_GRID_POINTS = 10_000
# a spec is a few levels of objects and lists; far deeper is a mistake (or an attack)
MAX_DEPTH = 32


def check_raw(raw: Any) -> None:
    """Refuse what no spec holds, before anything reads it (iteratively: no recursion):
    nesting deeper than :data:`MAX_DEPTH`, and text that is no Unicode text (a lone
    surrogate such as ``"\\ud800"``, which JSON can escape but no file name, no UTF-8
    file and no cache key can hold).

    Raises:
        UserError: naming the JSON path.
    """
    stack = [(raw, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{path}: the spec is nested more than {MAX_DEPTH} levels deep "
                            f"here; a spec is a few levels of objects and lists")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path or "spec")
                stack.append((item, _join(path, key), depth + 1))
        elif isinstance(value, list):
            stack += [(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
        else:
            _check_text(value, path or "spec")


def _check_text(value: Any, path: str) -> None:
    if not isinstance(value, str):
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise UserError(f"{path.encode('utf-8', 'backslashreplace').decode()}: the text "
                        f"holds {bad!r}, half of a UTF-16 surrogate pair, which is no "
                        f"character; write the character itself (or its pair of escapes)") from None


def expand(raw: dict[str, Any], registries: Registries) -> list[dict[str, Any]]:
    """Expand a spec into resolved configs, one per grid point, all validated.

    Raises:
        UserError: the first invalid grid point, with its position and JSON paths.
    """
    if not isinstance(raw, dict):
        raise UserError("a spec must be a JSON object ({...}) at the top level")
    check_raw(raw)
    points = _object_alternatives(raw, Spec, "", registries)
    resolved = []
    for i, point in enumerate(points):
        try:
            resolved.append(resolve(point, registries))
        except UserError as exc:
            where = f"grid point {i + 1} of {len(points)}: " if len(points) > 1 else ""
            raise UserError(f"{where}{exc}") from None
    return resolved


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON spec file.

    Raises:
        UserError: missing file, or invalid JSON with line and column.
    """
    p = Path(path)
    note_outside(f"spec file {p}")
    if not p.is_file():
        raise UserError(f"spec file {str(p)!r} not found; check the path "
                        f"(example specs are in specs/)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8 "
                        f"JSON") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(p))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}; fix the syntax (JSON needs double quotes and no "
                        f"trailing commas)") from None
    except RecursionError:
        raise UserError(f"{p}: the JSON is nested too deeply to be a spec; a spec is a few "
                        f"levels of objects and lists") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise UserError(f"{p}: {exc}; give numbers of ordinary size") from None


def _unique_keys(path: Path) -> Any:
    """``object_pairs_hook`` refusing a key given twice in one object (JSON readers
    silently keep the last one, so the first value would be lost without a word)."""
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        doubled = sorted({key for key in keys if keys.count(key) > 1})
        if doubled:
            raise UserError(f"{path}: the key(s) {', '.join(map(repr, doubled))} appear twice "
                            f"in one object; keep one")
        return dict(pairs)
    return build


def json_schema() -> dict[str, Any]:
    """The JSON schema of a spec file, for editors and validators: a component may be
    written as its name alone, and any field (also inside ``saturation``, ``launcher``,
    a schedule, or a component's ``name``) may be a list of values, a grid axis.
    A component's parameters stay open: the registry checks them (``labkit plan``)."""
    schema = Spec.model_json_schema()
    defs = schema.get("$defs", {})
    if "Component" in defs:
        component = defs["Component"]
        component["properties"]["name"] = _axis(component["properties"]["name"])
        defs["Component"] = {"anyOf": [{"type": "string"}, component],
                             "description": component.get("description", "")}
    for holder in [schema, *(d for d in defs.values() if "properties" in d)]:
        holder["properties"] = {name: _axis(field) for name, field in holder["properties"].items()}
    return schema


def _axis(field: dict[str, Any]) -> dict[str, Any]:
    """``field``'s schema, or a non-empty list of such values (a grid axis)."""
    text = {k: field[k] for k in ("description", "default", "title") if k in field}
    value = {k: v for k, v in field.items() if k not in text}
    return {**text, "anyOf": [value, {"type": "array", "items": value, "minItems": 1}]}

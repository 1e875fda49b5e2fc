"""A spec becomes runs: grid axes expanded into the cartesian product, each point
resolved against the registries (names, parameters, defaults) and given the identity
of its inputs (weights files, folder data sets)."""
from __future__ import annotations

import itertools
import json
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from labkit.core.errors import UserError
from labkit.core.registry import Registries
from labkit.spec.batch_augment import check_soft_targets
from labkit.spec.files import check_raw
from labkit.spec.messages import (format_validation_error, is_list_type, is_untyped, join_path,
                                  model_type, registry_kind, validate_json_types)
from labkit.spec.schema import Component, Spec, as_component
from labkit.store.identity import Outside, RunConfig, note_outside, outside_inputs


@dataclass(frozen=True)
class Resolved:
    """One thing resolution computed from the registries: a component's parameters
    (``kind`` its registry, ``name`` its entry's name) or the identity of a data set's
    or model's inputs (``kind`` ``"data"`` or ``"weights"``, ``name`` the spec's name), from
    ``params`` (the spec's, as given) to ``result``; ``witnesses`` of the files it read
    (:mod:`labkit.store.witness`; ``[]`` when none), ``None`` when one was read without
    (:func:`labkit.store.identity.note_outside`)."""

    kind: str
    name: str
    params: Any
    result: Any
    witnesses: list[dict[str, Any]] | None

    @property
    def key(self) -> str:
        """What the result depends on besides the code and the witnessed files
        (:func:`resolution_key`)."""
        return resolution_key(self.name, self.params)


# environment variables that say where components find their files (labkit's data root,
# the torch hub's cache, ``~``): part of a resolution's key
LOCATIONS = ("LABKIT_DATA", "TORCH_HOME", "XDG_CACHE_HOME", "HOME")


def resolution_key(name: str, params: Any) -> str:
    """The key of :attr:`Resolved.key`: ``name``, ``params``, the working directory and
    the :data:`LOCATIONS` variables."""
    where = [os.getcwd(), *(os.environ.get(v) for v in LOCATIONS)]
    return json.dumps([name, params, where], sort_keys=True, ensure_ascii=False)


_RECORD: ContextVar[list[Resolved] | None] = ContextVar("labkit_resolutions", default=None)


@contextmanager
def recording() -> Iterator[list[Resolved]]:
    """Collect, in the list it yields, every :class:`Resolved` of the block, for the
    command line's cache (:mod:`labkit.cli.spec_cache`)."""
    record: list[Resolved] = []
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def _record(item: Resolved) -> None:
    record = _RECORD.get()
    if record is not None:
        record.append(item)


def _alternatives(value: Any, annotation: Any, kind: str | None, path: str,
                  registries: Registries) -> list[Any]:
    """Every value that ``value`` stands for, one per grid point."""
    if isinstance(value, list) and not is_list_type(annotation):
        if not value:
            raise UserError(f"{path or 'spec'}: an empty list is a grid axis with no values; "
                            f"give one value, or a list of the values to try")
        return [alt for item in value
                for alt in _alternatives(item, annotation, kind, path, registries)]
    if isinstance(value, list):
        if value and all(isinstance(v, list) for v in value):
            return value  # a list of lists in a list-typed field: each inner list is one point
        return [value]
    model = model_type(annotation, value)
    if model is Component and kind is not None:
        return _component_alternatives(as_component(value), kind, path, registries)
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
        if isinstance(item, list) and is_untyped(field):
            raise UserError(
                f"{join_path(path, key)}: this parameter has no type annotation, so labkit cannot "
                f"tell whether the list {item!r} is one value or a grid axis of values; "
                f"annotate it in the component's code (list[...] for a value, the item's "
                f"type for an axis)")
        axes.append(_alternatives(item, field.annotation, registry_kind(field),
                                  join_path(path, key), registries))
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
        raise UserError(f"{join_path(path, 'name')}: an empty list is a grid axis with no values; "
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


def resolve_component(value: Component, kind: str, path: str, registries: Registries,
                      spec: Any = None) -> dict[str, Any]:
    """A component's resolved spec ``{"name": …, params with defaults}``.

    Raises:
        UserError: an unknown name or invalid params, named by ``path``; an unknown key
            with the keys of the spec ``spec`` (when given) it may have been meant as
            (:func:`spec_keys`).
    """
    registry = registries[kind]
    try:
        entry = registry.get(value.name)
    except UserError as exc:
        raise UserError(f"{path}.name: {exc}") from None
    try:
        with outside_inputs() as noted:  # a validator that reads files
            params = validate_json_types(entry.params, value.params)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, entry.params, path, value.params,
                                                spec_keys(spec, registries))) from None
    resolved = params.model_dump(mode="json")
    _record(Resolved(kind, entry.name, value.params, resolved, _witnesses(noted)))
    return {"name": value.name, **resolved}


def resolve(raw: dict[str, Any], registries: Registries) -> dict[str, Any]:
    """Validate one grid point and return its resolved config (defaults filled in).

    Raises:
        UserError: naming the JSON path of every problem and how to fix it.
    """
    _check_finite(raw, "")
    try:
        spec = validate_json_types(Spec, raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, Spec, "", raw,
                                                spec_keys(raw, registries))) from None
    resolved = spec.model_dump(mode="json")
    for key, field in Spec.model_fields.items():
        kind = registry_kind(field)
        value = getattr(spec, key)
        if kind is None or value is None:
            continue
        if key == "metrics":
            for i, name in enumerate(value):
                if name not in registries.metrics:
                    raise UserError(f"metrics.{i}: {registries.metrics.unknown_message(name)}")
        elif isinstance(value, list):
            resolved[key] = [resolve_component(v, kind, f"{key}.{i}", registries, raw)
                             for i, v in enumerate(value)]
        else:
            resolved[key] = resolve_component(value, kind, key, registries, raw)
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


def spec_keys(raw: Any, registries: Registries) -> list[str]:
    """Every dotted key a spec like ``raw`` can hold: its fields, those of its sections
    (``saturation.delta``, ``launcher.jobs``) and the parameters of the components it
    names, or of their defaults (``optimizer.lr``); an unknown key is suggested those
    that end with it. ``[]`` when ``raw`` is ``None``."""
    if raw is None:
        return []
    keys = []
    for key, field in Spec.model_fields.items():
        keys.append(key)
        kind, model = registry_kind(field), model_type(field.annotation)
        if kind is not None and not is_list_type(field.annotation):
            given = raw.get(key, field.default) if isinstance(raw, dict) else field.default
            given = as_component(given.model_dump() if isinstance(given, Component) else given)
            name = given.get("name") if isinstance(given, dict) else None
            if isinstance(name, str) and name in registries[kind]:
                keys += [f"{key}.{p}" for p in registries[kind].get(name).params.model_fields]
        elif model is not None and kind is None:
            keys += [f"{key}.{p}" for p in model.model_fields]
    return keys


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
    params = {k: v for k, v in model.items() if k != "name"}
    return _identity("weights", model["name"], params, lambda: identify(rest, params),
                     f"the weights of model {model['name']!r}")


def _identity(kind: str, name: str, params: dict[str, Any], identify: Any,
              what: str) -> dict[str, Any]:
    """``identify()``, the identity of a component's inputs, recorded (:func:`recording`)
    with the witnesses of the files it noted it read; one that read something without
    noting its files (:func:`labkit.store.identity.note_outside`) is noted as ``what``."""
    with outside_inputs() as noted:
        found = identify()
    if found and not noted:
        note_outside(what)
    _record(Resolved(kind, name, params, found, None if found and not noted else _witnesses(noted)))
    return found


def _witnesses(noted: list[Outside]) -> list[dict[str, Any]] | None:
    """The witnesses of what was noted, ``None`` when one was noted without."""
    found = [o.witness for o in noted]
    return None if any(w is None for w in found) else found  # type: ignore[misc]


def _check_finite(value: Any, path: str) -> None:
    """Refuse NaN and infinities anywhere (JSON has none, but Python's reader takes
    ``NaN`` and ``Infinity``): no setting means anything with them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path or 'spec'}: {value} is not a finite number; give a number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, join_path(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, join_path(path, i))


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
    params = {k: v for k, v in dataset.items() if k != "name"}
    return _identity("data", dataset["name"], params, lambda: identify(params),
                     f"the files of dataset {dataset['name']!r}")


# beyond this a grid is almost surely a mistake (and takes long to even list)
MAX_GRID_POINTS = 10_000
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



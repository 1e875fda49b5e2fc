"""How a pydantic validation error becomes one line a user can act on: the JSON path,
the value, what is wrong and the keys or names that would be right ("did you mean")."""
from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from labkit.core.registry import UNTYPED

ModelT = TypeVar("ModelT", bound=BaseModel)


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union annotation (``X | None`` → ``[X, NoneType]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def is_list_type(annotation: Any) -> bool:
    return any(typing.get_origin(a) in (list, tuple, set, frozenset) or a in (list, tuple)
               for a in _unwrap(annotation))


def model_type(annotation: Any, value: Any = None) -> type[BaseModel] | None:
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


def is_untyped(field: Any) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(UNTYPED))


def registry_kind(field: Any) -> str | None:
    extra = field.json_schema_extra
    return extra.get("registry") if isinstance(extra, dict) else None


def join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------- validation

def format_validation_error(exc: ValidationError, model: type[BaseModel] | None,
                             prefix: str, value: Any = None, keys: Sequence[str] = ()) -> str:
    """One line per problem of ``value`` (validated against ``model``): its JSON path
    under ``prefix`` and the fix; an unknown key is suggested the dotted ``keys`` (those
    of the whole spec) that end with it (``lr`` → ``optimizer.lr``), else a close key. pydantic's names of union members in a location (a
    discriminated union's tag, a member class) are no part of the spec's path: they are
    dropped, the member the value was meant for gives the valid keys and "did you mean",
    and the complaints of the other members are left out."""
    lines: list[str] = []
    for err in exc.errors():
        path, holder, meant = _walk(model, err["loc"], value)
        if not meant:
            continue
        loc = join_path(prefix, ".".join(map(str, path))) if path else prefix or "spec"
        if err["type"] == "extra_forbidden":
            key = str(path[-1])
            valid = list(holder.model_fields) if holder else []
            close = [k for k in keys if k.endswith(f".{key}") and k != loc] or \
                difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
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
    :func:`format_validation_error`)."""
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



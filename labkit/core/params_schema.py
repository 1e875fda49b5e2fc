"""Parameter models as JSON and back, so that a spec can be resolved without importing
the modules that define its components (and torch with them): the command line keeps
each registered component's description (:func:`describe`) in its cache and rebuilds
the model from it (:func:`rebuild`; :mod:`labkit.cli.spec_cache`).

A description holds what validation and ``model_dump(mode="json")`` depend on: each
field's type, constraints, default (as JSON), description and schema extras, the
model's configuration, name and docstring. Types are taken from a closed vocabulary:
``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``, ``Literal`` of JSON values,
unions, ``list``, ``tuple``, ``set``, ``frozenset``, ``dict``, ``Annotated`` with
annotated-types constraints (``ge``, ``gt``, ``le``, ``lt``, ``multiple_of``,
``min_length``, ``max_length``) and validators (``AfterValidator`` and its kin, of a
module-level function), and pydantic models built of these. A model outside it
is not described (``None``).

Validators are code, kept by reference: a model class whose module is already imported
where it is rebuilt (say :class:`labkit.training.schedules.Schedule`, which the spec
imports) is used itself, validators and all, and so is an ``Annotated`` validator's
function (labkit's shared ones are in :mod:`labkit.spec.values`). Otherwise
:func:`rebuild` rebuilds the structure, and tells whether that is all there is to it:
no validator left out, no method validator, serializer or custom ``__init__`` in a
rebuilt model, and the JSON schema of the described model.
"""
from __future__ import annotations

import json
import sys
import types
import typing
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator,
                      WrapValidator, create_model)
from pydantic_core import to_jsonable_python

CONSTRAINTS = {annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le",
               annotated_types.Lt: "lt", annotated_types.MultipleOf: "multiple_of",
               annotated_types.MinLen: "min_length", annotated_types.MaxLen: "max_length"}
# model configuration a description carries; a model with any other is not described
CONFIG_KEYS = ("extra", "validate_default", "strict", "frozen", "title")
# validators in Annotated metadata, kept by reference to a module-level function
VALIDATORS = {"after": AfterValidator, "before": BeforeValidator, "plain": PlainValidator,
              "wrap": WrapValidator}
SCALARS = {int: "int", float: "float", str: "str", bool: "bool", type(None): "none"}
CONTAINERS = {list: "list", set: "set", frozenset: "frozenset"}


class Unsupported(Exception):
    """A type outside the vocabulary of the module docstring."""


def describe(model: type[BaseModel]) -> dict[str, Any] | None:
    """The JSON description of the pydantic model ``model``; ``None`` when a type or
    setting in it is outside the vocabulary."""
    try:
        return _model(model, ())
    except Unsupported:
        return None


def _json(value: Any) -> Any:
    """``value`` as JSON data, refusing what JSON cannot carry unchanged."""
    try:
        data = to_jsonable_python(value)
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise Unsupported(str(exc)) from None
    return json.loads(text)


def _custom(model: type[BaseModel]) -> bool:
    """Whether ``model`` runs code of its own when validated or dumped."""
    decorators = model.__pydantic_decorators__
    return (any(getattr(decorators, kind) for kind in (
        "validators", "field_validators", "root_validators", "field_serializers",
        "model_serializers", "model_validators", "computed_fields"))
        or model.__pydantic_post_init__ is not None or "__init__" in vars(model))


def _model(model: type[BaseModel], stack: tuple[type, ...]) -> dict[str, Any]:
    if model in stack:
        raise Unsupported(f"{model.__name__} contains itself")
    config = dict(model.model_config)
    if set(config) - set(CONFIG_KEYS):
        raise Unsupported(f"{model.__name__}: configuration {sorted(set(config) - set(CONFIG_KEYS))}")
    fields = {name: _field(field, (*stack, model)) for name, field in model.model_fields.items()}
    return {"t": "model", "name": model.__name__, "module": model.__module__,
            "qualname": model.__qualname__, "doc": model.__doc__, "config": _json(config),
            "fields": fields, "custom": _custom(model)}


def _field(field: Any, stack: tuple[type, ...]) -> dict[str, Any]:
    if (field.alias or field.validation_alias or field.serialization_alias
            or field.default_factory is not None or not isinstance(field.discriminator, str | None)):
        raise Unsupported("aliases, default factories, discriminator functions")
    extra = field.json_schema_extra
    if extra is not None and not isinstance(extra, dict):
        raise Unsupported("a json_schema_extra function")
    out: dict[str, Any] = {"type": _type(field.annotation, stack),
                           "constraints": _constraints(field.metadata)}
    if not field.is_required():
        out["default"] = _json(field.default)
    if field.description is not None:
        out["description"] = field.description
    if extra:
        out["extra"] = _json(extra)
    for setting in ("exclude", "discriminator"):  # what the dump leaves out; a union's tag
        if getattr(field, setting):
            out[setting] = getattr(field, setting)
    return out


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """Constraints (``{"ge": 0, …}``) and validators (``"validators"``: each a
    :data:`VALIDATORS` kind and its function's module and qualified name) of ``Annotated``
    or field metadata."""
    found: dict[str, Any] = {}
    for item in metadata:
        key = CONSTRAINTS.get(type(item))
        if key is not None:
            found[key] = _json(getattr(item, key))
        elif type(item) in VALIDATORS.values():
            function = item.func
            if "<" in function.__qualname__:  # a lambda or a local function: not found again
                raise Unsupported(f"validator {function!r}")
            found.setdefault("validators", []).append(
                [next(k for k, v in VALIDATORS.items() if v is type(item)),
                 function.__module__, function.__qualname__])
        else:
            raise Unsupported(f"metadata {item!r}")
    return found


def _metadata(constraints: dict[str, Any], custom: list[bool]) -> tuple[dict[str, Any], list[Any]]:
    """``(keyword constraints, validator objects)`` of :func:`_constraints`' dict: each
    validator's function when its module is loaded; else it is left out, and the
    rebuilt model is not exact."""
    kwargs = {k: v for k, v in constraints.items() if k != "validators"}
    validators = []
    for kind, module, qualname in constraints.get("validators", []):
        found: Any = sys.modules.get(module)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if callable(found):
            validators.append(VALIDATORS[kind](found))
        else:
            custom.append(True)
    return kwargs, validators


def _type(annotation: Any, stack: tuple[type, ...]) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return {"t": "any"}
    if annotation in SCALARS:
        return {"t": SCALARS[annotation]}
    if origin is Annotated:
        inner, *meta = args
        constraints: dict[str, Any] = {}
        description = None
        for item in meta:
            if hasattr(item, "metadata") and hasattr(item, "description"):  # a FieldInfo
                constraints.update(_constraints(item.metadata))
                description = item.description or description
            else:
                constraints.update(_constraints([item]))
        return {"t": "annotated", "of": _type(inner, stack), "constraints": constraints,
                "description": description}
    if origin is Literal:
        return {"t": "literal", "values": [_literal(a) for a in args]}
    if origin in (Union, types.UnionType):
        return {"t": "union", "of": [_type(a, stack) for a in args]}
    if annotation in CONTAINERS or origin in CONTAINERS:
        item = _type(args[0], stack) if args else {"t": "any"}
        return {"t": CONTAINERS[origin or annotation], "item": item}
    if annotation is tuple or origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return {"t": "tuple", "item": _type(args[0], stack) if args else {"t": "any"}}
        return {"t": "tuple", "items": [_type(a, stack) for a in args]}
    if annotation is dict or origin is dict:
        key, value = args or (Any, Any)
        return {"t": "dict", "key": _type(key, stack), "value": _type(value, stack)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation, stack)
    raise Unsupported(f"type {annotation!r}")


def _literal(value: Any) -> Any:
    if value is not None and type(value) not in (int, float, str, bool):
        raise Unsupported(f"literal {value!r}")
    return value


# ---------------------------------------------------------------- rebuilding

def loaded_class(description: dict[str, Any]) -> type[BaseModel] | None:
    """The model class a description was made of, when its module is imported in this
    process already (nothing is imported); ``None`` otherwise."""
    found: Any = sys.modules.get(description.get("module") or "")
    for part in str(description.get("qualname", "")).split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseModel) and found.__name__ == description["name"]:
        return found
    return None


def rebuild(description: dict[str, Any], json_schema: Any = None,
            base: type[BaseModel] = BaseModel) -> tuple[type[BaseModel], bool]:
    """The pydantic model a :func:`describe` description stands for, and whether it is
    exact: validates and dumps every value as the described model does.

    Each model in it is the class itself when its module is loaded
    (:func:`loaded_class`; ``base`` given: never at the top), else a model of the same
    name, fields, types, constraints, defaults and configuration, without validators,
    made from ``base`` at the top. Exact means: no rebuilt model had code of its own
    (validators, serializers, ``__init__``: ``description["custom"]``), and the JSON
    schema is ``json_schema`` (the described model's; ``None``: not compared).

    Raises:
        Unsupported: a default the type cannot hold.
    """
    custom: list[bool] = []
    model = _rebuilt(description, base, custom)
    same = json_schema is None or model.model_json_schema() == json_schema
    return model, same and not any(custom)


def _rebuilt(description: dict[str, Any], base: type[BaseModel],
             custom: list[bool]) -> type[BaseModel]:
    if base is BaseModel:
        found = loaded_class(description)
        if found is not None:
            return found
    custom.append(bool(description["custom"]))
    fields = {}
    for name, field in description["fields"].items():
        kind = field["type"]
        default = _default(kind, field["default"], custom) if "default" in field else ...
        settings = {k: field[k] for k in ("exclude", "discriminator") if k in field}
        constraints, validators = _metadata(field["constraints"], custom)
        annotation = _annotation(kind, custom)
        if validators:
            annotation = Annotated[(annotation, *validators)]
        fields[name] = (annotation, Field(
            default, description=field.get("description"), json_schema_extra=field.get("extra"),
            **settings, **constraints))
    configured = type(description["name"], (base,),
                      {"model_config": ConfigDict(**description["config"]), "__module__": __name__})
    return create_model(description["name"], __base__=configured, __doc__=description["doc"],
                        **fields)


def _annotation(kind: dict[str, Any], custom: list[bool]) -> Any:
    t = kind["t"]
    simple = {"any": Any, "int": int, "float": float, "str": str, "bool": bool, "none": type(None)}
    if t in simple:
        return simple[t]
    if t == "annotated":
        constraints, validators = _metadata(kind["constraints"], custom)
        return Annotated[(_annotation(kind["of"], custom),
                          Field(description=kind["description"], **constraints), *validators)]
    if t == "literal":
        return Literal[tuple(kind["values"])]
    if t == "union":
        return Union[tuple(_annotation(k, custom) for k in kind["of"])]
    if t in ("list", "set", "frozenset"):
        return {"list": list, "set": set, "frozenset": frozenset}[t][_annotation(kind["item"], custom)]
    if t == "tuple":
        if "item" in kind:
            return tuple[_annotation(kind["item"], custom), ...]
        return tuple[tuple(_annotation(k, custom) for k in kind["items"])]
    if t == "dict":
        return dict[_annotation(kind["key"], custom), _annotation(kind["value"], custom)]
    return _rebuilt(kind, BaseModel, custom)


def _default(kind: dict[str, Any], value: Any, custom: list[bool]) -> Any:
    """A default from its JSON form, as the type holds it: tuples and models built again
    (their dump is then the JSON form), everything else as it is (a float field's default
    ``1`` stays the integer it was)."""
    t = kind["t"]
    if t == "annotated":
        return _default(kind["of"], value, custom)
    if t == "tuple" and isinstance(value, list):
        items = kind.get("items") or [kind["item"]] * len(value)
        return tuple(_default(k, v, custom) for k, v in zip(items, value))
    if t == "list" and isinstance(value, list):
        return [_default(kind["item"], v, custom) for v in value]
    if t == "model" and isinstance(value, dict):
        fields = kind["fields"]
        return _rebuilt(kind, BaseModel, custom).model_construct(**{
            name: _default(fields[name]["type"], v, custom) for name, v in value.items()
            if name in fields})
    if t == "union" and isinstance(value, (list, dict)):
        fits = [k for k in kind["of"] if _shape(k) == type(value).__name__ and _holds(k, value)]
        if len(fits) != 1:
            raise Unsupported("a container default of a union of containers")
        return _default(fits[0], value, custom)
    return value


def _holds(kind: dict[str, Any], value: Any) -> bool:
    """Whether a model could hold the JSON object ``value`` (its keys are fields, and its
    ``name``, when it has a fixed one, is the value's); anything else could."""
    if kind["t"] != "model" or not isinstance(value, dict):
        return True
    fields = kind["fields"]
    name = fields.get("name", {}).get("type", {})
    return set(value) <= set(fields) and (
        "name" not in value or name.get("t") != "literal" or value["name"] in name["values"])


def _shape(kind: dict[str, Any]) -> str | None:
    """``"list"`` or ``"dict"``: the JSON form of a type's values, when a container."""
    t = kind["t"]
    if t == "annotated":
        return _shape(kind["of"])
    return {"list": "list", "tuple": "list", "set": "list", "frozenset": "list",
            "dict": "dict", "model": "dict"}.get(t)

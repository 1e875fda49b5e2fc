"""Named registries of components (models, datasets, optimizers, …).

One registry per kind. An entry is a factory plus the pydantic model of the parameters
a spec may give it. The parameter model comes from the factory's ``Params`` attribute
when it has one (a pydantic model), otherwise from its signature: every keyword that
the engine does not supply itself (the registry's *context* names) becomes a spec
parameter with the signature's type and default. An unannotated parameter with a list
default takes lists as values; any other unannotated parameter given a list is an error
asking the plugin to annotate it (a list is a grid axis only where the type says one
value). Unknown names get "did you mean".
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, create_model

from labkit.core.errors import UserError

# the type of every seed parameter: numpy's legacy seeding (which labkit seeds at every
# run start) takes 0 <= seed < 2**32, and refuses anything else only once a run starts
Seed = Annotated[int, Field(ge=0, lt=2 ** 32)]

# marks a parameter without a type annotation (see params_model): a list given for it
# could be one value or a grid axis, so the spec expansion refuses to guess
UNTYPED = "untyped"


@dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes:
        name: the name used in specs (for a prefix entry, the prefix such as ``tv:``).
        obj: the factory (function or class).
        plugin: name of the plugin that registered it.
        params: pydantic model (``extra="forbid"``) of the spec parameters.
        prefix: whether ``name`` is a prefix; the rest of the spec name is passed to
            the factory as its first argument.
    """

    name: str
    obj: Any
    plugin: str
    params: type[BaseModel]
    prefix: bool = False


# params_model's models by (name, id(obj), context), with obj kept to tell a reused id:
# registries are rebuilt often in one process (plugins.use) and building a model costs
_MODELS: dict[tuple[str, int, tuple[str, ...]], tuple[Any, type[BaseModel]]] = {}


def params_model(name: str, obj: Any, context: tuple[str, ...]) -> type[BaseModel]:
    """Pydantic model of the spec parameters of ``obj`` (see module docstring); built
    once per ``name``, ``obj`` and ``context`` in a process."""
    key = (name, id(obj), context)
    kept = _MODELS.get(key)
    if kept is not None and kept[0] is obj:
        return kept[1]
    model = _params_model(name, obj, context)
    _MODELS[key] = (obj, model)
    return model


def _params_model(name: str, obj: Any, context: tuple[str, ...]) -> type[BaseModel]:
    declared = getattr(obj, "Params", None)
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return declared
    target = obj.__init__ if inspect.isclass(obj) else obj
    hints = typing.get_type_hints(target, include_extras=True)
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(target).parameters.items():
        if pname in context or pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TypeError(
                f"{name}: parameter {pname!r} needs a default (or list it as a context "
                f"argument of the registry); specs can only fill parameters with defaults")
        if pname in hints:
            fields[pname] = (hints[pname], p.default)
        elif isinstance(p.default, (list, tuple)):
            # unannotated with a list default: a list in a spec is one value, not an axis
            fields[pname] = (list[Any], list(p.default))
        else:
            fields[pname] = (Any, Field(p.default, json_schema_extra={UNTYPED: True}))
    safe = "".join(c if c.isalnum() else "_" for c in name)
    return create_model(f"{safe}_params", __config__=ConfigDict(extra="forbid"), **fields)


class Registry:
    """Name → :class:`Entry` for one kind of component.

    Args:
        kind: plural noun shown to users (``"models"``).
        context: argument names the engine passes itself; never spec parameters.
    """

    def __init__(self, kind: str, context: tuple[str, ...] = ()):
        self.kind = kind
        self.context = context
        self._entries: dict[str, Entry] = {}
        self.current_plugin = "labkit"

    def register(self, name: str, obj: Any, *, prefix: bool = False,
                 params: type[BaseModel] | None = None) -> Any:
        """Register ``obj`` under ``name``; returns ``obj``.

        Raises:
            ValueError: the name is taken, naming both plugins.
        """
        if name in self._entries:
            other = self._entries[name].plugin
            raise ValueError(
                f"{self.kind[:-1]} {name!r} is registered twice: by plugin {other!r} and "
                f"by plugin {self.current_plugin!r}; rename one of them or uninstall "
                f"one plugin (or limit loading with LABKIT_PLUGINS=name,…)")
        model = params or params_model(name, obj, self.context)
        self._entries[name] = Entry(name, obj, self.current_plugin, model, prefix)
        return obj

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        """The entry for ``name`` and, for prefix entries, the rest of the name.

        Raises:
            UserError: unknown name, with close matches and how to list names.
        """
        if name in self._entries and not self._entries[name].prefix:
            return self._entries[name], None
        for entry in self._entries.values():
            if entry.prefix and name.startswith(entry.name) and len(name) > len(entry.name):
                return entry, name[len(entry.name):]
        raise UserError(self.unknown_message(name))

    def get(self, name: str) -> Entry:
        """The entry for ``name`` (see :meth:`resolve`)."""
        return self.resolve(name)[0]

    def unknown_message(self, name: str) -> str:
        """A message for an unknown ``name`` with "did you mean" suggestions."""
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (f"unknown {self.kind[:-1]} {name!r}.{hint} "
                f"Run `labkit list {self.kind}` to see the available names.")

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the component ``name``: ``factory([rest of name,] *args, **kwargs)``."""
        entry, rest = self.resolve(name)
        if rest is not None:
            return entry.obj(rest, *args, **kwargs)
        return entry.obj(*args, **kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self) -> list[Entry]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UserError:
            return False
        return True


KINDS: dict[str, tuple[str, ...]] = {
    # kind: names the engine supplies to every factory of that kind
    "models": ("num_classes", "in_channels", "resolution"),
    "datasets": (),
    "optimizers": ("params",),
    "schedulers": ("optimizer", "epochs", "steps_per_epoch"),
    "metrics": ("num_classes",),
    "methods": ("context",),
    "analyses": ("run",),
    "loggers": ("run",),
}


class Registries:
    """One :class:`Registry` per kind in :data:`KINDS`, as attributes."""

    models: Registry
    datasets: Registry
    optimizers: Registry
    schedulers: Registry
    metrics: Registry
    methods: Registry
    analyses: Registry
    loggers: Registry

    def __init__(self, registry: Callable[[str, tuple[str, ...]], Registry] = Registry) -> None:
        # ``registry(kind, context)`` makes each kind's registry (the command line's cache
        # rebuilds them from what it kept: labkit.cli.cached_registries)
        self._all = {kind: registry(kind, context) for kind, context in KINDS.items()}
        # {plugin name: version} of the plugins that registered here, set by the loader;
        # every run records it
        self.plugin_versions: dict[str, str] = {}
        # a picklable zero-argument callable that builds the same registries in another
        # process (a run on several processes needs it); None: only this process can
        self.rebuild: Callable[[], Registries] | None = None
        for kind, registry in self._all.items():
            setattr(self, kind, registry)

    def __getitem__(self, kind: str) -> Registry:
        if kind not in self._all:
            close = difflib.get_close_matches(kind, list(self._all), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown kind {kind!r}.{hint} Kinds: {', '.join(self._all)}.")
        return self._all[kind]

    def __iter__(self):
        return iter(self._all.values())

    def set_plugin(self, plugin: str) -> None:
        """Attribute the following registrations to ``plugin`` (used by the loader)."""
        for registry in self._all.values():
            registry.current_plugin = plugin


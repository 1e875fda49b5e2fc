"""Registries rebuilt from what the command line kept (:mod:`labkit.cli.spec_cache`):
enough to expand and resolve any spec (:func:`labkit.spec.expand`) without importing a
component's module, torch or a plugin.

Each component's parameter model is rebuilt from its description
(:func:`labkit.core.params_schema.rebuild`). Where the rebuilt model is exact, a spec's
parameters are validated by it, new values and mistakes alike (the same messages).
Where it is not (the model has validators of its own), its fields still tell grid axes
apart, and parameters are resolved only as the registries resolved them before (the
kept resolutions). A factory is stood for by :class:`CachedFactory`: what it declares,
and the identities of files (a data set's folder, a model's weights) as computed before
while their witnesses hold. Whatever is not kept raises :class:`NotCached`, and the
command resolves the spec with the registries instead.
"""
from __future__ import annotations

import copy
import fnmatch
import json
from typing import Any

from pydantic import BaseModel

from labkit.cli import spec_cache
from labkit.core.errors import UserError
from labkit.core.params_schema import Unsupported, rebuild
from labkit.core.registry import Entry, Registries, Registry
from labkit.spec.grid import resolution_key


class NotCached(Exception):
    """A spec needs something the cache does not hold: resolve it with the registries."""


def _kept_result(kept: dict[str, Any], kind: str, name: str, params: Any) -> Any:
    found = spec_cache.resolution(kept, kind, resolution_key(name, params))
    if found is None:
        raise NotCached(f"{kind} {name} {params!r}")
    return copy.deepcopy(found["result"])


class CachedFactory:
    """Stands for a component's factory in :class:`CachedRegistry`: whether it accepts
    soft targets, and its ``data_identity`` / ``weights_identity`` hooks when it has
    them, answered from the kept identities."""

    def __init__(self, listed: dict[str, Any], kept: dict[str, Any]):
        self.accepts_soft_targets = listed["accepts_soft_targets"]
        name = listed["name"]
        if listed["data_identity"]:
            self.data_identity = lambda params: _kept_result(kept, "data", name, params)
        if listed["weights_identity"]:
            self.weights_identity = lambda rest, params: _kept_result(
                kept, "weights", name + (rest or ""), params)


class _KeptParams:
    """Parameters resolved before: what validation returns for a model that is not
    exact (see :func:`_kept_model`)."""

    def __init__(self, resolved: dict[str, Any]):
        self._resolved = resolved

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return copy.deepcopy(self._resolved)


def _kept_model(kind: str, name: str, kept: dict[str, Any]) -> type[BaseModel]:
    """A base for a rebuilt model that is not exact: validating JSON with it gives the
    parameters resolved before for the same input, or raises :class:`NotCached`."""

    class Kept(BaseModel):
        @classmethod
        def model_validate_json(cls, json_data: str | bytes | bytearray,
                                **_: Any) -> Any:  # type: ignore[override]
            return _KeptParams(_kept_result(kept, kind, name, json.loads(json_data)))

    return Kept


class CachedRegistry(Registry):
    """One kind's registry rebuilt from the summary's entries ``listed``, each entry
    rebuilt when first resolved."""

    def __init__(self, kind: str, context: tuple[str, ...], listed: list[dict[str, Any]],
                 kept: dict[str, Any]):
        super().__init__(kind, context)
        self._listed = listed
        self._kept = kept
        self._built: dict[str, Entry] = {}

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        listed = spec_cache.lookup(self._listed, name)
        if listed is None:
            raise UserError(self.unknown_message(name))
        entry = self._built.get(listed["name"])
        if entry is None:
            entry = self._built[listed["name"]] = self._entry(listed)
        return entry, (name[len(listed["name"]):] if listed["prefix"] else None)

    def _entry(self, listed: dict[str, Any]) -> Entry:
        if listed["schema"] is None:
            raise NotCached(f"{self.kind} {listed['name']}: no description of its parameters")
        try:
            params, exact = rebuild(listed["schema"], listed["json_schema"])
            if not exact:
                params, _ = rebuild(listed["schema"],
                                    base=_kept_model(self.kind, listed["name"], self._kept))
        except Unsupported as exc:
            raise NotCached(f"{self.kind} {listed['name']}: {exc}") from None
        return Entry(listed["name"], CachedFactory(listed, self._kept), listed["plugin"],
                     params, listed["prefix"])

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(e["name"] for e in self._listed if fnmatch.fnmatchcase(e["name"], pattern))

    def __contains__(self, name: str) -> bool:  # a metric's name: nothing to rebuild
        return spec_cache.lookup(self._listed, name) is not None


def cached_registries() -> Registries | None:
    """Registries rebuilt from the kept summary and resolutions; ``None`` when no
    current summary is kept (the registries have to be built)."""
    record = spec_cache.current_summary()
    if record is None:
        return None
    kept = spec_cache.resolutions(spec_cache.token(record))
    kinds = record["kinds"]
    return Registries(lambda kind, context: CachedRegistry(kind, context, kinds.get(kind, []),
                                                           kept))

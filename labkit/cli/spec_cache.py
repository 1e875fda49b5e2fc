"""Validated grids and a summary of the registries, cached between commands, so that
``labkit status``, ``plan`` and ``list`` start without importing torch or the plugins.

Expanding a spec needs the registries (every component's parameter defaults enter the
resolved config, and so the run's identity), and filling them imports every plugin and
model module, torch among them. So the command line keeps, per spec, the resolved
configs of its last successful validation (:func:`store_grid`), and reads them back
(:func:`cached_grid`) while nothing the expansion depends on has changed:

* the key: the exact spec after ``--set`` and ``--device`` (key order included: it
  orders the grid) and the working directory;
* the environment, compared whole (:func:`environment`): labkit's version, the
  Python interpreter, the installed ``labkit`` entry points (name,
  value, distribution, version, location; read with :mod:`importlib.metadata`, nothing
  imported), ``LABKIT_PLUGINS`` and ``LABKIT_DISABLE_PLUGIN_AUTOLOAD``, the installed
  torch and torchvision versions;
* the code (:func:`sources`): size and mtime_ns of every ``.py`` file of labkit and
  of each loaded plugin's package, and of every module that provided a registry entry
  or its parameter model, and where each of their top-level modules is found on
  ``sys.path``; recorded when the cache is written, looked up again when it is read.

What is never cached: a spec that fails validation (it is validated again every time,
with the same message); a grid whose configs depend on something outside the spec and
the code (a folder's content digest, a weights file, another run's checkpoint, another
spec file: :func:`labkit.store.identity.note_outside`), which may change without any of the
above changing; and anything while the process-wide registries are not the
installation's (:func:`labkit.cli.plugins.from_installation`: a test registered plugins in
process). :func:`summary` keeps, under the same fingerprint, what ``labkit list``
prints and which components have ``plan_notes`` or ``linked_runs``.

The cache lives in :func:`labkit.store.local_cache.cache_dir` (``$LABKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/labkit``, else ``~/.cache/labkit``). Files are written atomically;
one that cannot be read, or a folder that cannot be written, only means that the
registries are built as without a cache.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import labkit
from labkit.cli import plugins
from labkit.core.registry import Registries
from labkit.store.local_cache import cache_dir, keep_newest, read_record, write_record

FORMAT = 2
GRIDS = "grids"
SUMMARY = "registries.json"
MAX_GRIDS = 256  # older grids are removed beyond this many


def usable() -> bool:
    """Whether this process may read and write the cache (see the module docstring)."""
    return plugins.from_installation()


def _version(distribution: str) -> str | None:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What, besides the spec and the source files, decides how a spec expands."""
    entry_points = sorted(
        [ep.name, ep.value, ep.dist.name if ep.dist else "", ep.dist.version if ep.dist else "",
         str(ep.dist.locate_file("")) if ep.dist else ""]
        for ep in md.entry_points(group=plugins.GROUP))
    return {"format": FORMAT, "labkit": labkit.__version__, "python": sys.version,
            "executable": sys.executable, "plugins": entry_points,
            "env": {name: os.environ.get(name) for name in (plugins.ALLOW_ENV,
                                                           plugins.DISABLE_ENV)},
            "torch": _version("torch"), "torchvision": _version("torchvision")}


def _module_file(module_name: str | None) -> Path | None:
    """The source file of an imported module, ``None`` when it has none."""
    module = sys.modules.get(module_name or "")
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def _package_files(top: str) -> list[Path]:
    """Every ``.py`` file of the top-level package ``top`` (its one file when it is a
    plain module)."""
    file = _module_file(top)
    if file is None:
        return []
    if file.name != "__init__.py":
        return [file]
    return sorted(file.parent.rglob("*.py"))


def _top(module_name: str | None) -> str:
    return (module_name or "").partition(".")[0]


def _origin(top: str) -> str | None:
    """Where importing the top-level module ``top`` would find it now (imports
    nothing); ``None`` when nowhere."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _defining_module(obj: Any) -> str | None:
    """The name of the module that defines ``obj`` (a module, function, class or
    instance)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    return getattr(obj, "__module__", None) or type(obj).__module__


def sources(registries: Registries) -> dict[str, Any]:
    """The code the registries come from: ``{"files": {path: [mtime_ns, size]},
    "modules": {top-level module: its file}}`` (see the module docstring). The files are
    every ``.py`` file of labkit and of each plugin's top-level package, and the module
    file of every entry and parameter model; the modules are the top-level ones of all
    of these, so that another installation of one (a changed ``sys.path``) is noticed."""
    tops = {"labkit"} | {_top(_defining_module(plugin))
                         for _, plugin in plugins.plugin_manager().list_name_plugin()}
    files = {file for top in tops for file in _package_files(top)}
    for registry in registries:
        for entry in registry.entries():
            for obj in (entry.obj, entry.params):
                file = _module_file(_defining_module(obj))
                if file is not None:
                    files.add(file)
                    tops.add(_top(_defining_module(obj)))
    found = {str(path): _stat(path) for path in files}
    return {"files": {path: stat for path, stat in sorted(found.items()) if stat is not None},
            "modules": {top: _origin(top) for top in sorted(tops) if top}}


def _stat(path: str | Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _is_current(record: Any) -> bool:
    """Whether a cache record was written in this environment from this code."""
    if not isinstance(record, dict) or record.get("environment") != environment():
        return False
    code = record.get("sources")
    if not isinstance(code, dict):
        return False
    files, modules = code.get("files"), code.get("modules")
    return (isinstance(files, dict) and isinstance(modules, dict)
            and all(_stat(path) == stat for path, stat in files.items())
            and all(_origin(top) == origin for top, origin in modules.items()))


def _read(path: Path) -> dict[str, Any] | None:
    """A current cache record, ``None`` when absent, unreadable, damaged or stale."""
    record = read_record(path)
    return record if _is_current(record) else None


def _record(registries: Registries, **content: Any) -> dict[str, Any]:
    return {"environment": environment(), "sources": sources(registries), **content}


# ---------------------------------------------------------------- validated grids

def grid_key(raw: Any) -> str:
    """The cache key of a spec: its exact JSON (key order kept) and the working
    directory (relative paths in it)."""
    text = json.dumps({"spec": raw, "cwd": os.getcwd()}, ensure_ascii=False)
    # a lone surrogate (no spec holds one: labkit.spec.check_raw) must not crash a key
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _grid_path(raw: Any) -> Path:
    return cache_dir() / GRIDS / f"{grid_key(raw)}.json"


def cached_grid(raw: Any) -> list[dict[str, Any]] | None:
    """The resolved configs :func:`store_grid` kept for ``raw``, when still current."""
    if not usable():
        return None
    record = _read(_grid_path(raw))
    configs = record.get("configs") if record else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        return None
    return configs


def store_grid(raw: Any, configs: list[dict[str, Any]], registries: Registries) -> None:
    """Keep the resolved configs of a validated spec (the registries it was validated
    with give the source files), and the :func:`summary` of those registries when it is
    not kept yet (``plan`` reads it). Configs that JSON does not carry unchanged (a
    tuple, a non-string key) are not kept: a cached grid must equal a computed one."""
    if not usable() or json.loads(json.dumps(configs)) != configs:
        return
    path = _grid_path(raw)
    if write_record(path, _record(registries, configs=configs)):
        keep_newest(path.parent, MAX_GRIDS)
    summary()


# ---------------------------------------------------------------- registry summary

def _default_text(field: Any) -> str:
    """A parameter's default as a user would write it in a spec (JSON)."""
    if field.is_required():
        return "<required>"
    value = field.default.model_dump(mode="json") if hasattr(field.default, "model_dump") \
        else field.default
    return json.dumps(value, default=str)


def summarize(registries: Registries) -> dict[str, list[dict[str, Any]]]:
    """Per kind, each entry's name, plugin, whether it is a prefix, its parameters with
    defaults (as ``labkit list`` shows them) and whether it has ``plan_notes`` and
    ``linked_runs`` (``labkit plan`` builds the registries only for those)."""
    return {registry.kind: [
        {"name": e.name, "plugin": e.plugin, "prefix": e.prefix,
         "params": ", ".join(f"{n}={_default_text(f)}" for n, f in e.params.model_fields.items()),
         "plan_notes": getattr(e.obj, "plan_notes", None) is not None,
         "linked_runs": getattr(e.obj, "linked_runs", None) is not None}
        for e in registry.entries()] for registry in registries}


def summary() -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize` of the process-wide registries: from the cache when current,
    else computed (building the registries) and cached."""
    path = cache_dir() / SUMMARY
    record = _read(path) if usable() else None
    kinds = record.get("kinds") if record else None
    if isinstance(kinds, dict):
        return kinds
    registries = plugins.registries()
    kinds = summarize(registries)
    if usable():
        write_record(path, _record(registries, kinds=kinds))
    return kinds


def matching(entries: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    """The entries whose name matches the shell-style wildcard ``pattern``, by name."""
    return sorted((e for e in entries if fnmatch.fnmatchcase(e["name"], pattern)),
                  key=lambda e: e["name"])


def lookup(entries: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The entry a component ``name`` resolves to (as :meth:`Registry.resolve`: an exact
    name, else a prefix entry), ``None`` when none."""
    for entry in entries:
        if entry["name"] == name and not entry["prefix"]:
            return entry
    for entry in entries:
        if entry["prefix"] and name.startswith(entry["name"]) and len(name) > len(entry["name"]):
            return entry
    return None

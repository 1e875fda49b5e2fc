"""What the command line keeps of the registries between commands, so that ``labkit
status``, ``plan``, ``plot``, ``report`` and ``list`` read any spec, new or edited,
without importing torch or the plugins.

Resolving a spec needs every component's parameter model (names, types, defaults:
they enter the resolved config, and so the run's identity), and filling the registries
imports every plugin and model module, torch among them. So each time the registries
are built, the command line keeps (per installation, below):

* the **summary** (:func:`summary`, ``registries.json``): per kind, each component's
  name, plugin, parameters as ``labkit list`` prints them, its parameter model as JSON
  (:func:`labkit.core.params_schema.describe`) with its JSON schema, and what its factory
  declares (``accepts_soft_targets``, ``data_identity``, ``weights_identity``,
  ``plan_notes``, ``linked_runs``), and which entry points implement the
  ``labkit_layer_measures`` hook (:func:`layer_measure_plugins`: ``results --table
  layers`` loads those alone). :mod:`labkit.cli.cached_registries` rebuilds the models
  from it, so a spec is expanded and resolved with no registries;
* the **resolutions** seen (``resolutions.json``; :func:`store_resolutions`): a
  component's resolved parameters where its rebuilt model is not exact (its model has
  validators of its own), and the identity of a data set's files or of a model's
  weights (which reads files) with the witnesses of those files
  (:mod:`labkit.store.witness`), each under its params, the working directory and
  where files are looked for (:func:`labkit.spec.grid.resolution_key`);
* the runs **checked** (``checked.json``; :func:`store_checked`): each run's resolved
  config (with the working directory and run-id) that passed the checks ``plan`` and
  ``run`` make before training (models built on the ``meta`` device, every plugin's
  ``labkit_check_run``), with the witnesses of the files those checks read.

All of it is used only while nothing it depends on changed (:func:`environment`: the
installation, its entry points, the plugin switches, the torch, torchvision and
pydantic versions; :func:`sources`: the size and mtime of every ``.py`` file of labkit
and of each plugin's package and of each module that provided a registry entry, and
where their top-level modules are found); the resolutions and checked runs carry the
summary's :func:`token`. Nothing is kept of a spec that failed, of an identity or check
that read files it did not name (:func:`labkit.store.identity.note_outside` without
paths, such as another run's checkpoint), or while the process-wide registries are not
the installation's (:func:`labkit.cli.plugins.from_installation`: a test registered
plugins in process).

The cache of an installation lives in ``<cache dir>/installations/<key>``: ``key`` a
digest of the interpreter's path and the folder labkit is imported from
(:func:`installation_dir`), so two virtual environments or checkouts on one machine keep
theirs side by side; the cache dir is :func:`labkit.store.local_cache.cache_dir`. Files
are written atomically; one that cannot be read, or a folder that cannot be written,
only means that the registries are built as without a cache.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import labkit
from labkit.cli import plugins
from labkit.core import params_schema
from labkit.core.registry import Registries
from labkit.spec.grid import Resolved
from labkit.store import witness
from labkit.store.local_cache import cache_dir, read_record, write_record

FORMAT = 4
INSTALLATIONS = "installations"
SUMMARY = "registries.json"
RESOLUTIONS = "resolutions.json"
CHECKED = "checked.json"
MAX_RESOLUTIONS = 256  # per component; the oldest are dropped beyond this
MAX_CHECKED = 4096  # runs; the oldest are dropped beyond this


def usable() -> bool:
    """Whether this process may read and write the cache (see the module docstring)."""
    return plugins.from_installation()


def installation_dir() -> Path:
    """The cache folder of this installation: named by a digest of the interpreter's
    path and of the folder labkit is imported from."""
    where = f"{sys.executable}\0{Path(labkit.__file__).resolve().parent}"
    return cache_dir() / INSTALLATIONS / hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _version(distribution: str) -> str | None:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What, besides the spec and the source files, decides how a spec resolves."""
    entry_points = sorted(
        [ep.name, ep.value, ep.dist.name if ep.dist else "", ep.dist.version if ep.dist else "",
         str(ep.dist.locate_file("")) if ep.dist else ""]
        for ep in md.entry_points(group=plugins.GROUP))
    return {"format": FORMAT, "labkit": labkit.__version__, "python": sys.version,
            "executable": sys.executable, "plugins": entry_points,
            "env": {name: os.environ.get(name) for name in (plugins.ALLOW_ENV,
                                                           plugins.DISABLE_ENV)},
            "versions": {name: _version(name) for name in ("torch", "torchvision", "pydantic")}}


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
    """Whether a summary record was written in this environment from this code."""
    if not isinstance(record, dict) or record.get("environment") != environment():
        return False
    code = record.get("sources")
    if not isinstance(code, dict):
        return False
    files, modules = code.get("files"), code.get("modules")
    return (isinstance(files, dict) and isinstance(modules, dict)
            and all(_stat(path) == stat for path, stat in files.items())
            and all(_origin(top) == origin for top, origin in modules.items()))


def token(record: dict[str, Any]) -> str:
    """The digest of a summary's environment and sources: the resolutions and checked
    runs kept under it are valid while it is current."""
    text = json.dumps([record.get("environment"), record.get("sources")], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- registry summary

def _default_text(field: Any) -> str:
    """A parameter's default as a user would write it in a spec (JSON)."""
    if field.is_required():
        return "<required>"
    value = field.default.model_dump(mode="json") if hasattr(field.default, "model_dump") \
        else field.default
    return json.dumps(value, default=str)


def _declares(obj: Any, name: str) -> bool:
    return getattr(obj, name, None) is not None


def summarize(registries: Registries) -> dict[str, list[dict[str, Any]]]:
    """Per kind, each entry's name, plugin, whether it is a prefix, its parameters with
    defaults (as ``labkit list`` shows them), its parameter model as JSON (``schema``,
    ``None`` when it cannot be described) with that model's JSON schema, and which hooks
    its factory declares (see the module docstring)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for registry in registries:
        kinds[registry.kind] = []
        for e in registry.entries():
            schema = params_schema.describe(e.params)
            kinds[registry.kind].append({
                "name": e.name, "plugin": e.plugin, "prefix": e.prefix,
                "params": ", ".join(f"{n}={_default_text(f)}"
                                    for n, f in e.params.model_fields.items()),
                "schema": schema,
                "json_schema": e.params.model_json_schema() if schema else None,
                "accepts_soft_targets": bool(getattr(e.obj, "accepts_soft_targets", False)),
                **{hook: _declares(e.obj, hook) for hook in (
                    "data_identity", "weights_identity", "plan_notes", "linked_runs")}})
    return kinds


_SUMMARIZED: list[tuple[Registries, tuple, dict[str, list[dict[str, Any]]]]] = []


def _summarized(registries: Registries) -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize`, done again only when ``registries`` is another object or an
    entry was added since (registries a test or notebook rebuilt are summarised once,
    not at every command)."""
    shape = tuple((registry.kind, len(registry.entries())) for registry in registries)
    if _SUMMARIZED and _SUMMARIZED[0][0] is registries and _SUMMARIZED[0][1] == shape:
        return _SUMMARIZED[0][2]
    kinds = summarize(registries)
    _SUMMARIZED[:] = [(registries, shape, kinds)]
    return kinds


def _summary_path() -> Path:
    return installation_dir() / SUMMARY


def current_summary() -> dict[str, Any] | None:
    """The kept summary record (``{"environment", "sources", "kinds"}``) when it is
    current; ``None`` when there is none (nothing is built)."""
    if not usable():
        return None
    record = read_record(_summary_path())
    if not _is_current(record) or not isinstance(record.get("kinds"), dict) \
            or not isinstance(record.get("layer_measures"), list):
        return None
    return record


def summary() -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize` of the process-wide registries: from the cache when current,
    else computed (building the registries) and kept."""
    record = current_summary()
    if record is not None:
        return record["kinds"]
    return keep_summary(plugins.registries())


def keep_summary(registries: Registries) -> dict[str, list[dict[str, Any]]]:
    """:func:`summarize` ``registries`` (the process-wide ones) and keep it when it is
    not kept yet; returns it."""
    record = current_summary()
    if record is not None:
        return record["kinds"]
    kinds = _summarized(registries)
    if usable():
        measuring = plugins.plugin_manager().hook.labkit_layer_measures.get_hookimpls()
        write_record(_summary_path(), {
            "environment": environment(), "sources": sources(registries), "kinds": kinds,
            "layer_measures": sorted({impl.plugin_name for impl in measuring} - {"labkit"})})
    return kinds


def measured_by_plugins() -> Callable[[Path, dict], list]:
    """The plugins' ``labkit_layer_measures`` for the layers table
    (:func:`labkit.cli.plugins.layer_measures`), loading only the entry points that
    implement it (:func:`layer_measure_plugins`)."""
    return functools.partial(plugins.layer_measures, implementers=layer_measure_plugins())


def layer_measure_plugins() -> list[str] | None:
    """The entry points (by name) whose plugins implement ``labkit_layer_measures``, as
    the kept summary records them; ``None`` when no summary is current (then any may)."""
    record = current_summary()
    return None if record is None else record["layer_measures"]


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


# ---------------------------------------------------------------- resolutions, checked runs

def _kept(name: str, summary_token: str) -> dict[str, Any]:
    """The ``items`` of the kept file ``name`` when it belongs to ``summary_token``,
    else empty."""
    record = read_record(installation_dir() / name)
    if not isinstance(record, dict) or record.get("token") != summary_token:
        return {}
    items = record.get("items")
    return items if isinstance(items, dict) else {}


def _keep(name: str, summary_token: str, add: dict[str, Any], limit: int,
          group: Any = None) -> None:
    """Add ``add`` to the items of the kept file ``name`` (of ``summary_token``),
    dropping the oldest beyond ``limit`` (per ``group(key)`` when given)."""
    items = {k: v for k, v in _kept(name, summary_token).items() if k not in add}
    items.update(add)
    counts: dict[Any, int] = {}
    for key in reversed(list(items)):
        bucket = group(key) if group else None
        counts[bucket] = counts.get(bucket, 0) + 1
        if counts[bucket] > limit:
            del items[key]
    write_record(installation_dir() / name, {"token": summary_token, "items": items})


def resolutions(summary_token: str) -> dict[str, Any]:
    """The kept resolutions (see the module docstring): ``{"<kind>\\0<key>":
    {"result": …, "witnesses": [...]}}``."""
    return _kept(RESOLUTIONS, summary_token)


def resolution(kept: dict[str, Any], kind: str, key: str) -> Any:
    """The kept result of a resolution while its witnesses hold; ``None`` when none."""
    found = kept.get(f"{kind}\0{key}")
    if not isinstance(found, dict) or "result" not in found:
        return None
    if not all(witness.holds(w) for w in found.get("witnesses") or []):
        return None
    return found


def store_resolutions(record: list[Resolved]) -> None:
    """Keep what a validation with the process-wide registries resolved (components'
    parameters, identities of files) where every file it read was witnessed."""
    summary_record = current_summary()
    if summary_record is None:
        return
    add = {f"{item.kind}\0{item.key}": {"result": item.result, "witnesses": item.witnesses}
           for item in record if item.witnesses is not None}
    if add:
        _keep(RESOLUTIONS, token(summary_record), add, MAX_RESOLUTIONS,
              group=lambda key: key.partition("\0")[0] + json.loads(key.partition("\0")[2])[0])


def check_key(config: dict[str, Any], run_id: str) -> str:
    """The key of a checked run: its resolved config, run-id and working directory."""
    text = json.dumps([config, run_id, os.getcwd()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def checked(keys: list[str]) -> set[str]:
    """Which of the :func:`check_key` keys belong to runs that passed their checks in
    this installation, while the files those checks read are as they were."""
    summary_record = current_summary()
    if summary_record is None:
        return set()
    kept = _kept(CHECKED, token(summary_record))
    return {key for key in keys if isinstance(kept.get(key), list)
            and all(witness.holds(w) for w in kept[key])}


def store_checked(passed: dict[str, list[dict[str, Any]]]) -> None:
    """Keep runs that passed their checks: ``{check key: witnesses of what they read}``."""
    summary_record = current_summary()
    if summary_record is not None and passed:
        _keep(CHECKED, token(summary_record), passed, MAX_CHECKED)

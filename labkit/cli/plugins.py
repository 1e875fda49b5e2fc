"""Loading plugins and filling the registries.

Plugins come from three places, in this order: labkit's built-ins
(:mod:`labkit.cli.builtins`), entry points in the group ``labkit`` of installed packages, and
objects registered by hand (tests). Two environment variables control entry points:

* ``LABKIT_DISABLE_PLUGIN_AUTOLOAD=1`` — load no entry point (the test suite sets it);
* ``LABKIT_PLUGINS=name1,name2`` — load only these entry points (also when autoload is
  disabled, so a test can switch one plugin on).
"""
from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pluggy

import labkit
from labkit.core import hookspecs
from labkit.core.errors import UserError
from labkit.core.registry import Registries

GROUP = "labkit"
DISABLE_ENV = "LABKIT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "LABKIT_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, the distribution that ships it, and its version."""

    name: str
    distribution: str
    version: str


def _entry_points_to_load() -> list[md.EntryPoint]:
    allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    disabled = os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes")
    found = md.entry_points(group=GROUP)
    unknown = allow - {ep.name for ep in found}
    if unknown:
        raise UserError(
            f"{ALLOW_ENV} names plugin(s) {', '.join(sorted(unknown))} but no installed package "
            f"provides them in the entry-point group {GROUP!r}; install the package or fix the name")
    if allow:
        return [ep for ep in found if ep.name in allow]
    return [] if disabled else list(found)


def make_plugin_manager(extra: tuple[object, ...] = (), with_builtins: bool = True,
                        only: Collection[str] | None = None) -> pluggy.PluginManager:
    """A plugin manager with built-ins (unless ``with_builtins`` is false), allowed entry
    points (of them only those named in ``only`` when given) and ``extra`` registered.

    Raises:
        UserError: a plugin fails to import, or implements a hook that does not exist.
    """
    pm = pluggy.PluginManager("labkit")
    pm.add_hookspecs(hookspecs)
    if with_builtins:
        from labkit.cli import builtins  # torch and every component: only when asked for

        pm.register(builtins, name="labkit")
    for ep in _entry_points_to_load():
        if only is not None and ep.name not in only:
            continue
        try:
            pm.load_setuptools_entrypoints(GROUP, name=ep.name)
        except Exception as exc:  # a broken third-party package must not look like our bug
            raise UserError(
                f"plugin {ep.name!r} ({ep.value}) failed to import: {exc!r}. Fix or uninstall "
                f"it, or load only the plugins you need with {ALLOW_ENV}=name,…") from exc
    for i, obj in enumerate(extra):
        pm.register(obj, name=getattr(obj, "__name__", f"extra-{i}"))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}. "
                        f"labkit's hooks are listed in labkit/hookspecs.py") from exc
    return pm


def fill_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every plugin's ``labkit_register`` in registration order.

    Each call is attributed to its plugin, so a duplicate name names both plugins.
    """
    registries = Registries()
    for impl in pm.hook.labkit_register.get_hookimpls():  # registration order: built-ins first
        registries.set_plugin(impl.plugin_name)
        try:
            impl.function(registries=registries)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    registries.set_plugin("labkit")
    registries.plugin_versions = {info.name: info.version for info in plugin_infos(pm)}
    return registries


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, distribution and version of every registered plugin."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if name == "labkit":
            infos.append(PluginInfo(name, "labkit", labkit.__version__))
        elif id(plugin) in dists:
            dist = dists[id(plugin)]
            infos.append(PluginInfo(name, dist.project_name, dist.version))
        else:
            infos.append(PluginInfo(name, "(registered in process)", "-"))
    return infos


def run_problems(config: dict, registries: Registries) -> list[str]:
    """What every plugin, labkit's built-ins first, finds wrong with one resolved
    config before it trains (the ``labkit_check_run`` hook), one line each."""
    answers = plugin_manager().hook.labkit_check_run(config=config, registries=registries)
    # pluggy asks the plugin registered last first: the built-ins answer last
    return [line for answer in reversed(answers) for line in answer or []]


_STATE: dict[str, object] = {}


def layer_measures(run_dir: Path, config: dict,
                   implementers: Collection[str] | None = None) -> list:
    """Every plugin's answer to ``labkit_layer_measures`` for one run (the layers table's
    plugin columns). Asked of the process-wide plugin manager when it is built (or
    replaced by :func:`use`), else of one holding entry points alone, built once:
    ``implementers`` when given (the entry points known to implement the hook,
    :func:`labkit.cli.spec_cache.layer_measure_plugins`; none loaded when empty), else
    all. labkit's built-ins measure no layer through this hook, so the layers table
    imports neither them nor torch, nor any plugin that measures no layer."""
    if "pm" in _STATE:
        pm = _STATE["pm"]
    else:
        names = None if implementers is None else tuple(sorted(implementers))
        if names == ():
            return []
        managers = _STATE.setdefault("measure_pms", {})
        if names not in managers:  # type: ignore[operator]
            managers[names] = make_plugin_manager(with_builtins=False, only=names)  # type: ignore[index]
        pm = managers[names]  # type: ignore[index]
    return pm.hook.labkit_layer_measures(run_dir=run_dir, config=config)  # type: ignore[attr-defined]


def registries() -> Registries:
    """The process-wide registries (built once, on first use)."""
    if "registries" not in _STATE:
        pm = make_plugin_manager()
        _STATE["pm"] = pm
        _STATE["registries"] = fill_registries(pm)
        _STATE["registries"].rebuild = registries  # type: ignore[attr-defined]
    return _STATE["registries"]  # type: ignore[return-value]


class LazyRegistries:
    """Stands for the process-wide registries (:func:`registries`) and builds them when
    first used: what a command gives an analysis that may need none (probes of stored
    latents, which import neither the models nor the plugins)."""

    def __getattr__(self, name: str) -> object:
        return getattr(registries(), name)

    def __getitem__(self, kind: str) -> object:
        return registries()[kind]

    def __iter__(self):  # noqa: ANN204
        return iter(registries())


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (see :func:`registries`)."""
    registries()
    return _STATE["pm"]  # type: ignore[return-value]


def from_installation() -> bool:
    """Whether the process-wide registries are those of the installation alone: built
    by :func:`registries` from the built-ins and entry points, never replaced by
    :func:`use` (which tests call, and whose registries they may add to). Only then may
    a command rely on the cache of what they hold (:mod:`labkit.cli.spec_cache`)."""
    return "used" not in _STATE


def use(*extra: object) -> Registries:
    """Rebuild the process-wide registries with ``extra`` plugin objects registered.

    ``use()`` with no arguments resets to built-ins and entry points. Tests register a
    plugin around a test with ``use(plugin)`` … ``use()``. Either way the process no
    longer uses labkit's cache of validated grids (:func:`from_installation`).
    """
    _STATE["used"] = True
    pm = make_plugin_manager(extra)
    _STATE["pm"] = pm
    _STATE["registries"] = fill_registries(pm)
    if not extra:  # entry points and built-ins: another process finds the same
        _STATE["registries"].rebuild = registries  # type: ignore[attr-defined]
    return _STATE["registries"]  # type: ignore[return-value]

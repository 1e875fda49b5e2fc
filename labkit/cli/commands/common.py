"""Helpers shared by every command: reading specs into runs, checking devices.

Torch-free at import, like the commands that need no training (``status``, ``plan``):
specs are resolved with the registries rebuilt from :mod:`labkit.cli.spec_cache`; only
checking runs not checked before, or a spec that needs what the cache does not hold,
builds the registries and its models (torch, the plugins).
The helpers of the commands that analyse trained runs are
:mod:`labkit.cli.commands.analysis_common`.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any, Callable

import click
from pydantic import BaseModel

from labkit.cli import plugins, spec_cache
from labkit.cli.cached_registries import NotCached, cached_registries
from labkit.core.errors import UserError
from labkit.core.registry import Registries
from labkit.spec import Spec, check_raw, expand, load_spec_file
from labkit.spec.grid import recording
from labkit.store.identity import RunConfig, folder_name_problem, outside_inputs

SET_OPTION = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="override a spec value: dotted key, JSON value (a list is a grid axis), "
         "e.g. --set optimizer.lr=0.01 --set 'seed=[0,1,2]'; repeatable")
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True,
                            help="show no progress: no bars, no progress lines")
DEVICE_OPTION = click.option("--device", default=None,
                             help="torch device (cpu, cuda:0); overrides the spec")


def grid_arguments(command: Callable[..., Any]) -> Callable[..., Any]:
    """SPEC and ``--run-id``: the grid of trained runs a command reads."""
    command = click.option("--run-id", required=True,
                           help="run-id the runs were trained under")(command)
    return click.argument("spec", type=click.Path(dir_okay=False))(command)


def load_runs(spec_path: str, run_id: str, device: str | None = None,
              overrides: tuple[str, ...] = (), checked: bool = True) -> list[RunConfig]:
    """Read, expand and validate a spec file into its runs (device override and
    ``--set`` overrides applied, see :func:`apply_overrides`).

    Grid points with the same identity (e.g. ``"seed": [0, 0]``) are one run: training
    it twice would only race on one directory. The spec is resolved with the registries
    the command line kept (:func:`cached_runs`: no torch, no plugin); when ``checked``,
    its runs must also have passed the checks made before training (:func:`validated_runs`,
    which builds the registries) in this installation, as :mod:`labkit.cli.spec_cache`
    remembers. ``status``, ``plot`` and ``report`` read a grid unchecked; ``plan``,
    ``run`` and the analyses check it.
    """
    raw = apply_overrides(load_spec_file(spec_path), overrides)
    if device is not None and isinstance(raw, dict):
        raw = {**raw, "device": device}
    check_raw(raw)  # before the cache keys it
    check_run_id(run_id)
    runs = cached_runs(raw, run_id)
    if runs is not None and (not checked or len(spec_cache.checked(
            [spec_cache.check_key(r.config, run_id) for r in runs])) == len(runs)):
        return runs
    return validated_runs(raw, run_id)


def cached_runs(raw: Any, run_id: str) -> list[RunConfig] | None:
    """The runs of ``raw`` (a spec, overrides applied) resolved with the registries
    rebuilt from the cache (:func:`labkit.cli.cached_registries.cached_registries`);
    ``None`` when the cache does not hold what it needs.

    Raises:
        UserError: an invalid grid point, with its position (the message the
            registries give).
    """
    registries = cached_registries()
    if registries is None:
        return None
    try:
        runs = _runs(expand(raw, registries), run_id)
    except NotCached:
        return None
    for i, run in enumerate(runs):
        _at_point(i, runs, check_path, run.directory)
    return runs


def _runs(configs: list[dict[str, Any]], run_id: str) -> list[RunConfig]:
    """One run per identity of the grid's resolved configs (:func:`merge_points`)."""
    points: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        points.setdefault(RunConfig(config, run_id).hash, []).append(config)
    return [RunConfig(merge_points(configs), run_id) for configs in points.values()]


def validated_runs(raw: Any, run_id: str) -> list[RunConfig]:
    """The runs of ``raw`` (a spec, overrides applied), expanded with the process-wide
    registries, each checked as buildable (:func:`labkit.training.build.check_buildable`) and
    by every plugin's ``labkit_check_run`` (:func:`check_run`), with the runs each
    trains first, unless it passed them before (:func:`labkit.cli.spec_cache.checked`).
    What resolution computed and which runs passed are kept in :mod:`labkit.cli.spec_cache`
    where every file they read was witnessed.

    Raises:
        UserError: an invalid grid point, with its position.
    """
    # imported here, not at the top: building torch models on the meta device is what
    # a command reading a cached grid never does, and torch is what it never imports
    from labkit.training.build import check_buildable

    registries = plugins.registries()
    if spec_cache.usable():  # kept for commands that read no registries (status, list)
        spec_cache.keep_summary(registries)
    with recording() as resolved:
        runs = _runs(expand(raw, registries), run_id)
    spec_cache.store_resolutions(resolved)
    keys = [spec_cache.check_key(run.config, run_id) for run in runs]
    done = spec_cache.checked(keys)
    passed: dict[str, list[dict[str, Any]]] = {}
    links: set[Path] = set()  # linked runs, shared by many runs, are checked once
    for i, (run, key) in enumerate(zip(runs, keys)):
        _at_point(i, runs, check_path, run.directory)
        if key in done:
            continue
        with outside_inputs() as noted:
            _at_point(i, runs, check_buildable, run.config, registries)
            _at_point(i, runs, check_run, run, registries, links)
        if all(o.witness is not None for o in noted):
            passed[key] = [o.witness for o in noted]
    spec_cache.store_checked(passed)
    return runs


def linked_runs(run: RunConfig, registries: Registries, deep: bool = True) -> list[RunConfig]:
    """The runs ``run`` trains first when they are not finished (a teacher, an init
    run or a stitched network given by its spec, and, when ``deep``, the runs those
    train first), in training order, each once.

    A component's factory declares the runs it trains first with an attribute
    ``linked_runs(params, run, registries) -> [RunConfig, …]`` (``params``: its
    resolved spec parameters); the model's, the dataset's and the method's are asked.
    """
    found: list[RunConfig] = []
    for kind, key in LINKING:
        for link in _declared_links(kind, run.config[key], run, registries):
            for needed in [*(linked_runs(link, registries) if deep else []), link]:
                if needed.directory not in {r.directory for r in found}:
                    found.append(needed)
    return found


# the components whose factories may declare linked runs: (registry kind, config key)
LINKING = (("models", "model"), ("datasets", "dataset"), ("methods", "method"))
# what a component declared, by its params and where the naming run lies: a grid's runs
# mostly share their links (one teacher, one pair of stitched networks), which would
# otherwise be resolved again for every run
_LINKS: weakref.WeakKeyDictionary[Registries, dict[tuple, list[RunConfig]]] = \
    weakref.WeakKeyDictionary()


def _declared_links(kind: str, spec: dict[str, Any], run: RunConfig,
                    registries: Registries) -> list[RunConfig]:
    declare = getattr(registries[kind].get(spec["name"]).obj, "linked_runs", None)
    if declare is None:
        return []
    known = _LINKS.setdefault(registries, {})
    key = (kind, json.dumps(spec, sort_keys=True), run.config["logs_dir"], run.config["name"],
           run.run_id)
    if key not in known:
        known[key] = declare({k: v for k, v in spec.items() if k != "name"}, run, registries)
    return known[key]


def check_run(run: RunConfig, registries: Registries, checked: set[Path]) -> None:
    """Ask every plugin what is wrong with ``run`` and the runs it trains first
    (:func:`linked_runs`; those not in ``checked`` yet, then added to it) before
    anything trains (:func:`labkit.cli.plugins.run_problems`; a linked run is also checked
    as buildable).

    Raises:
        UserError: one line per mistake; a linked run's named by its directory.
    """
    from labkit.training.build import check_buildable  # torch: see validated_runs

    lines = []
    for link in linked_runs(run, registries):
        if link.directory in checked:
            continue
        checked.add(link.directory)
        try:
            check_buildable(link.config, registries)
            problems = plugins.run_problems(link.config, registries)
        except UserError as exc:
            problems = [str(exc)]
        lines += [f"linked run {link.directory} (trained first): {problem}"
                  for problem in problems]
    lines += plugins.run_problems(run.config, registries)
    if lines:
        raise UserError("\n".join(lines))


def _at_point(i: int, runs: list[RunConfig], check: Any, *args: Any) -> None:
    """``check(*args)`` for the ``i``-th run, a failure named by its grid point."""
    try:
        check(*args)
    except UserError as exc:
        where = f"grid point {i + 1} of {len(runs)}: " if len(runs) > 1 else ""
        raise UserError(f"{where}{exc}") from None


def apply_overrides(raw: Any, overrides: tuple[str, ...]) -> Any:
    """The spec with every ``KEY=VALUE`` of ``--set`` applied: ``KEY`` a dotted path
    (``optimizer.lr``; a section the spec leaves out starts as its default,
    ``{"name": "sgd"}`` for ``optimizer``), ``VALUE`` JSON (``0.01``, ``[0, 1, 2]``,
    ``{"name": "adam"}``) or, when it is not JSON, a string. A list is a grid axis as in the file; the result is
    validated like the file.

    Raises:
        UserError: an override without ``=``, or a path through something not an object.
    """
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        raise UserError("a spec must be a JSON object ({...}) at the top level")
    check_raw(raw)
    raw = json.loads(json.dumps(raw))
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {override!r}: write KEY=VALUE, e.g. --set optimizer.lr=0.01 "
                            f"or --set 'seed=[0,1,2]'")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        except RecursionError:
            raise UserError("--set: a value is nested too deeply to be part of a spec; a "
                            "spec is a few levels of objects and lists") from None
        *parents, last = key.strip().split(".")
        node = raw
        for i, part in enumerate(parents):
            child = node.get(part)
            if isinstance(child, str):  # "model": "cnn_s" is {"name": "cnn_s"}
                child = {"name": child}
            if child is None:  # the spec's default object, e.g. {"name": "sgd"}
                default = Spec.model_fields[part].default if i == 0 and part in \
                    Spec.model_fields else None
                child = default.model_dump() if isinstance(default, BaseModel) else {}
            if not isinstance(child, dict):
                raise UserError(f"--set {override!r}: {'.'.join(parents[:i + 1])} is not an "
                                f"object in the spec, so it has no key {last!r}")
            node[part] = child
            node = child
        node[last] = value
    return raw


def check_run_id(run_id: str) -> None:
    """A run-id is one folder name (:func:`labkit.store.identity.folder_name_problem`)."""
    problem = folder_name_problem(run_id)
    if problem:
        raise UserError(f"--run-id {_shown(run_id)}: {problem}; give a label usable as one "
                        f"folder name (letters, digits, '-', '_', '.'), e.g. --run-id A")


def _shown(text: str, width: int = 60) -> str:
    """``text`` quoted for a message, cut to ``width``."""
    return repr(text) if len(text) <= width else repr(text[:width]) + "…"


def check_path(directory: Path) -> None:
    """Refuse a run directory the file system cannot hold (names over 255 bytes)."""
    long = [part for part in directory.parts if len(part.encode()) > 255]
    if long:
        raise UserError(f"the run directory name {long[0][:60]!r}… is longer than the 255 "
                        f"bytes a file system allows; shorten the model, dataset or run-id "
                        f"names")


def merge_points(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run for grid points with one identity, doing everything each point asks.

    They differ only in what is not identity: the run takes the first point's config
    with the analyses of every point (each once, in order of first appearance), and
    when they differ in how saturation is read (``saturation.delta``, ``idim_rule``:
    log.csv reads the spectra as the first point asks) a ``saturation`` analysis tabling
    every delta and rule asked for (saturation.csv,
    :mod:`labkit.analyses.saturation_views`).
    """
    first = configs[0]
    analyses: list[dict[str, Any]] = []
    for config in configs:
        analyses += [a for a in config["analyses"] if a not in analyses]
    views = [c["saturation"] for c in configs if c.get("saturation") is not None]
    deltas = sorted({v["delta"] for v in views})
    rules = sorted({v["idim_rule"] for v in views})
    table = {"name": "saturation", "deltas": deltas, "rules": rules}
    if (len(deltas) > 1 or len(rules) > 1) and table not in analyses:
        analyses.append(table)
    return {**first, "analyses": analyses}


def check_devices(runs: list[RunConfig]) -> None:
    """:func:`check_device` for every device the runs name."""
    for device in dict.fromkeys(run.config["device"] for run in runs):
        check_device(device)


def check_device(device: str) -> None:
    """Fail with a clear message when ``device`` cannot be used here (``cpu`` always
    can: answered without importing torch)."""
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"invalid device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} requested but MPS (Apple's GPUs) is not available "
                        f"on this machine; use --device cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available on this "
                        f"machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} does not exist: this machine has "
                        f"{torch.cuda.device_count()} GPU(s)")

"""Run identity and run directories.

A run's identity is a short hash of its resolved config minus the settings that never
change results (:data:`NOT_IDENTITY`: device, output folder, worker count,
…). Grid position is never part of it, so the same run reached from two specs shares a
directory and is resumed or skipped, and two runs differing in any result-changing value
(down to a nested optimizer value) never share one.

Layout: ``<logs_dir>/<model>/<dataset>_<resolution>/<run-id>/<readable>-<hash>/``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from labkit.store import witness

HASH_LEN = 10

# Settings that change where or how fast a run executes, never its trained weights or
# what it stores. Analyses read a trained run; their outputs are keyed by their own
# params. Saturation's delta and counting rule only read the stored eigenvalue spectra.
NOT_IDENTITY = ("name", "logs_dir", "device", "eval_batch_size", "num_workers",
                "dataset.root", "dataset.download", "analyses", "launcher",
                "saturation.delta", "saturation.idim_rule", "data.root", "weights.file", "model.weights.path",
                "model.download_weights", "best_metric", "best_mode", "analysis_checkpoint",
                "checkpoint_steps", "checkpoint_minutes", "keep_checkpoints", "loggers")

# Settings added after runs already existed: at these values they change nothing, so
# they are left out of the identity and runs trained before the setting existed keep
# their hash (and directory). Any other value enters the identity as usual.
ADDED_LATER = {"steps": None, "weight_decay_schedule": None, "channels_last": False,
               "compile": False, "data_loader": "torch", "nproc": 1, "batch_augment": None}


@dataclass(frozen=True)
class Outside:
    """Something outside the spec and the code that a config being resolved read
    (:func:`note_outside`): ``what`` it is, for messages, and the witness of its files
    (:func:`labkit.store.witness.take`), ``None`` when it has none."""

    what: str
    witness: dict[str, Any] | None


# what the identities being derived read besides the spec and the code (see note_outside)
_OUTSIDE: ContextVar[list[Outside] | None] = ContextVar("labkit_outside_inputs", default=None)


def note_outside(what: str, paths: list[str | Path] | None = None) -> None:
    """Note that the config being resolved depends on ``what``, something outside the
    spec and the installed code: a folder's files (a content digest), a weights file,
    another run's checkpoint (a :class:`~labkit.store.runinfo.PinnedRef`), another spec file.

    Such a config may differ tomorrow for the same spec. With ``paths``, the files and
    folders it is read from, the command line keeps what was derived from it together
    with their witness (:mod:`labkit.store.witness`) and trusts it while the witness
    holds (:mod:`labkit.cli.spec_cache`); call it before reading them. Without
    ``paths`` it is never kept. labkit notes its own (``data_identity``,
    ``weights_identity``, ``run_fingerprint``, ``load_spec_file``); a plugin whose
    validation reads anything else calls this. Outside :func:`outside_inputs` it does
    nothing.
    """
    noted = _OUTSIDE.get()
    if noted is not None:
        noted.append(Outside(what, None if paths is None else witness.take(paths)))


@contextmanager
def outside_inputs() -> Iterator[list[Outside]]:
    """Collect, in the list it yields, what :func:`note_outside` is told in the block;
    an enclosing block is told the same when this one ends."""
    noted: list[Outside] = []
    outer = _OUTSIDE.get()
    token = _OUTSIDE.set(noted)
    try:
        yield noted
    finally:
        _OUTSIDE.reset(token)
        if outer is not None:
            outer.extend(noted)


def identity_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that defines the run's results."""
    config = copy.deepcopy(resolved)
    for dotted in NOT_IDENTITY:
        *parents, last = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    for key, neutral in ADDED_LATER.items():
        if key in config and config[key] == neutral:
            del config[key]
    return config


def run_hash(resolved: dict[str, Any]) -> str:
    """Short hex hash of :func:`identity_config` (canonical JSON, sorted keys)."""
    canonical = json.dumps(identity_config(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LEN]


# characters of a name that becomes one folder or file name (a spec's name, a run-id,
# a probe prefix): with labkit's own parts around it, a path part stays far below the
# 255 bytes file systems allow
MAX_NAME = 100


def folder_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be one folder or file name inside an output folder, ``None``
    when it can: it must be text, not empty, at most :data:`MAX_NAME` characters, hold
    no path separator (``/``, ``\\``) and no control character, and be neither ``.``
    nor ``..`` (which name no folder of its own, but the one above)."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if name in (".", ".."):
        return f"{name!r} names a folder that already exists (here or above), not a new one"
    if "/" in name or "\\" in name:
        return "it holds a path separator"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        return "it holds a control character"
    if len(name) > MAX_NAME:
        return f"it is {len(name)} characters long, more than {MAX_NAME}"
    return None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(text))


@dataclass(frozen=True)
class RunConfig:
    """One expanded, validated run of a spec.

    Attributes:
        config: the resolved config (JSON-ready, defaults filled in).
        run_id: the user's ``--run-id`` (a repetition label, part of the path).
    """

    config: dict[str, Any]
    run_id: str

    @cached_property
    def hash(self) -> str:
        """Short identity hash (the config never changes, so it is computed once)."""
        return run_hash(self.config)

    @property
    def name(self) -> str:
        """Readable name: ``<model>-<dataset>-r<res>-<method>-<optimizer>-bs<bs>-e<epochs>``."""
        c = self.config
        return _safe(f"{c['model']['name']}-{c['dataset']['name']}-r{self.resolution}-"
                     f"{c['method']['name']}-{c['optimizer']['name']}-bs{c['batch_size']}-"
                     f"e{c['epochs']}")

    @property
    def resolution(self) -> Any:
        return self.config["dataset"].get("resolution", "native")

    @property
    def directory(self) -> Path:
        c = self.config
        return (Path(c["logs_dir"]) / _safe(c["model"]["name"])
                / _safe(f"{c['dataset']['name']}_{self.resolution}") / _safe(self.run_id)
                / f"{self.name}-{self.hash}")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a nested config (lists kept as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        elif isinstance(value, list):
            out[dotted] = json.dumps(value, sort_keys=True)
        else:
            out[dotted] = value
    return out


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between ``configs``, in first-seen order.

    A component's parameter varies only when it differs between configs naming the same
    component (and the same components above it): ``model.noskip``, which resnets have
    and cnns lack, or a width whose default differs between two models, does not vary
    in a grid over the model; ``model.name`` does."""
    flats = [flatten(c) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys)
    return [k for k in keys if any(
        len({json.dumps(f.get(k), sort_keys=True) for f in group}) > 1
        for group in _same_components(flats, k))]


def _same_components(flats: list[dict[str, Any]], key: str) -> list[list[dict[str, Any]]]:
    """``flats`` grouped by the names of the components ``key`` lies in (the
    ``<parent>.name`` values of each dotted parent of ``key``, ``key`` itself aside)."""
    parts = key.split(".")
    names = [".".join(parts[:i] + ["name"]) for i in range(1, len(parts))]
    names = [n for n in names if n != key]
    groups: dict[str, list[dict[str, Any]]] = {}
    for flat in flats:
        tag = json.dumps([flat.get(n) for n in names], sort_keys=True, default=str)
        groups.setdefault(tag, []).append(flat)
    return list(groups.values())


def short_value(value: Any, width: int = 14) -> str:
    """A config value as a label shows it: floats in ``g`` format, long text cut with …."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that is unique among ``keys``, never a bare
    ``name`` (``optimizer.lr`` → ``lr``, ``model.name`` → ``model``)."""
    def parts(key: str) -> list[str]:
        p = key.split(".")
        return p[:-1] if p[-1] == "name" and len(p) > 1 else p

    short = {}
    for key in keys:
        mine = parts(key)
        for n in range(1, len(mine) + 1):
            if all(parts(other)[-n:] != mine[-n:] for other in keys if other != key):
                break
        candidate = ".".join(mine[-n:])
        short[key] = candidate
    return short


def display_labels(configs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Short readable labels of a grid's runs, made of the values that vary across it.

    Keys are taken in first-seen order (:func:`varying_keys`), each only when it tells
    runs apart that the keys before it did not (a teacher's nested values that vary with
    the method add nothing); a key absent from a run is left out of that run's label, and
    a run that nothing tells apart (a grid of one) is labelled by its model. Keys are shown
    by their shortest unique suffix, values shortened (``lr=0.05 seed=1``). Labels are
    for display only (run directories keep :attr:`RunConfig.name`); runs the chosen
    values cannot tell apart get ``#<position>``.

    Returns:
        the labels, one per config, and the dotted keys they use.
    """
    flats = [flatten(c) for c in configs]
    chosen: list[str] = []
    groups = 1 if flats else 0
    for key in varying_keys(configs):
        tried = chosen + [key]
        count = len({tuple(json.dumps(f.get(k), sort_keys=True, default=str) for k in tried)
                     for f in flats})
        if count > groups:
            chosen, groups = tried, count
        if groups == len(flats):
            break
    short = short_keys(chosen)
    labels = [" ".join(f"{short[k]}={short_value(f[k])}" for k in chosen if k in f)
              or short_value(f.get("model.name", "-")) for f in flats]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    labels = [f"{label} #{i}" if seen[label] > 1 else label for i, label in enumerate(labels, 1)]
    return labels, chosen

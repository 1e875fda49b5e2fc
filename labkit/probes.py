"""Linear probes: one logistic regression per layer, on stored latents.

A layer's probe is fitted on the train split's latents (:mod:`labkit.latents`) and
scored on every split. By default the features are standardised (mean 0, variance 1,
estimated on the train split) and the multinomial model is fitted with L-BFGS to
convergence, by default streamed from the memory-mapped latents with torch
(:mod:`labkit.logistic`: scikit-learn's objective, flat memory, the run's GPU when it has
one; ``solver: "sklearn"`` fits scikit-learn's ``LogisticRegression`` on the layer loaded
whole): on standardised features that takes tens to hundreds of iterations, while
SAGA on raw activations (PHD-LAB's configuration) stops after ``max_iter=100`` passes
over the data, usually unconverged and several times slower
(``benchmarks/bench_probes.py``; numbers in docs/layers.md).

Layers are fitted in parallel worker processes (joblib, loky backend). Every fit is
cached in ``<latent directory>/probe_cache/<key>.json``, plain JSON keyed by the
manifest digest, the layer name and the probe parameters (never by hashing the arrays).
Plain data, not pickles: a cache in a folder someone else produced cannot run code
(the key stored inside each entry is checked, and an entry that does not hold a
well-formed result is fitted again). Results come back in network order.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor
from pydantic import BaseModel, ConfigDict, Field

from labkit.atomic import read_json, write_csv, write_json
from labkit.errors import DamagedFile, UserError
from labkit.latent_layout import array_path, read_manifest, verify_files

RESULTS_CSV = "probe_performances.csv"
CACHE_DIR = "probe_cache"


class ProbeParams(BaseModel):
    """How each probe is fitted (part of the cache key)."""

    model_config = ConfigDict(extra="forbid")

    C: float = Field(1.0, gt=0, description="inverse L2 regularisation strength (scikit-learn's C)")
    max_iter: int = Field(1000, ge=1, description="most L-BFGS iterations")
    tol: float = Field(1e-4, gt=0, description="L-BFGS stopping tolerance")
    standardize: bool = Field(
        True, description="scale features to mean 0, variance 1 (train statistics)")
    solver: Literal["torch", "sklearn"] = Field(
        "torch", description="torch: L-BFGS on the same objective as scikit-learn's, "
                             "streaming the memory-mapped latents in chunks (flat memory, "
                             "the run's GPU when it has one); sklearn: scikit-learn's "
                             "LogisticRegression (lbfgs), the whole layer in memory")


def results_path(run_dir: Path, prefix: str | None = None) -> Path:
    """``<run_dir>/[<prefix>_]probe_performances.csv``."""
    return Path(run_dir) / (f"{prefix}_{RESULTS_CSV}" if prefix else RESULTS_CSV)


def _rows(directory: Path, split: str, layer: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A split's latents of ``layer`` as float32 ``(rows, features)`` and a label per row."""
    features = np.asarray(np.load(array_path(directory, split, layer["name"]), mmap_mode="r"),
                          dtype=np.float32)
    labels = np.load(array_path(directory, split, "labels"))
    return features, np.repeat(labels, layer["positions"])


def fit_layer(digest: str, layer: str, params: dict[str, Any], directory: str,
              device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Fit and score the probe of ``layer`` on the latents in ``directory``.

    ``digest`` (the manifest's) only keys the cache; ``directory``, ``device`` (where the
    torch solver computes) and ``threads`` (torch intra-op threads in this worker) are
    left out of the key: they change where and how fast, not what.

    Returns:
        ``layer``, ``features``, ``<split>_accuracy`` for every split (fraction in
        [0, 1]), ``converged`` (stopped before ``max_iter``) and ``fit_seconds``
        (wall time of the fit alone).
    """
    manifest = read_manifest(Path(directory))
    entry = next(e for e in manifest["layers"] if e["name"] == layer)
    settings = ProbeParams(**params)
    splits = [s for s in manifest["plan"]["splits"] if s != "train"]
    fit = _fit_torch if settings.solver == "torch" else _fit_sklearn
    started = time.perf_counter()
    train_accuracy, scores, iterations = fit(Path(directory), entry, splits, settings, device,
                                             threads)
    seconds = time.perf_counter() - started
    return {"layer": layer, "features": entry["features"], "train_accuracy": train_accuracy,
            **{f"{split}_accuracy": scores[split] for split in splits},
            "converged": iterations < settings.max_iter, "fit_seconds": seconds}


def _arrays(directory: Path, split: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's latents of ``layer`` (read-only memory map) and its labels, one per image."""
    return (np.load(array_path(directory, split, layer), mmap_mode="r"),
            np.load(array_path(directory, split, "labels")))


def _fit_torch(directory: Path, entry: dict[str, Any], splits: list[str],
               settings: ProbeParams, device: str,
               threads: int) -> tuple[float, dict[str, float], int]:
    """:mod:`labkit.logistic`: the layer streamed from its memory map, never loaded."""
    import torch

    from labkit import logistic

    torch.set_num_threads(threads)
    features, labels = _arrays(directory, "train", entry["name"])
    positions = entry["positions"]
    probe = logistic.fit(features, labels, int(labels.max()) + 1, positions=positions,
                         C=settings.C, max_iter=settings.max_iter, tol=settings.tol,
                         standardize=settings.standardize, device=device)
    scores = {split: probe.score(*_arrays(directory, split, entry["name"]), positions)
              for split in splits}
    return probe.score(features, labels, positions), scores, probe.n_iter


def _fit_sklearn(directory: Path, entry: dict[str, Any], splits: list[str],
                 settings: ProbeParams, device: str,
                 threads: int) -> tuple[float, dict[str, float], int]:
    """scikit-learn's L-BFGS on the whole layer as one float32 array in memory."""
    # imported here: scikit-learn takes seconds to import, which every labkit command
    # would pay otherwise
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=settings.C, max_iter=settings.max_iter, tol=settings.tol)
    probe = make_pipeline(StandardScaler(), model) if settings.standardize else model
    train_x, train_y = _rows(directory, "train", entry)
    with warnings.catch_warnings():
        # reported per layer in the ``converged`` column instead
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, train_y)
    scores = {split: probe.score(*_rows(directory, split, entry)) for split in splits}
    return probe.score(train_x, train_y), scores, int(model.n_iter_.max())


def cache_path(directory: Path, key: list[Any]) -> Path:
    """The cache entry of ``key`` (``[manifest digest, layer, probe params]``)."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(directory) / CACHE_DIR / f"{name}.json"


def read_cached(directory: Path, key: list[Any], splits: list[str]) -> dict[str, Any] | None:
    """The cached result of ``key``, or ``None`` when absent or not a well-formed entry
    for exactly this key."""
    try:
        entry = read_json(cache_path(directory, key))
    except DamagedFile:
        return None
    result = entry.get("result")
    columns = {"layer": str, "features": int, "converged": bool, "fit_seconds": float,
               **{f"{split}_accuracy": float for split in splits}}
    if entry.get("key") != key or not isinstance(result, dict) or set(result) != set(columns):
        return None
    if not all(isinstance(result[k], t) for k, t in columns.items()):
        return None
    return result


def write_cached(directory: Path, key: list[Any], result: dict[str, Any]) -> None:
    """Store ``result`` (JSON-ready) under ``key``."""
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in result.items()}
    write_json(cache_path(directory, key), {"key": key, "result": plain})


def run_probes(directory: Path, processes: int = 1, params: ProbeParams | None = None,
               device: str = "cpu") -> pd.DataFrame:
    """Probe every layer of the latents in ``directory``, in parallel, cached.

    Layers already in the cache are read in this process; only the others go to
    ``processes`` workers, so a fully cached rerun starts no worker at all.

    Returns:
        One row per layer in network order: ``layer``, ``downsampling`` (the latents'
        mode), ``features``, ``train_accuracy``, ``<split>_accuracy`` per eval split,
        ``converged``, ``fit_seconds``, ``latents_digest``.

    Raises:
        UserError: no complete extraction in ``directory``, or a layer's file of some
            split is missing (train and eval files are paired by layer name).
    """
    directory = Path(directory).absolute()
    manifest = read_manifest(directory)
    if manifest is None:
        raise UserError(f"{directory} holds no complete latents (no manifest.json); extract "
                        f"them with `labkit extract SPEC --run-id ID` first")
    layers = manifest["plan"]["layers"]
    missing = [array_path(directory, split, layer).name for layer in layers
               for split in manifest["plan"]["splits"]
               if not array_path(directory, split, layer).exists()]
    if missing:
        raise UserError(f"{directory} lacks {', '.join(missing)}; extract again "
                        f"(delete {directory / 'manifest.json'} first)")
    settings = (params or ProbeParams()).model_dump(mode="json")
    keys = {layer: [manifest["digest"], layer, settings] for layer in layers}
    splits = list(manifest["plan"]["splits"])
    results = {layer: cached for layer in layers
               if (cached := read_cached(directory, keys[layer], splits)) is not None}
    todo = [layer for layer in layers if layer not in results]
    if todo:  # the bytes about to be read must be the ones extracted
        verify_files(directory, manifest, [array_path(directory, split, name).name
                                           for split in manifest["plan"]["splits"]
                                           for name in ["labels", *todo]])
    workers = min(processes, max(len(todo), 1))
    threads = max(1, (os.cpu_count() or 1) // workers)  # no oversubscribed cores
    fitted = Parallel(n_jobs=workers)(
        delayed(fit_layer)(manifest["digest"], layer, settings, str(directory), device, threads)
        for layer in todo)
    if workers > 1:
        # loky keeps its workers for reuse and an exiting process then waits out their
        # idle timeout (minutes): a grid worker would hang long after its run finished
        get_reusable_executor().shutdown(wait=True)
    for layer, result in zip(todo, fitted, strict=True):
        write_cached(directory, keys[layer], result)
        results[layer] = read_cached(directory, keys[layer], splits)  # as JSON gives it back
    table = pd.DataFrame([results[layer] for layer in layers])
    table.insert(1, "downsampling", str(manifest["plan"]["mode"]))
    table["latents_digest"] = manifest["digest"]
    for name, value in settings.items():  # the parameters every row was fitted with
        table[f"probe_{name}"] = value
    return table


def save_results(run_dir: Path, table: pd.DataFrame, prefix: str | None = None) -> Path:
    """Write ``table`` into the run's probe CSV, replacing the rows of its downsampling
    and keeping those of others; returns the CSV's path."""
    path = results_path(run_dir, prefix)
    if path.exists():
        previous = pd.read_csv(path, dtype={"downsampling": str})
        kept = previous[~previous["downsampling"].isin(table["downsampling"].unique())]
        table = pd.concat([kept, table], ignore_index=True)
    write_csv(path, table)
    return path

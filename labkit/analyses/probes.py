"""Linear probes: one logistic regression per layer, on stored latents.

A layer's probe is fitted on the train split's latents (:mod:`labkit.analyses.latents`) and
scored on every split. By default the features are standardised (mean 0, variance 1,
estimated on the train split) and the multinomial model is fitted with L-BFGS to
convergence, by default streamed from the memory-mapped latents with torch
(:mod:`labkit.measures.logistic`: scikit-learn's objective and stopping test, flat memory, the
run's GPU when it has one; ``solver: "sklearn"`` fits scikit-learn's
``LogisticRegression`` on the layer loaded whole): on standardised features that takes
tens to hundreds of iterations, while SAGA on raw activations (PHD-LAB's configuration) stops after ``max_iter=100`` passes
over the data, usually unconverged and several times slower
(``benchmarks/bench_probes.py``; numbers in docs/layers.md).

Layers are fitted in parallel worker processes (joblib, loky backend), no more at once
than fit in a memory budget (:func:`fit_bytes`, :func:`plan_workers`), and only when
that ends sooner than fitting them one after another in the calling process: a worker
first starts and imports torch (:func:`paying_workers`; small layers are fitted in
process). Every fit is
cached in ``<latent directory>/probe_cache/<key>.json``, plain JSON keyed by the
manifest digest, the layer name and the probe parameters (never by hashing the arrays).
Plain data, not pickles: a cache in a folder someone else produced cannot run code.
Each entry stores its key and the sha256 of its key and result; an entry whose key or
digest does not match, or that does not hold a well-formed result (an edited value, a
damaged file), is fitted again. Results come back in network order.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor
from pydantic import BaseModel, ConfigDict, Field

from labkit.core.errors import DamagedFile, UserError
from labkit.store.atomic import write_csv, write_json
from labkit.store.latent_layout import array_path, read_manifest, verify_files
from labkit.store.readers import TEXT, read_csv_file, read_json, read_npy_file, readable_size
from labkit.store.runinfo import PROBES_CSV
from labkit.training.progress import track

RESULTS_CSV = PROBES_CSV
CACHE_DIR = "probe_cache"
WORKER_BYTES = {"torch": 448 << 20, "sklearn": 192 << 20}
"""Anonymous memory of a probe worker besides the latents it reads, per solver: Python,
numpy, pandas and torch take 311 MiB once imported and torch's first computations about
85 MiB more; Python, numpy, pandas and scikit-learn 106 MiB (measured on CPU)."""
FIT_SECONDS = (0.05, 1e-7)
"""Estimated seconds of one layer's fit on one core: fixed, and per value (row × feature)
of its train latents (:func:`fit_seconds`; an L-BFGS fit of digits-sized layers)."""
WORKER_START_SECONDS = 3.0
"""Seconds a worker process takes to start and import its solver (torch) before its
first fit: probes use workers only when they save more than this (:func:`paying_workers`)."""
DEFAULT_MEMORY_SHARE = 0.5
"""The default memory budget of the probes: this share of the memory the machine has
available now."""


class ProbeParams(BaseModel):
    """How each probe is fitted (part of the cache key)."""

    model_config = ConfigDict(extra="forbid")

    C: float = Field(1.0, gt=0, description="inverse L2 regularisation strength (scikit-learn's C)")
    max_iter: int = Field(1000, ge=1, description="most L-BFGS iterations")
    tol: float = Field(1e-4, gt=0, description="L-BFGS stopping tolerance")
    standardize: bool = Field(
        True, description="scale features to mean 0, variance 1 (train statistics)")
    solver: Literal["torch", "sklearn"] = Field(
        "torch", description="torch: scikit-learn's objective and stopping test, fitted "
                             "on an in-memory sample and refined by passes over all rows "
                             "streamed from the memory map (flat memory, the run's GPU when "
                             "it has one; docs/probes.md); sklearn: scikit-learn's "
                             "LogisticRegression (lbfgs), the whole layer in memory")


def available_threads() -> int:
    """The cores the fits may use together: ``OMP_NUM_THREADS`` when set (a shared
    machine's limit; threads beyond a free core slow small fits tenfold), else every
    core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def default_memory() -> int:
    """:data:`DEFAULT_MEMORY_SHARE` of ``MemAvailable`` in /proc/meminfo, else of the
    physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * DEFAULT_MEMORY_SHARE)
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_MEMORY_SHARE)


def fit_bytes(entry: dict[str, Any], images: dict[str, int], classes: int,
              solver: str) -> int:
    """Upper estimate of the anonymous memory of a worker fitting the layer ``entry`` (a
    manifest entry) of latents with ``images`` per split, including the worker itself.

    ``torch`` streams, so its data share is bounded (:func:`labkit.measures.logistic.peak_bytes`);
    ``sklearn`` holds the train split as float32, about three times over while it
    standardises and fits (measured: ``benchmarks/bench_probe_memory.py``), with float64
    probabilities per row and class, and then each eval split as float32.
    """
    from labkit.measures import logistic

    width, positions = entry["features"], entry["positions"]
    rows = images["train"] * positions
    if solver == "torch":
        return WORKER_BYTES["torch"] + logistic.peak_bytes(rows, width, classes)
    evals = max((count for split, count in images.items() if split != "train"), default=0)
    return (WORKER_BYTES["sklearn"] + 3 * rows * width * 4 + rows * classes * 8
            + evals * positions * width * 4)


def plan_workers(needs: dict[str, int], processes: int, budget: int) -> tuple[int, str]:
    """How many of the fits ``needs`` (layer -> :func:`fit_bytes`) run at once with
    ``processes`` asked and ``budget`` bytes for them all, and why, in words.

    Raises:
        UserError: one fit alone needs more than the budget.
    """
    largest = max(needs, key=needs.get)
    need = needs[largest]
    if need > budget:
        raise UserError(f"probing layer {largest} needs about {readable_size(need)}, more than "
                        f"the memory budget of {readable_size(budget)}; raise --memory, or use "
                        f"the streaming solver (solver: torch) whose memory does not grow "
                        f"with the layer")
    fit = budget // need
    workers = max(1, min(processes, len(needs), fit))
    why = (f"{len(needs)} layer(s) to fit, {workers} at a time: -mp {processes}, memory "
           f"budget {readable_size(budget)}, each fit up to {readable_size(need)} ({largest})")
    if fit < min(processes, len(needs)):
        why += f", so the budget holds {fit} at once (raise --memory for more)"
    return workers, why


def fit_seconds(entry: dict[str, Any], images: dict[str, int]) -> float:
    """About how long the fit of a layer (a manifest entry) takes on one core: a fixed
    cost and a cost per value of its train latents (measured on digits-sized layers,
    ``benchmarks/bench_cli.py``)."""
    return FIT_SECONDS[0] + FIT_SECONDS[1] * images["train"] * entry["positions"] * entry["features"]


def paying_workers(seconds: list[float], workers: int) -> int:
    """``workers`` when fitting layers of these estimated ``seconds`` on that many
    workers, each first starting and importing its solver (:data:`WORKER_START_SECONDS`),
    ends sooner than fitting them one after another in this process; else 1."""
    total = sum(seconds)
    pays = max(total / workers, max(seconds)) + WORKER_START_SECONDS < total
    return workers if workers > 1 and pays else 1


def results_path(run_dir: Path, prefix: str | None = None) -> Path:
    """``<run_dir>/[<prefix>_]probe_performances.csv``."""
    return Path(run_dir) / (f"{prefix}_{RESULTS_CSV}" if prefix else RESULTS_CSV)


def _rows(directory: Path, split: str, layer: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A split's latents of ``layer`` as float32 ``(rows, features)`` and a label per row."""
    features, labels = _arrays(directory, split, layer["name"])
    return np.asarray(features, dtype=np.float32), np.repeat(labels, layer["positions"])


def fit_layer(digest: str, layer: str, params: dict[str, Any], directory: str,
              device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Fit and score the probe of ``layer`` on the latents in ``directory``.

    ``digest`` (the manifest's) only keys the cache; ``directory``, ``device`` (where the
    torch solver computes) and ``threads`` (torch intra-op threads in this worker) are
    left out of the key: they change where and how fast, not what.

    Returns:
        ``layer``, ``features``, ``<split>_accuracy`` for every split (fraction in
        [0, 1]), ``converged`` (the solver's stopping test passed: for ``torch`` the
        largest gradient entry at most ``tol``; for ``sklearn`` stopped before
        ``max_iter``) and ``fit_seconds`` (wall time of the fit and scoring, the
        import of the solver's library excluded).
    """
    manifest = read_manifest(Path(directory))
    entry = next(e for e in manifest["layers"] if e["name"] == layer)
    settings = ProbeParams(**params)
    splits = [s for s in manifest["plan"]["splits"] if s != "train"]
    fit = _load_solver(settings.solver)
    started = time.perf_counter()  # the solver's libraries are imported: the fit alone
    train_accuracy, scores, converged = fit(Path(directory), entry, splits, settings, device,
                                            threads)
    seconds = time.perf_counter() - started
    return {"layer": layer, "features": entry["features"], "train_accuracy": train_accuracy,
            **{f"{split}_accuracy": scores[split] for split in splits},
            "converged": converged, "fit_seconds": seconds}


_EXTRACT_AGAIN = "delete the manifest.json beside it and extract again"


def _arrays(directory: Path, split: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's latents of ``layer`` (read-only memory map) and its labels, one per image.

    Raises:
        DamagedFile: a file is no array of numbers (:func:`labkit.store.readers.read_npy_file`).
    """
    return (read_npy_file(array_path(directory, split, layer), "f", mmap=True,
                          fix=_EXTRACT_AGAIN),
            read_npy_file(array_path(directory, split, "labels"), "iu", fix=_EXTRACT_AGAIN))


def _load_solver(solver: str) -> Callable[..., tuple[float, dict[str, float], bool]]:
    """The fit function of ``solver``, its library imported (a worker's first import of
    torch takes seconds, which no layer's ``fit_seconds`` should show)."""
    if solver == "torch":
        import scipy.optimize  # noqa: F401  (labkit.measures.logistic's L-BFGS)
        return _fit_torch
    import sklearn.linear_model  # noqa: F401
    return _fit_sklearn


def _fit_torch(directory: Path, entry: dict[str, Any], splits: list[str],
               settings: ProbeParams, device: str,
               threads: int) -> tuple[float, dict[str, float], bool]:
    """:mod:`labkit.measures.logistic`: the layer streamed from its memory map, never loaded."""
    # imported here, as scikit-learn below: a worker loads only its solver's library
    # (torch alone holds about 250 MB)
    import torch

    from labkit.measures import logistic

    before = torch.get_num_threads()  # a fit in the calling process leaves it as it was
    torch.set_num_threads(threads)
    try:
        features, labels = _arrays(directory, "train", entry["name"])
        positions = entry["positions"]
        probe = logistic.fit(features, labels, int(labels.max()) + 1, positions=positions,
                             C=settings.C, max_iter=settings.max_iter, tol=settings.tol,
                             standardize=settings.standardize, device=device)
        scores = {split: probe.score(*_arrays(directory, split, entry["name"]), positions)
                  for split in splits}
    finally:
        torch.set_num_threads(before)
    return probe.train_accuracy, scores, probe.converged


def _fit_sklearn(directory: Path, entry: dict[str, Any], splits: list[str],
                 settings: ProbeParams, device: str,
                 threads: int) -> tuple[float, dict[str, float], bool]:
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
    return probe.score(train_x, train_y), scores, int(model.n_iter_.max()) < settings.max_iter


def cache_path(directory: Path, key: list[Any]) -> Path:
    """The cache entry of ``key`` (``[manifest digest, layer, probe params]``)."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(directory) / CACHE_DIR / f"{name}.json"


def _entry_digest(key: list[Any], result: dict[str, Any]) -> str:
    """sha256 of a cache entry's key and result (canonical JSON)."""
    return hashlib.sha256(json.dumps([key, result], sort_keys=True).encode()).hexdigest()


def read_cached(directory: Path, key: list[Any], splits: list[str]) -> dict[str, Any] | None:
    """The cached result of ``key``, or ``None`` when absent, damaged, edited (its
    stored sha256 does not match) or not a well-formed entry for exactly this key."""
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
    if entry.get("sha256") != _entry_digest(key, result):
        return None
    return result


def write_cached(directory: Path, key: list[Any], result: dict[str, Any]) -> None:
    """Store ``result`` (JSON-ready) under ``key``, with the sha256 of both."""
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in result.items()}
    # the digest of what JSON gives back (a float written and read is the same float)
    plain = json.loads(json.dumps(plain))
    write_json(cache_path(directory, key),
               {"key": key, "result": plain, "sha256": _entry_digest(key, plain)})


def run_probes(directory: Path, processes: int = 1, params: ProbeParams | None = None,
               device: str = "cpu", memory: int | None = None,
               report: Callable[[str], None] | None = None, progress: bool = False,
               what: str = "probes") -> pd.DataFrame:
    """Probe every layer of the latents in ``directory``, in parallel, cached.

    Layers already in the cache are read in this process; only the others go to
    workers, so a fully cached rerun starts no worker at all. At most ``processes``
    fits run at once, and no more than fit together in ``memory`` bytes
    (:func:`fit_bytes` each; default :func:`default_memory`); ``report`` receives one
    line saying how many run at once and why. ``progress``: show each layer as its fit
    ends (:func:`labkit.training.progress.track`, the loop called ``what``).

    Returns:
        One row per layer in network order: ``layer``, ``downsampling`` (the latents'
        mode), ``features``, ``train_accuracy``, ``<split>_accuracy`` per eval split,
        ``converged``, ``fit_seconds``, ``latents_digest``.

    Raises:
        UserError: no complete extraction in ``directory``, a layer's file of some
            split is missing (train and eval files are paired by layer name), or one
            layer's fit alone needs more than ``memory``.
    """
    directory = Path(directory).absolute()
    manifest = read_manifest(directory)
    if manifest is None:
        raise UserError(f"{directory} holds no complete latents (no manifest.json); extract "
                        f"them with `labkit extract SPEC --run-id ID` first")
    layers = manifest["plan"]["layers"]
    entries = {entry["name"]: entry for entry in manifest["layers"]}
    missing = [array_path(directory, split, layer).name for layer in layers
               for split in manifest["plan"]["splits"]
               if not array_path(directory, split, layer).exists()]
    if missing:
        raise UserError(f"{directory} lacks {', '.join(missing)}; extract again "
                        f"(delete {directory / 'manifest.json'} first)")
    params = params or ProbeParams()
    settings = params.model_dump(mode="json")
    keys = {layer: [manifest["digest"], layer, settings] for layer in layers}
    splits = list(manifest["plan"]["splits"])
    results = {layer: cached for layer in layers
               if (cached := read_cached(directory, keys[layer], splits)) is not None}
    todo = [layer for layer in layers if layer not in results]
    workers = 1
    if todo:
        classes = int(_arrays(directory, "train", todo[0])[1].max()) + 1
        needs = {layer: fit_bytes(entries[layer], manifest["plan"]["splits"], classes,
                                  params.solver) for layer in todo}
        workers, why = plan_workers(needs, processes,
                                    memory if memory is not None else default_memory())
        seconds = [fit_seconds(entries[layer], manifest["plan"]["splits"]) for layer in todo]
        if paying_workers(seconds, workers) < workers:
            why = (f"{len(todo)} layer(s) to fit, in this process: about {sum(seconds):.1f} s "
                   f"of fitting, less than {workers} workers would save after starting")
            workers = 1
        if report is not None:
            report(why)
        # the bytes about to be read must be the ones extracted
        verify_files(directory, manifest, [array_path(directory, split, name).name
                                           for split in manifest["plan"]["splits"]
                                           for name in ["labels", *todo]])
    threads = max(1, available_threads() // workers)  # no oversubscribed cores
    fitted = Parallel(n_jobs=workers, return_as="generator")(
        delayed(fit_layer)(manifest["digest"], layer, settings, str(directory), device, threads)
        for layer in todo)
    for layer, result in zip(todo, track(fitted, what, unit="layer", progress=progress,
                                         total=len(layers), done=len(results),
                                         label=lambda fit: fit["layer"]), strict=True):
        write_cached(directory, keys[layer], result)
        results[layer] = read_cached(directory, keys[layer], splits)  # as JSON gives it back
    if workers > 1:
        # loky keeps its workers for reuse and an exiting process then waits out their
        # idle timeout (minutes): a grid worker would hang long after its run finished
        get_reusable_executor().shutdown(wait=True)
    table = pd.DataFrame([results[layer] for layer in layers])
    table.insert(1, "downsampling", str(manifest["plan"]["mode"]))
    table["latents_digest"] = manifest["digest"]
    for name, value in settings.items():  # the parameters every row was fitted with
        table[f"probe_{name}"] = value
    return table


def save_results(run_dir: Path, table: pd.DataFrame, prefix: str | None = None) -> Path:
    """Write ``table`` into the run's probe CSV, replacing the rows of its downsampling
    and ``probe_mode`` (``latents`` or ``stream``; ``latents`` for rows written before
    the column) and keeping the others; returns the CSV's path."""
    path = results_path(run_dir, prefix)
    try:  # a damaged file is replaced; the other blocks are then computed again
        previous = read_results(path) if path.exists() else None
    except DamagedFile:
        previous = None
    if previous is not None:
        previous, table = (t if "probe_mode" in t else t.assign(probe_mode="latents")
                           for t in (previous, table))
        blocks = set(zip(table["downsampling"], table["probe_mode"]))
        kept = previous[[block not in blocks for block in
                         zip(previous["downsampling"], previous["probe_mode"])]]
        table = pd.concat([kept, table], ignore_index=True)
    write_csv(path, table)
    return path


def read_results(path: Path) -> pd.DataFrame:
    """A probe table (``[<prefix>_]probe_performances.csv``), ``downsampling`` as text.

    Raises:
        DamagedFile: unreadable, not a table, ``layer`` or ``downsampling`` missing.
    """
    return read_csv_file(path, {"layer": TEXT, "downsampling": TEXT})

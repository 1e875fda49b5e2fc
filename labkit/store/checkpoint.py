"""Per-epoch checkpoints: atomic, verified, loadable with ``weights_only=True``.

``checkpoints/epoch_0003.pt`` holds the state after three epochs, next to
``epoch_0003.pt.sha256``, the digest of the file. A checkpoint whose digest does not
match (or that cannot be read) is reported with a warning and the previous one is used.
Only tensors and Python primitives are stored. The digest doubles as the checkpoint's
fingerprint: an artifact computed from a checkpoint records it (:func:`digest`).

After writing epoch N, the checkpoints kept are N and the newest *intact* ones before it
(``keep`` in all, the spec's ``keep_checkpoints``, at least 2 by default); older or
damaged ones are removed, so a resume always has a fallback that works.

Mid-epoch checkpoints (``checkpoint_steps`` / ``checkpoint_minutes``) are
``partial_<step>.pt``: the state after ``step`` optimizer steps, inside the epoch after
``state["epoch"]``, with the epoch's position under ``state["partial"]``. A new one is
written whole (with its digest) before the older ones are removed, so a crash at any
moment leaves an intact one; all are removed once that epoch's own checkpoint exists.
:func:`load_latest` prefers the newest intact one that continues the newest intact
epoch checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labkit.core.errors import UserError
from labkit.store.atomic import atomic_open, write_text
from labkit.store.checkpoint_files import (BEST, checkpoint_path, digest, digest_path, epoch_of,
                                           epochs_on_disk, is_intact, partial_path,
                                           partials_on_disk, saved_epochs)

# the torch-free part, kept importable from here: names, digests, what is on disk
__all__ = ["BEST", "KEEP", "checkpoint_path", "digest", "digest_path", "epoch_of",
           "epochs_on_disk", "is_intact", "partial_path", "partials_on_disk", "saved_epochs",
           "save", "save_partial", "save_best", "read", "load_latest", "rng_state",
           "set_rng_state"]

KEEP = 2


def _write(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, then its digest next to it (a crash in
    between leaves a digest that does not match: the file reads as damaged)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    write_text(digest_path(path), hashlib.sha256(data).hexdigest() + "\n")
    return path


def save(directory: Path, epoch: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``state`` as the checkpoint after ``epoch`` epochs; keep the newest ``keep``
    intact ones (at least this one and, when there is one, an intact fallback) and drop
    the mid-epoch checkpoints that this epoch completes."""
    path = _write(checkpoint_path(directory, epoch), state)
    kept, keep = 1, max(keep, 2)
    for old in reversed([e for e in epochs_on_disk(directory) if e < epoch]):
        stale = checkpoint_path(directory, old)
        if kept < keep and is_intact(stale):
            kept += 1
            continue
        stale.unlink(missing_ok=True)
        digest_path(stale).unlink(missing_ok=True)
    _remove_partials(directory, below=None)
    return path


def save_partial(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write the mid-epoch checkpoint after ``step`` optimizer steps, then remove the
    older ones."""
    path = _write(partial_path(directory, step), state)
    _remove_partials(directory, below=step)
    return path


def _remove_partials(directory: Path, below: int | None) -> None:
    """Remove the mid-epoch checkpoints (those before step ``below``; all for ``None``)."""
    for step in partials_on_disk(directory):
        if below is None or step < below:
            stale = partial_path(directory, step)
            stale.unlink(missing_ok=True)
            digest_path(stale).unlink(missing_ok=True)


def save_best(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``best.pt`` (atomic, with its digest); never pruned."""
    return _write(Path(directory) / BEST, state)


def read(path: Path) -> dict[str, Any]:
    """Load one checkpoint after verifying its digest.

    Raises:
        ValueError: missing digest, digest mismatch, or unreadable file (the message
            is labkit's own: it never relays the loader's advice to load unsafely).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path.name} does not exist")
    data = path.read_bytes()
    recorded = digest(path)
    if recorded is None:
        raise ValueError(f"{path.name} has no valid digest file (interrupted while saving, "
                         f"or damaged)")
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(f"{path.name} does not match its digest (damaged)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # a file that matches its digest but is no checkpoint
        state = None
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} is not a labkit checkpoint (it holds something other "
                         f"than a state of tensors and plain values, which labkit never "
                         f"loads)")
    return state


def load_latest(directory: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint in ``directory``, or ``None`` when there is none.

    Damaged newer checkpoints are skipped with a warning naming them. The newest intact
    mid-epoch checkpoint wins when it continues the newest intact epoch checkpoint (or
    there is none).
    """
    latest = None
    for epoch in reversed(epochs_on_disk(directory)):
        path = checkpoint_path(directory, epoch)
        try:
            latest = read(path)
            break
        except Exception as exc:  # any damage means: fall back to the previous epoch
            warnings.warn(f"checkpoint {path} is unusable ({exc}); falling back to the "
                          f"previous one", stacklevel=2)
    for step in reversed(partials_on_disk(directory)):
        partial = partial_path(directory, step)
        try:
            state = read(partial)
        except Exception as exc:  # noqa: BLE001 - an older one or the epoch's is the fallback
            warnings.warn(f"checkpoint {partial} is unusable ({exc}); falling back to the "
                          f"previous one", stacklevel=2)
            continue
        if latest is None or state["epoch"] >= latest["epoch"]:
            return state
        break  # older than the epoch checkpoint: a leftover
    return latest


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as tensors and primitives."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def kept_rng() -> Iterator[None]:
    """Leave the Python, NumPy, torch and CUDA RNG states as they were (:func:`rng_state`)
    whatever the block draws: training or building another run (a teacher) must not move
    this run's random stream, or a run would depend on whether the other was trained."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def check_owner(state: dict[str, Any], run_hash: str, where: Path) -> None:
    """Refuse a checkpoint ``state`` another run wrote (files copied between runs).

    Raises:
        UserError: its ``run_hash`` is not ``run_hash`` (names ``where``).
    """
    owner = state.get("run_hash", run_hash)  # checkpoints before 0.2 carry none
    if owner != run_hash:
        raise UserError(f"{where} was written by run {owner}, not by this run ({run_hash}); "
                        f"the directory holds files of another run: move them away")

"""Layer activations ("latents") of a trained run, as memory-mappable ``.npy`` files.

Extraction runs the final model in eval mode (BatchNorm uses its running statistics,
dropout is off) over the un-augmented train split and every eval split, records the
output of every measured layer (Conv2d and Linear, filterable) and reduces it by the
*mode*:

* ``d`` (an int): a conv map is average-pooled (adaptive pooling) to ``min(h, d) ×
  min(w, d)`` and flattened, one row of ``C·min(h,d)·min(w,d)`` features per image;
* ``"pixelwise"``: one row of ``C`` features per image and spatial position, rows in
  image, then row, then column order;
* ``"none"``: the whole map flattened.

Linear outputs are kept as they are (one row per image).

Layout, keyed by the run's identity (run-id and config hash) and the mode::

    <root>/<run-id>/<hash>/<mode>/
        manifest.json           written last: the extraction is complete when it exists
        <split>-labels.npy      int64, one label per image
        <split>-<layer>.npy     (rows, features), float16 unless asked otherwise
        progress.json           while unfinished: images done per split

``<root>`` is ``latent_datasets/`` next to the spec's ``logs_dir`` unless given. An
interrupted extraction resumes at the last progress record (files are pre-allocated and
written in place; a record, every few seconds, follows the data flushed to disk); a
complete one is skipped.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap
from pydantic import BaseModel, Field
from torch.utils.data import DataLoader, Dataset, Subset

from labkit.core.errors import DamagedFile, UserError
from labkit.measures.layers import measured_layers
from labkit.store.atomic import file_sha256, write_json
from labkit.store.identity import RunConfig
from labkit.store.latent_layout import (DEFAULT_ROOT, MANIFEST, PROGRESS, Mode, array_path, located,
                                        parse_mode, pointer_path, read_manifest)
from labkit.store.readers import read_json, read_json_file, readable_size
from labkit.training.progress import track

__all__ = ["MANIFEST", "PROGRESS", "Mode", "array_path", "extract", "locate", "parse_mode",
           "pointer_path", "read_manifest", "reduce", "source_run_dir", "stream"]

FLOAT16_MAX = float(np.finfo(np.float16).max)


class _Progress(BaseModel):
    """What ``progress.json`` of an unfinished extraction holds."""

    plan: dict[str, Any]
    batch_size: int = Field(ge=1)
    done: dict[str, Annotated[int, Field(ge=0)]]


def locate(run: RunConfig, mode: Mode, root: str | None = None) -> Path:
    """Where the latents of ``run`` in ``mode`` live: under ``root`` when given, else
    where the run's pointer says, else under ``latent_datasets/`` next to ``logs_dir``.

    A pointer is followed only to an existing folder named ``<run-id>/<hash>/<mode>`` of
    this run: an edited or foreign pointer never makes labkit write into (or clear)
    another folder, nor one left behind where a moved project used to be (a pointer
    records a folder inside the project relative to the run directory, see
    :func:`labkit.store.latent_layout.portable`).
    """
    own = (run.run_id, run.hash, str(mode))
    if root is None:
        try:
            recorded = read_json(pointer_path(run.directory, mode)).get("directory")
        except DamagedFile:
            recorded = None
        directory = located(recorded, run.directory) if isinstance(recorded, str) else None
        if directory is not None and directory.parts[-3:] == own and directory.is_dir():
            return directory
        root = Path(run.config["logs_dir"]).absolute().parent / DEFAULT_ROOT
    return Path(root).absolute().joinpath(*own)


def source_run_dir(directory: Path, manifest: dict[str, Any]) -> Path:
    """The run directory the latents in ``directory`` were extracted from, where it is
    now: found from ``directory`` (the manifest records the way when both lie in one
    project, :func:`labkit.store.latent_layout.portable`), so a moved project uses its own run;
    else where it was (latents copied elsewhere still name their run)."""
    source = manifest["plan"]["source"]
    way = source.get("run_dir_in_project")
    if isinstance(way, str):
        here = located(way, directory)
        if here.is_dir() and here.name.endswith(str(source.get("run_hash"))):
            return here
    return Path(source["run_dir"])


def _pooled(output: torch.Tensor, mode: Mode) -> torch.Tensor:
    """A conv map ``(N, C, h, w)`` average-pooled to at most ``mode × mode`` for an int
    ``mode``; anything else unchanged."""
    if output.dim() == 4 and isinstance(mode, int):
        size = (min(output.shape[2], mode), min(output.shape[3], mode))
        return F.adaptive_avg_pool2d(output, size)
    return output


def reduce(output: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Rows of a layer's output ``(N, C, h, w)`` or ``(N, F)`` for ``mode``:
    ``(N·positions, features)``."""
    output = _pooled(output, mode)
    if output.dim() == 4 and mode == "pixelwise":
        return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])
    return output.flatten(1)


class _Recorder:
    """Forward hooks keeping the last output of each named module."""

    def __init__(self, layers: list[tuple[str, torch.nn.Module]]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output.detach()
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _reduced_batches(model: torch.nn.Module, recorder: _Recorder, loader: Iterable[Any],
                     mode: Mode) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Per ``(images, labels)`` batch of ``loader``: layer → its output reduced by
    ``mode`` (on the model's device), and the batch's labels."""
    device = next(model.parameters()).device
    for batch, labels in loader:
        model(batch.to(device))
        yield {name: reduce(output, mode) for name, output in recorder.outputs.items()}, labels


def stream(model: torch.nn.Module, batches: Iterable[Any], mode: Mode,
           layers: Sequence[str] | None = None
           ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The latents of ``(images, labels)`` batches (a ``DataLoader`` of an un-augmented
    split) as :func:`extract` would store them (eval mode, no gradients, ``mode``'s
    reduction), computed batch by batch and never stored: layer → float32 rows
    ``(images · positions, features)`` on the model's device, and the images' int64
    labels there. The model is put in eval mode."""
    model.eval()
    recorder = _Recorder(measured_layers(model, layers))
    device = next(model.parameters()).device
    try:
        # no_grad rather than inference_mode: the mode holds while the caller computes
        # between batches, and inference tensors would refuse its in-place updates
        with torch.no_grad():
            for rows, labels in _reduced_batches(model, recorder, batches, mode):
                yield ({name: x.float() for name, x in rows.items()},
                       torch.as_tensor(labels, dtype=torch.int64, device=device))
    finally:
        recorder.close()


def planned_bytes(shapes: dict[str, tuple[int, int]], split_sizes: dict[str, int],
                  dtype: str) -> int:
    """Bytes an extraction writes: every layer's ``(images × rows, features)`` array and
    the int64 labels, per split (``.npy`` headers aside).

    Args:
        shapes: layer → ``(rows per image, features)`` (:func:`reduce` of one image).
        split_sizes: split → images.
        dtype: storage type.
    """
    per_image = sum(rows * features for rows, features in shapes.values()) * np.dtype(dtype).itemsize
    return sum(images * (per_image + 8) for images in split_sizes.values())


def layer_shapes(model: torch.nn.Module, image: torch.Tensor, mode: Mode,
                 layers: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """Layer → ``(rows per image, features)`` in ``mode``, from one forward of ``image``
    ``(C, H, W)`` (eval mode, no gradients), for the layers the forward pass calls."""
    recorder = _Recorder(measured_layers(model, layers))
    try:
        was_training = model.training
        with torch.inference_mode():
            model.eval()(image.unsqueeze(0).to(next(model.parameters()).device))
        model.train(was_training)
        return {name: tuple(reduce(out, mode).shape) for name, out in recorder.outputs.items()}
    finally:
        recorder.close()


def check_free_space(directory: Path, needed: int) -> None:
    """Refuse to start an extraction that cannot fit on the disk of ``directory``.

    Raises:
        UserError: fewer free bytes than ``needed`` (with both sizes and the fix).
    """
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise UserError(f"the latents need {readable_size(needed)} but {directory} has "
                        f"{readable_size(free)} free; free space, choose another latents_dir, "
                        f"or a smaller downsampling / fewer layers / float16")


def extract(model: torch.nn.Module, splits: dict[str, Dataset], directory: Path, mode: Mode,
            source: dict[str, Any], layers: Sequence[str] | None = None, batch_size: int = 512,
            dtype: str = "float16", progress: bool = True,
            record_seconds: float = 2.0) -> dict[str, Any]:
    """Extract the latents of ``model`` on ``splits`` into ``directory``; returns the manifest.

    Args:
        model: the trained network (put in eval mode here); inputs and outputs on its device.
        splits: split name → dataset of ``(image, label)``, never augmented (``"train"``
            first by convention).
        directory: where the files go (see the module docstring).
        mode: reduction of conv maps (see the module docstring).
        source: where the model comes from (run directory, run-id, hash, epoch);
            stored in the manifest.
        layers: wildcards on layer names; ``None`` takes every Conv2d and Linear.
        batch_size: images per forward pass (fixed for the whole extraction, resumes
            included, so a resumed extraction writes the same bits).
        dtype: ``"float16"`` (half the size of float32) or ``"float32"``.
        progress: show each split as a step, its batches as a bar on a terminal
            (:mod:`labkit.training.progress`).
        record_seconds: least time between progress records; each one flushes the
            files to disk first (tens of milliseconds), so recording every batch would
            dominate small batches. A kill loses at most this much work.

    Returns:
        The manifest: ``plan`` (mode, dtype, layer names in network order, images per
        split, source), ``layers`` (per layer ``name``, ``positions`` rows per image,
        ``features``, ``row_shape``), ``files`` (file name → sha256) and ``digest``
        (sha256 of all of it; it changes whenever any file or setting changes).

    Raises:
        UserError: an activation is not finite, or beyond float16's range (±65504).
    """
    directory = Path(directory)
    model.eval()
    device = next(model.parameters()).device
    chosen = measured_layers(model, layers)
    recorder = _Recorder(chosen)
    try:
        with torch.inference_mode():
            # one image tells which layers the forward pass calls, and their output shapes
            model(splits[next(iter(splits))][0][0].unsqueeze(0).to(device))
            first = dict(recorder.outputs)
            shapes = {name: reduce(out, mode).shape for name, out in first.items()}
            plan = {"mode": mode, "dtype": dtype,
                    "layers": [name for name, _ in chosen if name in first],
                    "splits": {name: len(ds) for name, ds in splits.items()}, "source": source}
            manifest = read_manifest(directory)
            if manifest is not None and manifest["plan"] == plan:
                if (directory / PROGRESS).exists():  # a crash's leftover beside a whole set
                    (directory / PROGRESS).unlink(missing_ok=True)
                return manifest
            state = _resume_state(directory, plan, batch_size, shapes)
            for split in track(splits, "latents", unit="split", progress=progress,
                               label=lambda s: f"{s} ({len(splits[s])} images, "
                                               f"{len(shapes)} layers)"):
                _extract_split(model, recorder, split, splits[split], directory, mode, shapes,
                               np.dtype(dtype), state, progress, record_seconds)
    finally:
        recorder.close()

    manifest = _manifest(directory, plan, shapes, first, mode)
    write_json(directory / MANIFEST, manifest)
    (directory / PROGRESS).unlink(missing_ok=True)
    return manifest


def _resume_state(directory: Path, plan: dict[str, Any], batch_size: int,
                  shapes: dict[str, torch.Size]) -> dict[str, Any]:
    """Where an extraction of ``plan`` stands in ``directory``: its progress record when
    one of this plan survives, else a clean folder (another plan's files, or a crash
    before the first record, are removed) with the disk checked for room."""
    try:
        progress_file = read_json_file(directory / PROGRESS, _Progress)
    except DamagedFile:
        progress_file = None
    state = progress_file.model_dump() if progress_file is not None else {}
    if state.get("plan") == plan:
        return state
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    check_free_space(directory, planned_bytes(
        {name: tuple(shape) for name, shape in shapes.items()}, plan["splits"], plan["dtype"]))
    return {"plan": plan, "batch_size": batch_size, "done": {}}


def _manifest(directory: Path, plan: dict[str, Any], shapes: dict[str, torch.Size],
              first: dict[str, torch.Tensor], mode: Mode) -> dict[str, Any]:
    """The manifest of a finished extraction: the plan, per layer its rows per image and
    features, the sha256 of every file, and the digest of all of it."""
    entries = [{"name": name, "positions": shapes[name][0], "features": shapes[name][1],
                "row_shape": [first[name].shape[1]] if mode == "pixelwise"
                else list(_pooled(first[name], mode).shape[1:])} for name in plan["layers"]]
    files = sorted(array_path(directory, split, name).name
                   for split in plan["splits"] for name in ["labels", *plan["layers"]])
    body = {"plan": plan, "layers": entries,
            "files": {name: file_sha256(directory / name) for name in files}}
    return {**body, "digest": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def _reserve(path: Path) -> None:
    """Give a freshly created memory-mapped file its disk blocks now: writing into a
    sparse map on a full disk kills the process with SIGBUS, while a reservation that
    does not fit fails here as an ordinary ``OSError`` (no space left on device)."""
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise


def _extract_split(model: torch.nn.Module, recorder: _Recorder, split: str, dataset: Dataset,
                   directory: Path, mode: Mode, shapes: dict[str, torch.Size], dtype: np.dtype,
                   state: dict[str, Any], progress: bool, record_seconds: float) -> None:
    """Fill (or go on filling) the files of one split, recording progress as it goes."""
    images = len(dataset)
    done = state["done"].get(split, 0)
    # files are written as <name>.npy.part and renamed once the split is whole
    targets = {name: (array_path(directory, split, name), (images * rows, features))
               for name, (rows, features) in shapes.items()}
    targets["labels"] = (array_path(directory, split, "labels"), (images,))
    parts = {name: path.with_name(path.name + ".part") for name, (path, _) in targets.items()}
    arrays = {name: open_memmap(parts[name], mode="r+" if done else "w+", shape=shape,
                                dtype=np.int64 if name == "labels" else dtype)
              for name, (_, shape) in targets.items() if done < images}
    if not done:
        for part in parts.values():
            _reserve(part)
    loader = DataLoader(Subset(dataset, range(done, images)), batch_size=state["batch_size"])
    recorded = time.monotonic()
    for reduced, labels in _reduced_batches(model, recorder, track(
            loader, split, unit="batch", progress=progress, lines=False), mode):
        count = len(labels)
        for name, output in reduced.items():
            rows = output.cpu().numpy()
            stored = rows.astype(dtype)
            if not np.isfinite(stored).all():
                raise UserError(
                    f"layer {name} has activations that are not finite in {dtype} "
                    f"(largest magnitude {np.abs(rows).max():.4g}; "
                    f"float16 holds ±{FLOAT16_MAX:g}); "
                    f"extract with dtype float32")
            per_image = shapes[name][0]
            arrays[name][done * per_image:(done + count) * per_image] = stored
        arrays["labels"][done:done + count] = labels.numpy()
        done += count
        if done == images or time.monotonic() - recorded >= record_seconds:
            for array in arrays.values():
                array.flush()  # the data reaches the disk before the record that says so
            state["done"][split] = done
            write_json(directory / PROGRESS, state)
            recorded = time.monotonic()
    arrays.clear()  # unmap before the renames
    for name, (path, _) in targets.items():
        if parts[name].exists():
            os.replace(parts[name], path)

"""Where stored latents live and how their files are named (see :mod:`labkit.analyses.latents`).

Kept apart from the extraction code so that reading latents (the probe workers) needs
neither torch nor the engine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from labkit.core.errors import DamagedFile, UserError
from labkit.store.atomic import file_sha256
from labkit.store.readers import npy_dtype, read_json_file

Mode = int | Literal["pixelwise", "none"]
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
DEFAULT_ROOT = "latent_datasets"


def parse_mode(text: str) -> Mode:
    """``"4"`` → 4; ``"pixelwise"`` and ``"none"`` stay.

    Raises:
        UserError: anything else.
    """
    if text in ("pixelwise", "none"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise UserError(f"downsampling {text!r} is not a positive integer, 'pixelwise' or 'none'")


def array_path(directory: Path, split: str, layer: str) -> Path:
    """The file of ``layer``'s latents of ``split`` (``layer="labels"``: the labels)."""
    return Path(directory) / f"{split}-{layer}.npy"


def verify_files(directory: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Check the files ``names`` of an extraction against the manifest's sha256.

    Raises:
        UserError: a file is missing or its bytes changed since extraction.
    """
    recorded = manifest.get("files", {})
    for name in names:
        path = Path(directory) / name
        if name not in recorded or not path.exists() or file_sha256(path) != recorded[name]:
            raise UserError(f"{path} is missing or no longer matches the sha256 its manifest "
                            f"records (damaged or edited); delete {Path(directory) / MANIFEST} "
                            f"and extract again (`labkit extract SPEC --run-id ID`)")


class _Source(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_dir: str


class _Plan(BaseModel):
    model_config = ConfigDict(extra="allow")

    mode: int | Literal["pixelwise", "none"]
    dtype: Literal["float16", "float32"]
    layers: list[str]
    splits: dict[str, int]
    source: _Source


class _Layer(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    positions: int = Field(ge=1)
    features: int = Field(ge=1)


class _Manifest(BaseModel):
    """What ``manifest.json`` holds (further keys are kept)."""

    model_config = ConfigDict(extra="allow")

    plan: _Plan
    layers: list[_Layer]
    files: dict[str, str]
    digest: str


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete extraction in ``directory``, else ``None`` (also for
    a damaged manifest, or one whose arrays are not numbers of its layers and splits:
    the extraction then counts as incomplete and is redone). Cheap: array headers are
    read, the arrays are checked against their sha256 where they are read
    (:func:`verify_files`)."""
    try:
        manifest = read_json_file(Path(directory) / MANIFEST, _Manifest)
    except DamagedFile:
        return None
    if manifest is None or {e.name for e in manifest.layers} != set(manifest.plan.layers):
        return None
    names = [array_path(directory, split, name).name for split in manifest.plan.splits
             for name in ["labels", *manifest.plan.layers]]
    if sorted(names) != sorted(manifest.files):
        return None
    try:
        kinds = [npy_dtype(Path(directory) / name).kind for name in names]
    except DamagedFile:
        return None
    wanted = ["iu" if name.endswith("-labels.npy") else "f" for name in names]
    if not all(kind in allowed for kind, allowed in zip(kinds, wanted)):
        return None
    return manifest.model_dump()


def portable(target: Path, base: Path, project: Path) -> str:
    """``target`` as a file in folder ``base`` records it: relative to ``base`` when both
    lie inside ``project`` (the folder holding ``logs_dir``), so that a project moved
    or copied elsewhere finds its own files, never the old ones; absolute otherwise (a
    ``latents_dir`` on another disk stays where it is)."""
    target, base, project = (Path(os.path.abspath(p)) for p in (target, base, project))
    if target.is_relative_to(project) and base.is_relative_to(project):
        return os.path.relpath(target, base)
    return str(target)


def located(recorded: str, base: Path) -> Path:
    """A path :func:`portable` recorded in a file in folder ``base``, where it is now
    (absolute)."""
    return Path(os.path.abspath(Path(base) / recorded))


def pointer_path(run_dir: Path, mode: Mode) -> Path:
    """The file in the run directory that points at the run's latents of ``mode``."""
    return Path(run_dir) / f"latents_{mode}.json"

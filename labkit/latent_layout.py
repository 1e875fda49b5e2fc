"""Where stored latents live and how their files are named (see :mod:`labkit.latents`).

Kept apart from the extraction code so that reading latents (the probe workers) needs
neither torch nor the engine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from labkit.atomic import file_sha256, read_json
from labkit.errors import DamagedFile, UserError

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


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete extraction in ``directory``, else ``None`` (also for
    a damaged manifest: the extraction then counts as incomplete and is redone)."""
    try:
        manifest = read_json(Path(directory) / MANIFEST)
    except DamagedFile:
        return None
    required = {"plan": dict, "layers": list, "files": dict, "digest": str}
    if not all(isinstance(manifest.get(k), t) for k, t in required.items()):
        return None
    return manifest


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

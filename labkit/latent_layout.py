"""Where stored latents live and how their files are named (see :mod:`labkit.latents`).

Kept apart from the extraction code so that reading latents (the probe workers) needs
neither torch nor the engine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from labkit.errors import UserError

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


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete extraction in ``directory``, else ``None``."""
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def pointer_path(run_dir: Path, mode: Mode) -> Path:
    """The file in the run directory that points at the run's latents of ``mode``."""
    return Path(run_dir) / f"latents_{mode}.json"

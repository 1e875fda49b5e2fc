"""Where a run's checkpoints live and whether they are there: file names, the sha256
sidecar digests, the epochs and mid-epoch steps on disk. Torch-free, so that
``labkit status`` tells a trained run without importing torch; writing and loading
checkpoints is :mod:`labkit.checkpoint`.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

_NAME = re.compile(r"^epoch_(\d{4,})\.pt$")
_PARTIAL = re.compile(r"^partial_(\d{8,})\.pt$")


def checkpoint_path(directory: Path, epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` epochs lives."""
    return Path(directory) / f"epoch_{epoch:04d}.pt"


def partial_path(directory: Path, step: int) -> Path:
    """Where the mid-epoch checkpoint after ``step`` optimizer steps lives."""
    return Path(directory) / f"partial_{step:08d}.pt"


def partials_on_disk(directory: Path) -> list[int]:
    """Steps of the mid-epoch checkpoints in ``directory``, ascending."""
    if not Path(directory).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(directory).iterdir()
                  if (m := _PARTIAL.match(p.name)))


def digest_path(path: Path) -> Path:
    """The digest file next to checkpoint ``path`` (``epoch_0003.pt.sha256``)."""
    return path.with_name(path.name + ".sha256")


def digest(path: Path) -> str | None:
    """The recorded sha256 of checkpoint ``path`` (cheap: the sidecar file), ``None``
    when the checkpoint or its digest file is missing. Not a verification."""
    sidecar = digest_path(Path(path))
    if not (Path(path).exists() and sidecar.exists()):
        return None
    return sidecar.read_text().strip() or None


def is_intact(path: Path) -> bool:
    """Whether ``path`` exists and matches its recorded digest (hashes the file)."""
    recorded = digest(path)
    return recorded is not None and hashlib.sha256(Path(path).read_bytes()).hexdigest() == recorded


BEST = "best.pt"


def epoch_of(name: str) -> int | None:
    """The epoch of a checkpoint file name (``epoch_0003.pt`` → 3); ``None`` otherwise."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def epochs_on_disk(directory: Path) -> list[int]:
    """Epoch numbers of the checkpoint files in ``directory``, ascending."""
    if not Path(directory).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(directory).iterdir()
                  if (m := _NAME.match(p.name)))


def saved_epochs(directory: Path) -> list[int]:
    """Epochs of :func:`epochs_on_disk` whose checkpoint was saved to the end: the file
    and, written after it, its digest (cheap: not a verification, see :func:`is_intact`)."""
    return [epoch for epoch in epochs_on_disk(directory)
            if digest(checkpoint_path(directory, epoch)) is not None]

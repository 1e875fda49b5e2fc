"""Where a run's checkpoints live and whether they are there: file names, the sha256
sidecar digests, the epochs and mid-epoch steps on disk. Torch-free, so that
``labkit status`` tells a trained run without importing torch; writing and loading
checkpoints is :mod:`labkit.store.checkpoint`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from labkit.core.errors import DamagedFile
from labkit.store.atomic import file_sha256
from labkit.store.readers import read_text_file

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


_SHA256 = re.compile(r"[0-9a-f]{64}")


def digest(path: Path) -> str | None:
    """The recorded sha256 of checkpoint ``path`` (cheap: the sidecar file), ``None``
    when the checkpoint or its digest file is missing, or the digest file holds no
    sha256 (damaged: any bytes). Not a verification."""
    if not Path(path).exists():
        return None
    try:
        text = (read_text_file(digest_path(Path(path))) or "").strip()
    except DamagedFile:
        return None
    return text if _SHA256.fullmatch(text) else None


# (path, size, mtime, inode, recorded digest) -> whether the file matched: a checkpoint
# is hashed once per process unless it changes (status, report, results ask repeatedly)
_VERIFIED: dict[tuple[str, int, int, int, str], bool] = {}


def is_intact(path: Path) -> bool:
    """Whether ``path`` exists and matches its recorded digest (hashes the file, once
    per process while its size, modification time and inode stay)."""
    recorded = digest(path)
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if recorded is None:
        return False
    key = (str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns, stat.st_ino, recorded)
    if key not in _VERIFIED:
        try:
            _VERIFIED[key] = file_sha256(Path(path)) == recorded
        except OSError:
            return False
    return _VERIFIED[key]


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

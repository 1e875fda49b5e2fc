"""Atomic file writes (:mod:`labkit.store.readers` reads them back): a reader, or a resumed
run, sees the old file or the new one whole.

Write to a temporary file in the same folder, flush, fsync, ``os.replace`` over the
target, fsync the folder. A crash at any moment (even ``kill -9``) leaves at most a
stray ``.tmp-*`` file, never a half-written target; :func:`remove_leftovers` clears
those the next time labkit works on the folder. Files get the permissions of an
ordinary ``open`` (0666 less the umask), not ``mkstemp``'s private 0600, so results stay
readable by a group on shared clusters.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` files interrupted atomic writes left under ``directory``
    (recursively); returns them. Call it only while no other writer works there (under
    the run's lock)."""
    removed = []
    for path in Path(directory).rglob(f"{TMP_PREFIX}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; replace ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_csv(path: str | Path, table: Any) -> None:
    """Atomically replace ``path`` with the pandas DataFrame ``table`` (no index column)."""
    with atomic_open(path, "w") as handle:
        table.to_csv(handle, index=False)


def write_figure(path: str | Path, figure: Any, dpi: int = 100) -> None:
    """Atomically replace ``path`` with the matplotlib ``figure`` as PNG."""
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one whole.

Write to a temporary file in the same folder, flush, fsync, ``os.replace`` over the
target, fsync the folder. A crash at any moment (even ``kill -9``) leaves at most a
stray ``.tmp-*`` file, never a half-written target.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; replace ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
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


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")

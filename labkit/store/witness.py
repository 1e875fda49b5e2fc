"""Witnesses of files: a short digest of what ``os.stat`` says of a set of files and
folders, so that something computed from them (a data set's content digest, a weights
file's sha256) can be kept and trusted again while the witness still holds.

A witness covers each path given: a file by its stat (size, mtime_ns, ctime_ns, inode,
device; a missing path as missing), a folder by the stat of every folder and file
under it, found by ``os.walk`` following symbolic links (as torchvision's loaders walk;
a folder reached twice through links is walked once). Adding, removing or renaming a
file changes its folder's stat; writing one changes its own. A witness taken while a
file or folder was modified (its mtime) less than :data:`RACY_SECONDS` before is no
witness (``None``): a write within the same clock tick could leave the stat unchanged,
as in :mod:`labkit.store.file_digests`.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RACY_SECONDS = 2.0


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _tree(folder: str) -> Iterable[tuple[str, list[int] | None]]:
    """``(path, stat)`` of ``folder`` and of every folder and file under it."""
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        st = _stat(top)
        if st is not None and (st[3], st[4]) in seen:
            dirs[:] = []  # a link back up: walked already
            continue
        if st is not None:
            seen.add((st[3], st[4]))
        dirs.sort()
        yield top, st
        for name in sorted(files):
            path = os.path.join(top, name)
            yield path, _stat(path)


def take(paths: Iterable[str | Path]) -> dict[str, Any] | None:
    """The witness of ``paths`` (files or folders): ``{"paths": [absolute paths],
    "digest": sha256 hex of their stats}``; ``None`` when one was modified too recently
    to be witnessed (see the module docstring)."""
    absolute = [os.path.abspath(os.path.expanduser(str(p))) for p in paths]
    return _witness(absolute, time.time_ns() - int(RACY_SECONDS * 1e9))


def _witness(paths: list[str], racy_after: int | None) -> dict[str, Any] | None:
    digest = hashlib.sha256()
    for path in paths:
        found = _tree(path) if os.path.isdir(path) else [(path, _stat(path))]
        for name, st in found:
            if st is not None and racy_after is not None and st[1] > racy_after:
                return None
            digest.update(f"{name}\0{st}\0".encode("utf-8", "surrogateescape"))
    return {"paths": paths, "digest": digest.hexdigest()}


def holds(witness: Any) -> bool:
    """Whether the files of a witness (:func:`take`) are as they were."""
    if not isinstance(witness, dict) or not isinstance(witness.get("paths"), list):
        return False
    paths = witness["paths"]
    if not all(isinstance(p, str) for p in paths):
        return False
    return _witness(paths, None) == witness

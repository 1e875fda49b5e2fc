"""Content digests (sha256) of input files, cached between commands.

Identity and verification read whole files (every image of a folder data set, a
pretrained weights file); the cache keeps re-runs cheap. A digest is kept under the
file's absolute path (stored relative to its group, below) together with what
``os.stat`` says of the file it leads to: size, mtime_ns, ctime_ns, inode and device.
While all of them are unchanged the file is not read again; any write changes mtime
and ctime (an edit in place of the same size included, and putting the mtime back
with ``touch`` changes ctime), a replacement the inode. A digest of a file modified
less than :data:`RACY_SECONDS` before it was read is not kept, since a write within
the same clock tick could leave its stat unchanged (git's "racily clean" files).

The digests of one group of files (a data set's folder, the torch hub's checkpoint
folder) share one cache file, ``<cache dir>/digests/<sha256 of the group's path>.json``
(:func:`labkit.store.local_cache.cache_dir`), written atomically; those of the
:data:`MAX_GROUPS` groups used last are kept. A damaged or foreign cache file is
ignored and rewritten; an unwritable cache only costs the reading again. This guards
against damage and ordinary edits, not against a forger who restores a file's stat
(which takes changing the clock or the device).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.store.atomic import file_sha256
from labkit.store.local_cache import cache_dir, keep_newest, read_record, write_record

FORMAT = 1
DIGESTS = "digests"
RACY_SECONDS = 2.0
MAX_GROUPS = 256  # the cache files of the groups used longest ago are removed beyond this


def stat_key(path: str | Path) -> list[int]:
    """What ``os.stat`` says of the file ``path`` leads to: size, mtime_ns, ctime_ns,
    inode and device (see the module docstring for why these).

    Raises:
        OSError: no such file.
    """
    st = os.stat(path)  # follows symbolic links, as the readers of the file do
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def relative(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` (both absolute) with ``/`` separators; a plain
    cut for the usual path inside ``folder`` (``os.path.relpath`` costs more than a
    cached digest)."""
    inside = folder.rstrip(os.sep) + os.sep
    name = path[len(inside):] if path.startswith(inside) else os.path.relpath(path, folder)
    return name.replace(os.sep, "/")


def _cache_path(group: str) -> Path:
    name = hashlib.sha256(os.fsencode(group)).hexdigest()[:32]
    return cache_dir() / DIGESTS / f"{name}.json"


def _valid_entry(entry: Any) -> bool:
    """An entry ``[size, mtime_ns, ctime_ns, inode, device, sha256 hex]`` (its stat part
    is only ever compared with a fresh stat)."""
    return (isinstance(entry, list) and len(entry) == 6 and isinstance(entry[5], str)
            and len(entry[5]) == 64)


def _read_cache(path: Path, group: str) -> dict[str, list[Any]]:
    record = read_record(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return {}
    files = record.get("files")
    if not isinstance(files, dict):
        return {}
    if record.get("group") != group:  # another folder's (a collision of the file name)
        return {}
    return files  # entries are checked when used (a million of them: only once)


def file_digests(paths: Sequence[str | Path], group: Path, prune: bool) -> list[str]:
    """sha256 hex digests of the contents of ``paths``, in their order, read only
    for files whose stat changed since their digest was cached (see the module
    docstring).

    Args:
        paths: the files, as the reader of their contents names them (symbolic links
            are followed).
        group: the folder whose cache file holds these digests.
        prune: drop the cached digests of files not in ``paths`` (a data set's whole
            listing is given), instead of keeping them (one file of many is given).

    Raises:
        OSError: a file cannot be read (its ``filename`` names it).
    """
    group = os.path.abspath(group)
    cache_file = _cache_path(group)
    cached = _read_cache(cache_file, group)
    kept = {} if prune else {n: e for n, e in cached.items() if _valid_entry(e)}
    digests = []
    for given in paths:
        path = os.fspath(given)
        path = path if os.path.isabs(path) else os.path.abspath(path)
        name = relative(path, group)  # the absolute path, without the group's
        key = stat_key(path)
        entry = cached.get(name)
        if _valid_entry(entry) and entry[:5] == key:
            digests.append(entry[5])
            kept[name] = entry
            continue
        digest = file_sha256(Path(path))
        digests.append(digest)
        kept.pop(name, None)
        settled = time.time_ns() - key[1] >= RACY_SECONDS * 1e9
        if settled and stat_key(path) == key:  # not written while or just before it was read
            kept[name] = [*key, digest]
    if kept != cached:
        if write_record(cache_file, {"format": FORMAT, "group": group, "files": kept}):
            keep_newest(cache_file.parent, MAX_GROUPS)
    else:
        _touch(cache_file)
    return digests


def _touch(path: Path) -> None:
    """Mark a cache file used, so that :func:`~labkit.store.local_cache.keep_newest` keeps it."""
    try:
        os.utime(path)
    except OSError:  # absent, or a cache folder that refuses writes
        pass

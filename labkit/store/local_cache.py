"""Where labkit keeps its caches, and reading and writing their files.

The cache lives in ``$LABKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/labkit``, else
``~/.cache/labkit``. It holds only what can be computed again (validated grids:
:mod:`labkit.cli.spec_cache`; file digests: :mod:`labkit.store.file_digests`), so deleting it is
always safe: a cache file that cannot be read or is damaged counts as absent, and a
folder that refuses a write only means that nothing is kept.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from labkit.store.atomic import write_text

CACHE_ENV = "LABKIT_CACHE_DIR"


def cache_dir() -> Path:
    """Where the cache lives (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "labkit"


def read_record(path: Path) -> Any:
    """The JSON value of the cache file ``path``; ``None`` when it is absent, unreadable
    or not JSON (any bytes, any nesting depth)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def write_record(path: Path, record: Any) -> bool:
    """Write ``record`` to the cache file ``path`` atomically, as compact JSON (a
    digest cache may hold a million entries); ``False`` when the folder refuses it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, separators=(",", ":")))
    except OSError:
        return False
    return True


def keep_newest(folder: Path, count: int) -> None:
    """Remove the cache files of ``folder`` beyond the ``count`` most recently modified."""
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in files[:-count]:
            old.unlink(missing_ok=True)
    except OSError:  # another process pruned at the same time
        pass

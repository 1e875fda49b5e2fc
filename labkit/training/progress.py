"""Progress bars: one rule for when they show."""
from __future__ import annotations


def quiet_bars(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when asked, and (``None``) whenever stderr is not a TTY."""
    return True if not progress else None

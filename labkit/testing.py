"""Helpers for testing labkit and labkit plugins against the real command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``labkit ARGS…`` in a subprocess (``python -m labkit``); returns the result.

    ``env`` entries are added to the current environment; stdout/stderr are captured
    as text.
    """
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def isolate_plugins(*allowed: str) -> None:
    """Load no entry-point plugin except ``allowed`` in this process and its children.

    Call at the top of a conftest.py, before labkit builds its registries.
    """
    os.environ["LABKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if allowed:
        os.environ["LABKIT_PLUGINS"] = ",".join(allowed)
    else:
        os.environ.pop("LABKIT_PLUGINS", None)

"""Helpers for testing labkit and labkit plugins against the real command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``labkit ARGS…`` in a subprocess (``python -m labkit``); returns the result.

    ``env`` entries are added to the current environment; stdout/stderr are captured
    as text.
    """
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def invoke_cli(*args: Any) -> Any:
    """Run ``labkit ARGS…`` in this process (click's ``CliRunner``: no new interpreter,
    so a test can call many commands cheaply); returns click's ``Result``
    (``exit_code``, ``output`` with stderr in it).

    Raises:
        AssertionError: the command ended in an exception other than ``SystemExit``, or
            printed a traceback.
    """
    from click.testing import CliRunner  # test-only: kept out of importing labkit.testing

    from labkit.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)
    return result


def isolate_plugins(*allowed: str) -> None:
    """Load no entry-point plugin except ``allowed`` in this process and its children.

    Call at the top of a conftest.py, before labkit builds its registries.
    """
    os.environ["LABKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if allowed:
        os.environ["LABKIT_PLUGINS"] = ",".join(allowed)
    else:
        os.environ.pop("LABKIT_PLUGINS", None)


def pip_install_target(package: Path, target: Path) -> Path:
    """``pip install`` the package folder ``package`` into ``target`` (no dependencies).

    A real install, entry points included; put ``target`` on ``PYTHONPATH`` of a
    subprocess to use it. Returns ``target``.
    """
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(package)],
                   check=True, capture_output=True)
    return target


def forget_last_epoch(run_dir: Path) -> int:
    """Make a finished run look killed after its second-to-last checkpoint.

    Deletes the newest checkpoint (and its digest) and the status file; returns the
    epoch of the deleted checkpoint.
    """
    from labkit import checkpoint, runinfo

    ckpt_dir = Path(run_dir) / "checkpoints"
    epoch = checkpoint.epochs_on_disk(ckpt_dir)[-1]
    last = checkpoint.checkpoint_path(ckpt_dir, epoch)
    last.unlink()
    last.with_name(last.name + ".sha256").unlink()
    (Path(run_dir) / runinfo.STATUS_JSON).unlink()
    return epoch

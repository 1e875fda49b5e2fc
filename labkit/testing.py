"""Helpers for testing labkit and labkit plugins against the real command line."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``labkit ARGS…`` in a subprocess (``python -m labkit``); returns the result.

    ``env`` entries are added to the current environment; stdout/stderr are captured
    as text.
    """
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def run_here(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """:func:`run_cli` in this process: the same command line (click's runner, the
    ``labkit`` group with its error handling), the same result (exit code, stdout,
    stderr), without starting Python and importing torch again (seconds of CPU per
    call). For tests of what a command does; tests of the process itself (signals,
    imports, a fresh interpreter's environment) use :func:`run_cli`.

    ``env`` entries are set for the call, ``cwd`` is the working directory during it;
    an exception that escaped the command is appended to stderr as the traceback a
    process would print, so "no traceback" assertions keep their meaning.
    """
    with contextlib.chdir(cwd or Path.cwd()):
        result = invoke(*args, env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["labkit", *args], result.exit_code, result.stdout,
                                       stderr)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``labkit ARGS…`` in this process (click's test runner), with the registries
    of this process (plugins registered by ``labkit.api.use`` included): fast, for
    commands that train nothing (``plan``, ``run --dry-run``). Output is in
    ``result.output`` (stdout and stderr), the exit code in ``result.exit_code``; an
    exception that escaped the command (a traceback a user would see) is
    ``result.exception``, anything but :class:`SystemExit`."""
    from labkit.cli import cli  # the command line's modules load when a command runs

    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def invoke_cli(*args: Any) -> Result:
    """:func:`invoke`, asserting that no traceback escaped: the command ended normally
    or by ``SystemExit`` and printed no ``Traceback``.

    Raises:
        AssertionError: an exception other than ``SystemExit``, or a printed traceback.
    """
    result = invoke(*args)
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
    from labkit.store import checkpoint, runinfo

    ckpt_dir = Path(run_dir) / "checkpoints"
    epoch = checkpoint.epochs_on_disk(ckpt_dir)[-1]
    last = checkpoint.checkpoint_path(ckpt_dir, epoch)
    last.unlink()
    last.with_name(last.name + ".sha256").unlink()
    (Path(run_dir) / runinfo.STATUS_JSON).unlink()
    return epoch


def copy_run(run_dir: Path, folder: Path, other_weights: bool = True) -> Path:
    """Copy the trained run in ``run_dir`` to ``folder`` (made with its parents), as a
    user copies a run to use it elsewhere; returns the copy's newest epoch checkpoint
    (the final one of a run trained to its last epoch).

    With ``other_weights`` every floating-point tensor of that checkpoint is shifted by 1,
    and the checkpoint written again by labkit (digest and owner as the run's): a complete
    copy that a reader of the original instead of the copy tells apart.
    """
    from labkit.store import checkpoint

    shutil.copytree(run_dir, folder)
    directory = Path(folder) / "checkpoints"
    final = checkpoint.checkpoint_path(directory, checkpoint.epochs_on_disk(directory)[-1])
    if other_weights:
        state = checkpoint.read(final)
        for module in state["modules"].values():
            for tensor in module.values():
                if tensor.is_floating_point():
                    tensor.add_(1.0)
        checkpoint.save(final.parent, state["epoch"], state)
    return final


# what a folder made by broken_copy is refused for, by how it was made
BROKEN_COPIES = {"config only": "is not trained", "damaged checkpoint": "damaged final checkpoint"}


def broken_copy(run_dir: Path, folder: Path, how: str) -> None:
    """A folder that holds no trained run, made from the trained run in ``run_dir``:
    ``how`` is ``"config only"`` (its ``config.json`` copied alone) or ``"damaged
    checkpoint"`` (a complete copy whose final checkpoint is cut short)."""
    if how == "config only":
        Path(folder).mkdir(parents=True)
        shutil.copy(Path(run_dir) / "config.json", folder)
    else:
        final = copy_run(run_dir, folder, other_weights=False)
        final.write_bytes(final.read_bytes()[:-10])


def under_logs(run_dir: Path, name: str) -> Path:
    """``<logs_dir>/moved/<name>/c/t1`` of the run in ``run_dir``: a folder four levels
    under its ``logs_dir``, where a reader that rebuilds a run's location from its
    ``config.json`` and the folder's fourth parent finds the original run, not the copy."""
    return Path(run_dir).parents[3] / "moved" / name / "c" / "t1"

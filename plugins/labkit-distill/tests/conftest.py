"""Fixtures of the labkit-distill tests: the plugin registered in-process, one thread.

No module-level changes: the core suite may be collected in the same session.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import TEACHER_SPEC, train_runs

import labkit_distill
from labkit.api import use


def _register(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("LABKIT_PLUGINS", raising=False)
    return use(labkit_distill)


@pytest.fixture
def registries(monkeypatch):
    """Built-ins plus this plugin (no entry points), one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _register(monkeypatch)
    use()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A finished teacher run (cnn_xs on digits at 8 pixels, 2 epochs), trained once."""
    logs = tmp_path_factory.mktemp("teacher") / "logs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        (run,) = train_runs({**TEACHER_SPEC, "logs_dir": str(logs)}, _register(monkeypatch))
        use()
    torch.set_num_threads(threads)
    return run.directory

"""Settings for the whole suite (labkit's tests and the plugins'): runs draw their
per-run figures only in the tests that look at them (fixture ``run_figures``); drawing
PNG and SVG after every tiny training run was a third of the suite's CPU time."""
import os

import pytest

from labkit.engine.run import RUN_FIGURES_ENV

os.environ[RUN_FIGURES_ENV] = "0"  # inherited by every labkit process a test starts


@pytest.fixture
def run_figures(monkeypatch):
    """Runs trained during the test draw their per-run figures, as they do by default."""
    monkeypatch.setenv(RUN_FIGURES_ENV, "1")

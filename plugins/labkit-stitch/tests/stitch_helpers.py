"""Helpers of the labkit-stitch tests (a module with a unique name, so that test files
import it safely next to other packages' conftest.py files)."""
from pathlib import Path

import pytest

import labkit_stitch
from labkit.api import ALLOW_ENV, DISABLE_ENV, RunConfig, expand, use


def isolated(monkeypatch: pytest.MonkeyPatch):
    """Registries with the built-ins and this plugin only, entry points switched off."""
    monkeypatch.setenv(DISABLE_ENV, "1")
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    return use(labkit_stitch)


def net_spec(model: str, logs: Path, **overrides) -> dict:
    """A small supervised run on the embedded digits (8×8), as a spec."""
    return {"model": model, "dataset": "digits", "optimizer": {"name": "adam", "lr": 0.01},
            "epochs": 6, "batch_size": 64, "logs_dir": str(logs), **overrides}


def one_run(spec: dict, registries, run_id: str = "nets") -> RunConfig:
    """The single run of ``spec``."""
    (config,) = expand(spec, registries)
    return RunConfig(config, run_id)

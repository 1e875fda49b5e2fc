"""Helpers of the labkit-stitch tests (a module with a unique name, so that test files
import it safely next to other packages' conftest.py files)."""
import json
from pathlib import Path

import pytest

import labkit_stitch
from labkit.api import ALLOW_ENV, DISABLE_ENV, RunConfig, expand, use

REPO = Path(__file__).resolve().parents[3]
# for `labkit` subprocesses: only this plugin, and one thread (a shared 2-core machine)
ENV = {"LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "LABKIT_PLUGINS": "stitch",
       "OMP_NUM_THREADS": "1"}


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


def nets_file(tmp_path: Path, **overrides) -> str:
    """``tmp_path/nets.json``: :func:`net_spec` of a cnn_xs logging to ``tmp_path/logs``
    (``overrides``: its values to change), as a spec file; returns its path."""
    nets = tmp_path / "nets.json"
    nets.write_text(json.dumps(net_spec("cnn_xs", tmp_path / "logs", **overrides)))
    return str(nets)


def self_stitch(nets: dict | str, sender_layer, receiver_layer, sender_weights=None,
                **top) -> dict:
    """A spec stitching network A (the run of ``nets``, a spec or a spec file, run-id
    "nets") into itself, one epoch of Adam; ``sender_weights`` when given, ``top``:
    top-level values to add."""
    ref = {"spec": nets, "run_id": "nets"}
    model = {"name": "stitched", "sender": ref, "receiver": ref,
             "sender_layer": sender_layer, "receiver_layer": receiver_layer}
    if sender_weights is not None:
        model["sender_weights"] = sender_weights
    return {"model": model, "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 1,
            "batch_size": 64, **top}


def example_runs(name: str, registries, monkeypatch: pytest.MonkeyPatch,
                 cwd: Path) -> list[RunConfig]:
    """The runs (run-id T) of the repository's ``specs/<name>``, read with ``cwd`` as the
    working directory (where relative paths in it, and its logs, lie)."""
    monkeypatch.chdir(cwd)
    spec = json.loads((REPO / "specs" / name).read_text())
    return [RunConfig(config, "T") for config in expand(spec, registries)]

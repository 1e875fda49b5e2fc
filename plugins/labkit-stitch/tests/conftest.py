"""Fixtures of the labkit-stitch tests: the plugin registered in process, trained networks.

No environment change at import: the plugin is registered around each test that asks
for it, with entry-point loading switched off for that test only.
"""
import json
from pathlib import Path

import pytest
import torch
from stitch_helpers import isolated, net_spec, one_run

from labkit.api import RunConfig, use
from labkit.api import train as labkit_train


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: tiny networks gain nothing from more, and on a shared 2-core
    machine threads that compete with other processes slow every step many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registries(monkeypatch):
    """The built-ins and labkit-stitch, registered for one test."""
    yield isolated(monkeypatch)
    use()


@pytest.fixture(scope="session")
def nets_logs(tmp_path_factory) -> Path:
    """Logs of the networks the tests stitch, shared by the whole session."""
    return tmp_path_factory.mktemp("nets")


@pytest.fixture
def trained(registries, nets_logs):
    """``trained(model)``: a finished run of ``model`` on digits (trained by the first test
    that asks; the engine skips it afterwards)."""
    def train(model: str) -> RunConfig:
        run = one_run(net_spec(model, nets_logs), registries)
        assert labkit_train(run, registries, progress=False) in ("finished", "skipped")
        return run

    return train


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict to tmp_path/<name> (logs under tmp_path/logs unless given)."""
    def write(spec: dict, name: str = "spec.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"logs_dir": str(tmp_path / "logs"), **spec}))
        return path
    return write

"""Fixtures of labkit-dino's tests: the plugin registered in-process, tiny runs on digits.

Nothing here changes the environment at import time: pytest collects these tests with
labkit's own, so every setting is a fixture that undoes itself.
"""
from __future__ import annotations

import pytest
import torch

import labkit_dino
from labkit.api import RunConfig, RunContext, build_component, expand, seed_everything, use

# A head small enough for CPU tests; the method's defaults are DINO's (65536 outputs).
TINY_HEAD = {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64}


@pytest.fixture
def dino_registries(monkeypatch):
    """Registries with built-ins and labkit-dino only (no entry point loaded)."""
    monkeypatch.setenv("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("LABKIT_PLUGINS", raising=False)
    previous = torch.get_num_threads()
    # tiny models gain nothing from intra-op threads, and lose much on a shared CPU
    torch.set_num_threads(1)
    yield use(labkit_dino.plugin_module)
    torch.set_num_threads(previous)
    use()


@pytest.fixture
def dino_run(dino_registries, tmp_path):
    """``make(epochs=…, batch_size=…, model=…, subset=…, top=…, **method_params) -> RunConfig``.

    Digits at 8 px; ``subset`` keeps that many training images (stratified) for speed;
    ``top`` adds or replaces top-level spec fields (``accumulate``, ``clip_grad_norm``, …).
    """
    def make(epochs: int = 2, batch_size: int = 128, model: str = "cnn_xs",
             logs: str = "logs", seed: int = 0, subset: int | None = None,
             top: dict | None = None, **method) -> RunConfig:
        spec = {"model": model, "dataset": {"name": "digits", "subset": subset},
                "epochs": epochs, "batch_size": batch_size,
                "seed": seed, "optimizer": {"name": "adamw", "lr": 1e-3},
                "method": {"name": "dino", **TINY_HEAD, **method},
                "logs_dir": str(tmp_path / logs), **(top or {})}
        (config,) = expand(spec, dino_registries)
        return RunConfig(config, "T")
    return make


@pytest.fixture
def dino_method(dino_registries, dino_run):
    """``make(**method_params) -> Dino``: the method built as the engine builds it."""
    def make(model: str = "cnn_xs", seed: int = 0, batch_size: int = 128, **method):
        config = dino_run(model=model, seed=seed, batch_size=batch_size, **method).config
        seed_everything(config["seed"])
        data = build_component(dino_registries, "datasets", config["dataset"])
        network = build_component(dino_registries, "models", config["model"],
                                  num_classes=data.num_classes,
                                  in_channels=data.in_channels,
                                  resolution=data.resolution)
        context = RunContext(config, network, data, torch.device("cpu"), None, dino_registries)
        return build_component(dino_registries, "methods", config["method"],
                               context=context)
    return make

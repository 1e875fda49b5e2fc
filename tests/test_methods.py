"""A method added by a plugin (examples/ema_method.py) runs through the unchanged engine."""
import sys
from pathlib import Path

import pandas as pd
import torch

from labkit import engine
from labkit.cli import plugins
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import forget_last_epoch
from labkit.training.build import build_component

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import ema_method  # noqa: E402


def make(tmp_path, registries, epochs=3):
    spec = {"model": "cnn_xs", "dataset": "digits", "batch_size": 64, "epochs": epochs,
            "method": {"name": "ema_supervised", "momentum": 0.9},
            "optimizer": {"name": "sgd", "lr": 0.05}, "logs_dir": str(tmp_path / "logs")}
    (config,) = expand(spec, registries)
    return RunConfig(config, "M")


def test_ema_method_trains_checkpoints_its_extra_model_and_resumes_exactly(tmp_path):
    registries = plugins.use(ema_method)
    try:
        reference = make(tmp_path / "ref", registries)
        assert engine.train(reference, registries, progress=False) == "finished"
        ckpts = reference.directory / "checkpoints"
        state = checkpoint.read(checkpoint.checkpoint_path(ckpts, 3))
        assert set(state["modules"]) == {"model", "ema"}
        train_size = len(build_component(registries, "datasets",
                                                reference.config["dataset"]).train)
        steps_per_epoch = -(-train_size // 64)
        assert state["method"] == {"updates": 3 * steps_per_epoch}
        model_w = state["modules"]["model"]["block1.conv1.weight"]
        ema_w = state["modules"]["ema"]["block1.conv1.weight"]
        assert not torch.equal(model_w, ema_w)
        log = pd.read_csv(reference.directory / runinfo.LOG_CSV)
        assert list(log["ema-updates"]) == [steps_per_epoch * e for e in (1, 2, 3)]

        # interrupted after epoch 2: drop the last checkpoint and the finished status
        resumed = make(tmp_path / "res", registries)
        engine.train(resumed, registries, progress=False)
        assert forget_last_epoch(resumed.directory) == 3
        assert engine.train(resumed, registries, progress=False) == "finished"
        again = checkpoint.read(checkpoint.checkpoint_path(resumed.directory / "checkpoints", 3))
        for name in ("model", "ema"):
            for key, tensor in state["modules"][name].items():
                assert torch.equal(tensor, again["modules"][name][key]), (name, key)
        assert again["method"] == state["method"]
    finally:
        plugins.use()

"""Experiment trackers: TensorBoard mirrors log.csv; a plugin's tracker goes through the same
hook; a tracker that fails costs a warning, never the run."""
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from labkit import engine, hookimpl
from labkit.cli import plugins
from labkit.spec import expand
from labkit.store import runinfo
from labkit.store.identity import RunConfig

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64, "epochs": 2,
        "optimizer": {"name": "sgd", "lr": 0.05}, "saturation": {}}


def make_run(registries, tmp_path, **overrides):
    (config,) = expand({**TINY, "logs_dir": str(tmp_path / "logs"), **overrides}, registries)
    return RunConfig(config, "L")


def test_tensorboard_holds_every_log_column_per_epoch_and_is_not_identity(registries, tmp_path):
    run = make_run(registries, tmp_path, loggers=["tensorboard"])
    assert run.hash == make_run(registries, tmp_path).hash  # a mirror, not identity
    assert engine.train(run, registries, progress=False) == "finished"
    events = EventAccumulator(str(run.directory / "tensorboard"))
    events.Reload()
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/accuracy", "train/saturation_block1-conv1", "lr"} <= tags
    for column, tag in (("train-loss", "train/loss"), ("eval-accuracy", "eval/accuracy")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == list(log["epoch"])
        assert [s.value for s in scalars] == pytest.approx(list(log[column]), rel=1e-6)


class Recording:
    """A plugin's tracker: keeps what it is given."""
    seen: list = []

    def __init__(self, run, fail: bool = False):
        self.run, self.fail = run, fail

    def log_epoch(self, epoch, row):
        if self.fail:
            raise RuntimeError("tracker server unreachable")
        Recording.seen.append((epoch, row["train-loss"]))

    def close(self):
        Recording.seen.append("closed")


class TrackerPlugin:
    @hookimpl
    def labkit_register(self, registries):
        registries.loggers.register("recording", Recording)


def test_a_plugin_tracker_gets_every_row_and_a_failing_one_never_fails_the_run(tmp_path):
    registries = plugins.use(TrackerPlugin())
    try:
        Recording.seen = []
        run = make_run(registries, tmp_path / "ok", loggers=["recording"])
        assert engine.train(run, registries, progress=False) == "finished"
        log = pd.read_csv(run.directory / runinfo.LOG_CSV)
        assert Recording.seen == [*zip(log["epoch"], log["train-loss"]), "closed"]

        broken = make_run(registries, tmp_path / "broken",
                          loggers=[{"name": "recording", "fail": True}])
        with pytest.warns(UserWarning, match="tracker server unreachable"):
            assert engine.train(broken, registries, progress=False) == "finished"
        assert len(pd.read_csv(broken.directory / runinfo.LOG_CSV)) == 2
    finally:
        plugins.use()

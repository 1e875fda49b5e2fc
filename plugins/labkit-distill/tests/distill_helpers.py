"""Helpers shared by the labkit-distill tests (a unique module name: the core suite has its
own conftest, collected in the same session)."""
from __future__ import annotations

from typing import Any

from labkit.api import RunConfig, expand, train

# for `labkit` subprocesses: only this plugin, and one thread (a shared 2-core machine:
# threads competing with other processes slow tiny models down by orders of magnitude)
CLI_ENV = {"LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "LABKIT_PLUGINS": "distill",
           "OMP_NUM_THREADS": "1"}

TEACHER_SPEC = {"model": "cnn_xs", "dataset": "digits", "epochs": 2, "batch_size": 64,
                "optimizer": {"name": "sgd", "lr": 0.05}, "metrics": ["accuracy"]}


def train_runs(spec: dict[str, Any], registries, run_id: str = "T") -> list[RunConfig]:
    """Expand ``spec`` and train every run with the engine; returns the runs."""
    runs = [RunConfig(config, run_id) for config in expand(spec, registries)]
    for run in runs:
        assert train(run, registries, progress=False) == "finished", run.directory
    return runs

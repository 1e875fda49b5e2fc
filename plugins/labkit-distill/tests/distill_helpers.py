"""Helpers shared by the labkit-distill tests (a unique module name: the core suite has its
own conftest, collected in the same session)."""
from __future__ import annotations

from typing import Any

from labkit.api import RunConfig, expand, train
from labkit_distill.method import Distill

# for `labkit` subprocesses: only this plugin, and one thread (a shared 2-core machine:
# threads competing with other processes slow tiny models down by orders of magnitude)
CLI_ENV = {"LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "LABKIT_PLUGINS": "distill",
           "OMP_NUM_THREADS": "1"}

TEACHER_SPEC = {"model": "cnn_xs", "dataset": "digits", "epochs": 2, "batch_size": 64,
                "optimizer": {"name": "sgd", "lr": 0.05}, "metrics": ["accuracy"]}

STUDENT = {"model": "mlp_s", "dataset": "digits", "epochs": 1, "batch_size": 64,
           "optimizer": {"name": "sgd", "lr": 0.05}, "metrics": ["accuracy"]}


def student_config(teacher: dict[str, Any], logs, registries, **spec: Any) -> dict[str, Any]:
    """The resolved config of a one-epoch mlp_s student of ``teacher`` (logs in ``logs``;
    ``spec``: top-level values to change)."""
    (config,) = expand({**STUDENT, "logs_dir": str(logs), **spec,
                        "method": {"name": "distill", "teacher": teacher}}, registries)
    return config


def revalidate(config: dict[str, Any]) -> Distill.Params:
    """What the engine does with a resolved student config before it trains."""
    return Distill.Params.model_validate(
        {k: v for k, v in config["method"].items() if k != "name"})


def train_runs(spec: dict[str, Any], registries, run_id: str = "T") -> list[RunConfig]:
    """Expand ``spec`` and train every run with the engine; returns the runs."""
    runs = [RunConfig(config, run_id) for config in expand(spec, registries)]
    for run in runs:
        assert train(run, registries, progress=False) == "finished", run.directory
    return runs

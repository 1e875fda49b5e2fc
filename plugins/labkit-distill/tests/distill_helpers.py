"""Helpers shared by the labkit-distill tests (a unique module name: the core suite has its
own conftest, collected in the same session)."""
from __future__ import annotations

from typing import Any

import torch

from labkit.api import RunConfig, RunContext, build_component, expand, train
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


def distill_method(registries, teacher_dir, tmp_path, model: str = "mlp_s",
                   **params: Any) -> Distill:
    """A ``distill`` method (its ``params``) for a ``model`` student on digits (8 px) and
    the teacher run in ``teacher_dir``, built as the engine builds it (seed 0)."""
    spec = {"model": model, "dataset": "digits", "logs_dir": str(tmp_path / "logs"),
            "method": {"name": "distill", "teacher": {"dir": str(teacher_dir)}, **params}}
    (config,) = expand(spec, registries)
    torch.manual_seed(0)
    data = build_component(registries, "datasets", config["dataset"])
    net = build_component(registries, "models", config["model"], num_classes=10,
                          in_channels=1, resolution=8)
    context = RunContext(config, net, data, torch.device("cpu"),
                         RunConfig(config, "T").directory, registries)
    return build_component(registries, "methods", config["method"], context=context)


def batch_of(method: Distill, n: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, index)`` of the first ``n`` items of the method's training set."""
    items = [method.train_dataset(method.context.data.train)[i] for i in range(n)]
    images = torch.stack([x for x, _, _ in items])
    return images, torch.tensor([y for _, y, _ in items]), torch.tensor([i for _, _, i in items])

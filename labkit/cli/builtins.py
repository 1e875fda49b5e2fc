"""labkit's own components, registered through the same hook as any plugin."""
from __future__ import annotations

from labkit import hookimpl
from labkit.analyses import ANALYSES
from labkit.data import DATASETS
from labkit.methods import METHODS
from labkit.models import MODELS, create_torchvision_model
from labkit.models.torchvision_models import TorchvisionParams
from labkit.training.checks import run_problems
from labkit.training.loggers import LOGGERS
from labkit.training.metrics import METRICS
from labkit.training.optimizers import OPTIMIZERS, SCHEDULERS


@hookimpl
def labkit_register(registries) -> None:
    """Register every built-in component."""
    tables = {"models": MODELS, "datasets": DATASETS, "optimizers": OPTIMIZERS,
              "schedulers": SCHEDULERS, "metrics": METRICS, "methods": METHODS, "analyses": ANALYSES,
              "loggers": LOGGERS}
    for kind, table in tables.items():
        for name, obj in table.items():
            registries[kind].register(name, obj)
    # any torchvision classification model, untrained: "tv:resnet18", "tv:vit_b_16", …
    registries.models.register("tv:", create_torchvision_model, prefix=True,
                               params=TorchvisionParams)


@hookimpl
def labkit_check_run(config, registries) -> list[str]:
    """labkit's own checks of a run before it trains (:mod:`labkit.training.checks`)."""
    return run_problems(config, registries)

"""The analysis interface: a named post-training step with declared outputs.

An analysis reads a finished run (its config and final weights) and writes files into
the run directory (or, for bulky data, under ``latent_datasets/``). The engine runs the
analyses listed in a spec after training, skipping each one whose outputs are complete;
``labkit <command>`` runs one by hand. A plugin adds one by subclassing
:class:`Analysis` and calling ``registries.analyses.register("name", MyAnalysis)``.
Outputs must be written atomically (:mod:`labkit.atomic`), so "the file exists" means
"the file is whole".
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from labkit import checkpoint
from labkit.data.bundle import DataBundle
from labkit.identity import RunConfig


class FinishedRun:
    """Lazy access to a trained run: config, data, and the final model in eval mode.

    Args:
        run: the run's config and run-id.
        registries: registries to build the components from.
        device: where to put the model.
    """

    def __init__(self, run: RunConfig, registries: Any, device: str = "cpu"):
        self.run = run
        self.registries = registries
        self.device = torch.device(device)

    @classmethod
    def from_directory(cls, directory: str | Path, registries: Any,
                       device: str = "cpu") -> "FinishedRun":
        """The run stored in ``directory`` (read from its ``config.json``).

        Raises:
            UserError: the directory holds no labkit run.
        """
        from labkit import runinfo
        from labkit.errors import UserError

        info = runinfo.read_config(Path(directory))
        if not info:
            raise UserError(f"{directory} is not a labkit run directory (no "
                            f"{runinfo.CONFIG_JSON}); give the directory that holds it")
        run = RunConfig({**info["config"], "logs_dir": str(Path(directory).parents[3])},
                        info["run_id"])
        return cls(run, registries, device)

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def directory(self) -> Path:
        return self.run.directory

    @cached_property
    def data(self) -> DataBundle:
        from labkit.engine import build_component

        return build_component(self.registries, "datasets", self.config["dataset"])

    def state(self) -> dict[str, Any]:
        """The newest intact checkpoint (``weights_only`` loaded)."""
        state = checkpoint.load_latest(self.directory / "checkpoints")
        if state is None:
            from labkit.errors import UserError

            raise UserError(f"run {self.directory} has no checkpoint; train it first with "
                            f"`labkit run SPEC --run-id {self.run.run_id}`")
        return state

    @cached_property
    def model(self) -> torch.nn.Module:
        """The final network (``modules["model"]`` of the newest checkpoint), eval mode."""
        from labkit.engine import build_component

        data = self.data
        model = build_component(self.registries, "models", self.config["model"],
                                num_classes=data.num_classes, in_channels=data.in_channels,
                                resolution=data.resolution)
        model.load_state_dict(self.state()["modules"]["model"])
        return model.to(self.device).eval()


class Analysis:
    """Base class of post-training analyses.

    Args:
        run: the finished run to analyse.
        params: an instance of the class's ``Params`` model (spec parameters).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, run: FinishedRun, params: BaseModel):
        self.run = run
        self.params = params

    def outputs(self) -> list[Path]:
        """Files this analysis writes; it is complete when all exist."""
        raise NotImplementedError

    def is_complete(self) -> bool:
        """Whether every output exists (outputs are written atomically)."""
        return all(p.exists() for p in self.outputs())

    def compute(self, progress: bool = True) -> None:
        """Do the work and write :meth:`outputs`; ``progress``: show progress bars."""
        raise NotImplementedError

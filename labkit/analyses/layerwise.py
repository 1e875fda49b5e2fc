"""Layer-wise analyses: receptive fields, latents and linear probes (docs/layers.md).

* ``receptive_field`` writes ``receptive_field.csv`` (:mod:`labkit.measures.receptive_field`);
* ``latents`` extracts layer activations under ``latent_datasets/`` and leaves a
  pointer ``latents_<mode>.json`` in the run directory (:mod:`labkit.analyses.latents`);
* ``probes`` fits a logistic probe per layer (extracting the latents first when
  missing; or, with ``stream``, from forward passes, no latents written) into
  ``[<prefix>_]probe_performances.csv`` and draws ``[<prefix>_]tail_pattern.png``
  (:mod:`labkit.analyses.probes`, :mod:`labkit.analyses.probe_stream`, :mod:`labkit.outputs.tail_plot`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from labkit.analyses import latents
from labkit.analyses.base import Analysis, FinishedRun
from labkit.analyses.probe_stream import stream_probes
from labkit.analyses.probes import ProbeParams, results_path, run_probes, save_results
from labkit.core.errors import DamagedFile, UserError
from labkit.measures.layers import measured_layers
from labkit.measures.receptive_field import receptive_fields
from labkit.outputs.tail_plot import FIGURE, draw_tail_pattern
from labkit.spec.values import file_prefix, memory_size, parse_size
from labkit.store.atomic import write_csv, write_json
from labkit.store.latent_layout import portable
from labkit.store.readers import read_json
from labkit.store.runinfo import RF_CSV
from labkit.training.build import build_component
from labkit.training.progress import step

Downsampling = Annotated[int, Field(ge=1)] | Literal["pixelwise", "none"]

_LAYERS = Field(None, description="wildcards on layer names (e.g. 'layer4-*'); "
                                  "null: every Conv2d and Linear")
_DOWNSAMPLING = Field(4, description="side d of the average-pooled conv maps (d×d), "
                                     "'pixelwise' (a row per position) or 'none'")
_LATENTS_DIR = Field(None, description="root of the latent datasets; null: where the run's "
                                       "pointer says, else latent_datasets/ next to logs_dir")


class ReceptiveField(Analysis):
    """Receptive field of every layer and the border layer: ``receptive_field.csv``,
    with each row's ``rf_status`` and, with ``check``, the gradient check ``rf_check``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        layers: list[str] | None = _LAYERS
        check: bool = Field(False, description="compare each box with the support of an "
                                               "input gradient (column rf_check)")

    def outputs(self) -> list[Path]:
        return [self.run.directory / RF_CSV]

    def inputs(self) -> dict[str, Any]:
        return {}  # the architecture alone, which the run's identity fixes

    def compute(self, progress: bool = True) -> None:
        data = self.run.data
        # the architecture is all that matters: without the check, build it without
        # allocating weights; the check runs on seeded fresh weights (it needs some, and
        # any will do: it makes its own positive copy), so it needs no training either
        with torch.random.fork_rng(devices=[]), (
                nullcontext() if self.params.check else torch.device("meta")):
            torch.manual_seed(0)
            model = build_component(self.run.registries, "models", self.run.config["model"],
                                    num_classes=data.num_classes, in_channels=data.in_channels,
                                    resolution=data.resolution)
        layers = len(measured_layers(model, self.params.layers))
        with step("receptive_field", f"{layers} layers" + (", gradient check" if self.params.check
                                                           else ""), progress=progress):
            table = receptive_fields(model, data.in_channels, data.resolution,
                                     self.params.layers, check=self.params.check)
        write_csv(self.outputs()[0], table)


class Latents(Analysis):
    """Layer activations of the train and eval splits, stored under ``latent_datasets/``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        downsampling: Downsampling = _DOWNSAMPLING
        layers: list[str] | None = _LAYERS
        latents_dir: str | None = _LATENTS_DIR
        dtype: Literal["float16", "float32"] = Field(
            "float16", description="storage type; float16 halves the files")

    def planned_bytes(self) -> int:
        """Bytes the extraction will write (:func:`labkit.analyses.latents.planned_bytes`), from
        one forward of an untrained copy of the network: known before training."""
        data = self.run.data
        model = build_component(self.run.registries, "models", self.run.config["model"],
                                num_classes=data.num_classes, in_channels=data.in_channels,
                                resolution=data.resolution)
        shapes = latents.layer_shapes(model, data.train_plain[0][0], self.params.downsampling,
                                      self.params.layers)
        sizes = {"train": len(data.train_plain), **{k: len(v) for k, v in data.evals.items()}}
        return latents.planned_bytes(shapes, sizes, self.params.dtype)

    def directory(self) -> Path:
        """Where this run's latents of this downsampling live."""
        return latents.locate(self.run.run, self.params.downsampling, self.params.latents_dir)

    def outputs(self) -> list[Path]:
        return [latents.pointer_path(self.run.directory, self.params.downsampling)]

    def is_complete(self) -> bool:
        """The record matches and the extraction the pointer names is still whole."""
        if not super().is_complete():
            return False
        try:
            pointer = read_json(self.outputs()[0])
        except DamagedFile:
            return False
        manifest = latents.read_manifest(self.directory())
        return manifest is not None and manifest["digest"] == pointer.get("digest")

    def compute(self, progress: bool = True) -> None:
        """Extract (resuming or skipping as the files say) and point the run at the result.

        ``progress``: show progress (:mod:`labkit.training.progress`).
        """
        run = self.run
        data = run.data
        directory = self.directory()
        project = Path(run.config["logs_dir"]).absolute().parent  # latent_datasets/ lie there
        manifest = latents.extract(
            run.model, {"train": data.train_plain, **data.evals}, directory,
            self.params.downsampling,
            source={"run_dir": str(run.directory.absolute()),
                    "run_dir_in_project": portable(run.directory, directory, project),
                    "run_id": run.run.run_id,
                    "run_hash": run.run.hash, "epoch": run.config["epochs"],
                    "checkpoint": run.checkpoint_digest},
            layers=self.params.layers, batch_size=run.config["eval_batch_size"],
            dtype=self.params.dtype, progress=progress)
        write_json(self.outputs()[0], {"directory": portable(directory, run.directory, project),
                                       "digest": manifest["digest"],
                                       "params": self.params.model_dump(mode="json")})


class Probes(Analysis):
    """A logistic probe per layer: ``probe_performances.csv`` and the tail-pattern figure.

    Args:
        run, params: as for every analysis.
        source: latents to probe; default: this run's extraction of ``downsampling``
            (extracted first when missing). ``labkit probes PATHS…`` passes the folder.
    """

    class Params(ProbeParams):
        C: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] = Field(
            1.0, description="inverse L2 regularisation strength (scikit-learn's C), or a "
                             "list of them: a probe per layer and C")
        stream: bool = Field(
            False, description="fit every layer and C from forward passes of the network, "
                               "writing no latents (full-batch L-BFGS, one pass per "
                               "evaluation, shared; docs/probes.md)")
        downsampling: Downsampling = _DOWNSAMPLING
        latents_dir: str | None = _LATENTS_DIR
        prefix: Annotated[str | None, AfterValidator(file_prefix)] = Field(
            None, description="output files are named <prefix>_…")
        processes: int = Field(1, ge=1, description="worker processes fitting layers in parallel")
        memory: Annotated[str | None, AfterValidator(memory_size)] = Field(
            None, description="memory budget of the fitting workers together, e.g. '8G' or "
                              "'500M'; null: half the memory available when they start")

    def __init__(self, run: FinishedRun, params: BaseModel, source: Path | None = None,
                 report: Callable[[str], None] | None = None):
        super().__init__(run, params)
        self.source = Path(source) if source is not None else None
        self.report = report

    def outputs(self) -> list[Path]:
        prefix = self.params.prefix
        return [results_path(self.run.directory, prefix),
                self.run.directory / (f"{prefix}_{FIGURE}" if prefix else FIGURE)]

    @property
    def mode(self) -> str:
        """``probe_mode`` of this call's rows: ``stream`` or ``latents``."""
        return "stream" if self.params.stream else "latents"

    @property
    def Cs(self) -> list[float]:
        """The values of ``C`` asked for."""
        return self.params.C if isinstance(self.params.C, list) else [self.params.C]

    def record_name(self) -> str:
        # the CSV holds one block of rows per downsampling and mode: one record each
        stream = "-stream" if self.params.stream else ""
        return f"{self.outputs()[0].name}-{self.params.downsampling}{stream}"

    def shared_outputs(self) -> dict[Path, dict[str, str]]:
        return {self.outputs()[0]: {"downsampling": str(self.params.downsampling),
                                    "probe_mode": self.mode}}

    def inputs(self) -> dict[str, Any]:
        if self.params.stream:  # the network itself: the checkpoint's digest
            return super().inputs()
        manifest = latents.read_manifest(self._source())
        return {"latents": manifest["digest"] if manifest is not None else None}

    def fingerprint(self) -> dict[str, Any]:
        fingerprint = super().fingerprint()
        for how in ("processes", "memory"):  # how fast, not what
            fingerprint["params"].pop(how)
        return fingerprint

    def _latents(self) -> Latents:
        return Latents(self.run, Latents.Params(downsampling=self.params.downsampling,
                                                latents_dir=self.params.latents_dir))

    def _source(self) -> Path:
        return self.source if self.source is not None else self._latents().directory()

    def compute(self, progress: bool = True) -> None:
        """Probe every layer for every ``C``: from forward passes with ``stream``, else
        on the latents (extracted first when missing; fits cached per layer)."""
        if self.source is None and not self.params.stream:
            extraction = self._latents()
            # any complete extraction of this downsampling will do (a `latents` entry of
            # the spec may have chosen its layers or dtype)
            if latents.read_manifest(extraction.directory()) is None:
                extraction.produce(progress)
        fields = ReceptiveField(self.run, ReceptiveField.Params())
        try:
            if not fields.is_complete():
                fields.produce(progress)
        except UserError as exc:  # a model too small for its input still gets its probes
            warnings.warn(f"tail-pattern figure without the receptive-field border: {exc}",
                          stacklevel=2)
        settings = self.params.model_dump(include=set(ProbeParams.model_fields) - {"C"})
        if self.params.stream:
            data = self.run.data
            table = stream_probes(self.run.model, {"train": data.train_plain, **data.evals},
                                  self.params.downsampling, data.num_classes, self.Cs,
                                  max_iter=settings["max_iter"], tol=settings["tol"],
                                  standardize=settings["standardize"],
                                  batch_size=self.run.config["eval_batch_size"],
                                  report=self.report, progress=progress)
        else:
            memory = parse_size(self.params.memory) if self.params.memory is not None else None
            table = pd.concat([run_probes(self._source(), self.params.processes,
                                          ProbeParams(**settings, C=C), str(self.run.device),
                                          memory, self.report, progress,
                                          "probes" + (f" C={C:g}" if len(self.Cs) > 1 else ""))
                               for C in self.Cs], ignore_index=True)
            table["probe_mode"] = self.mode
        save_results(self.run.directory, table, self.params.prefix)
        draw_tail_pattern(self.run.directory, self.params.prefix)


ANALYSES: dict[str, type[Analysis]] = {
    "receptive_field": ReceptiveField,
    "latents": Latents,
    "probes": Probes,
}


"""The analysis interface: a named post-training step with declared outputs.

An analysis reads a finished run (its config and final weights) and writes files into
the run directory (or, for bulky data, under ``latent_datasets/``). The engine runs the
analyses listed in a spec after training, skipping each one whose outputs are complete;
``labkit <command>`` runs one by hand. A plugin adds one by subclassing
:class:`Analysis` and calling ``registries.analyses.register("name", MyAnalysis)``.
Outputs must be written atomically (:mod:`labkit.store.atomic`), so "the file exists" means
"the file is whole".

Complete means present, *intact and computed from what the current request computes
it from*: :meth:`Analysis.produce` writes, after the outputs, a record
``analyses/<record name>.json`` holding :meth:`Analysis.fingerprint` (the analysis, its
parameters and the digests of its inputs: by default the final checkpoint's) and the
sha256 of each output it wrote (:mod:`labkit.store.output_digests`); outputs whose record is
missing or differs, or that no longer match their digests (edited, cut short, damaged),
are computed again.
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict

from labkit.core.errors import DamagedFile, UserError
from labkit.store import checkpoint, output_digests, run_ref, runinfo
from labkit.store.atomic import write_json
from labkit.store.identity import RunConfig
from labkit.store.output_digests import RECORDS_DIR
from labkit.store.readers import read_json
from labkit.training.build import build_component

if TYPE_CHECKING:  # the data sets' modules import torchvision: built runs only
    from labkit.data.bundle import DataBundle


class FinishedRun:
    """Lazy access to a trained run: config, data, and the final model in eval mode.

    Args:
        run: the run's config and run-id.
        registries: registries to build the components from.
        device: where to put the model.
        checkpoint_file: the checkpoint to read; default: the one analyses read
            (:func:`labkit.store.runinfo.analysed_checkpoint`).
    """

    def __init__(self, run: RunConfig, registries: Any, device: str = "cpu",
                 checkpoint_file: Path | None = None):
        self.run = run
        self.registries = registries
        self.device = torch.device(device)
        self._checkpoint = checkpoint_file

    @classmethod
    def from_directory(cls, directory: str | Path, registries: Any,
                       device: str = "cpu") -> "FinishedRun":
        """The run stored in ``directory``, wherever it lies (its ``config.json`` read
        and checked by :func:`labkit.store.run_ref.run_in_folder`).

        Raises:
            UserError: the directory holds no labkit run.
        """
        return cls(run_ref.run_in_folder(directory), registries, device)

    @classmethod
    def from_reference(cls, reference: run_ref.RunReference, registries: Any,
                       device: str = "cpu") -> "FinishedRun":
        """The trained run ``reference`` read (:func:`labkit.store.run_ref.read_run`): its
        folder, and the final checkpoint the reference verified."""
        return cls(reference.run, registries, device, reference.checkpoint)

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def directory(self) -> Path:
        return self.run.directory

    @cached_property
    def data(self) -> DataBundle:
        return build_component(self.registries, "datasets", self.config["dataset"])

    @cached_property
    def checkpoint_path(self) -> Path:
        """What every analysis reads: the checkpoint after the run's last epoch, or its
        best epoch's (``analysis_checkpoint: "best"``); or the one given."""
        return self._checkpoint or runinfo.analysed_checkpoint(self.run)

    @property
    def checkpoint_digest(self) -> str | None:
        """sha256 of :attr:`checkpoint_path` as recorded when it was written."""
        return checkpoint.digest(self.checkpoint_path)

    def state(self) -> dict[str, Any]:
        """The final checkpoint (``weights_only`` loaded, digest verified), or ``best.pt``
        when the config asks for it and it was chosen by the config's ``best_metric``
        and ``best_mode``.

        Raises:
            UserError: it is missing or damaged (``labkit run`` retrains the last epoch
                from the previous checkpoint; analyses never fall back to an older epoch),
                or ``best.pt`` was chosen under another ``best_metric``/``best_mode``.
        """
        try:
            state = checkpoint.read(self.checkpoint_path)
        except ValueError as exc:
            raise UserError(
                f"run {self.directory} has no usable {self.checkpoint_path.name} ({exc}); "
                f"`labkit run SPEC --run-id {self.run.run_id}` trains it (or retrains its "
                f"last epoch from the previous checkpoint)") from None
        if self.checkpoint_path.name == checkpoint.BEST:
            mismatch = runinfo.best_mismatch(state.get("best"), self.config)
            if mismatch is not None:
                raise UserError(f"run {self.directory}: {mismatch}; analyse the final "
                                f"checkpoint (analysis_checkpoint: final), or train the run "
                                f"under a new run-id with this best_metric")
        return state

    @cached_property
    def model(self) -> torch.nn.Module:
        """The final network the eval splits were scored on (the method's
        ``eval_model()``, e.g. an EMA copy; recorded in the checkpoint), eval mode."""
        data = self.data
        model = build_component(self.registries, "models", self.config["model"],
                                num_classes=data.num_classes, in_channels=data.in_channels,
                                resolution=data.resolution)
        state = self.state()
        model.load_state_dict(state["modules"][state.get("eval_module", "model")])
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
        """Files this analysis writes."""
        raise NotImplementedError

    def named_by_params(self, *names: str) -> list[Path]:
        """The files ``names`` in the run directory, named by this analysis's params: as
        given at the default params, else with ``-<8 hex digits of their digest>`` before
        the extension, so that analyses of other params never overwrite each other."""
        suffix = "" if self.params == type(self.params)() else "-" + hashlib.sha256(
            self.params.model_dump_json().encode()).hexdigest()[:8]
        return [self.run.directory / f"{Path(name).stem}{suffix}{Path(name).suffix}"
                for name in names]

    def inputs(self) -> dict[str, Any]:
        """Digests of what the outputs are computed from; default: the final checkpoint.
        An analysis reading other data (latents) or nothing trained (the architecture
        only) overrides this."""
        return {"checkpoint": self.run.checkpoint_digest}

    def fingerprint(self) -> dict[str, Any]:
        """What the outputs must have been computed from to count as complete."""
        return {"analysis": f"{type(self).__module__}.{type(self).__qualname__}",
                "params": self.params.model_dump(mode="json"), "inputs": self.inputs()}

    def record_name(self) -> str:
        """Name of this analysis's record; analyses whose outputs share files (probes at
        several downsamplings) override it so that each keeps its own."""
        return self.outputs()[0].name

    def record_path(self) -> Path:
        """Where :meth:`produce` records the fingerprint of the outputs."""
        return self.run.directory / RECORDS_DIR / f"{self.record_name()}.json"

    def shared_outputs(self) -> dict[Path, dict[str, str]]:
        """Outputs this analysis shares with others of its kind (one CSV holding a block
        of rows each): path → the column values (as written) that select its rows, so
        that it verifies its own block only. Default: none."""
        return {}

    def output_digests(self) -> dict[str, Any]:
        """The sha256 of each output (of its block of a shared CSV) as it is now,
        figures excluded (:func:`labkit.store.output_digests.describe`)."""
        return output_digests.describe(self.run.directory, self.outputs(),
                                       self.shared_outputs())

    def is_complete(self) -> bool:
        """Every output exists and still matches the digest recorded when it was written,
        and the record says they were computed from exactly :meth:`fingerprint`."""
        if not all(p.exists() for p in self.outputs()):
            return False
        try:
            record = read_json(self.record_path())
        except DamagedFile:  # compute again
            return False
        recorded = record.pop("outputs", None)
        return record == self.fingerprint() and recorded == self.output_digests()

    def produce(self, progress: bool = True) -> None:
        """:meth:`compute`, then the record (last: it is what makes outputs complete)."""
        self.record_path().unlink(missing_ok=True)
        self.compute(progress)
        write_json(self.record_path(), {**self.fingerprint(), "outputs": self.output_digests()})

    def compute(self, progress: bool = True) -> None:
        """Do the work and write :meth:`outputs`; ``progress``: show what it does, with
        :func:`labkit.training.progress.track` (``labkit.api.track`` for plugins)."""
        raise NotImplementedError

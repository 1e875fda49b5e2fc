"""labkit from a notebook: a grid's runs, every results table and the trained networks,
read-only (docs/guide/notebook.md).

    import labkit.lab

    grid = labkit.lab.open("specs/fig3.json", run_id="A")   # or labkit.lab.open_logs("logs/")
    grid.results()                      # the log table: a row per run and epoch
    layers = grid.table("layers")       # any `labkit results` table, as pandas
    run = grid.runs[0]
    run.name, run.hash, run.state, run.config, run.directory
    run.log                             # its log.csv (None before its first epoch)
    net = run.network()                 # the trained network, eval mode ("best": best.pt)

Nothing here trains, extracts or writes into a run directory: a run that is not trained
is an error saying how to train it. Opening a spec validates it as ``labkit status``
does (from labkit's cache of validated grids when it can: no torch); tables import no
torch either (see :mod:`labkit.outputs.layers` for the plugins' layer measures); only
:meth:`Run.network` and :meth:`Run.data` build components.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from labkit.cli import plugins, spec_cache
from labkit.cli.commands.common import load_runs
from labkit.core.errors import DamagedFile, UserError
from labkit.outputs.layers import results_table
from labkit.outputs.results import LOG_TABLE, available_tables, find_runs
from labkit.store import run_ref, runinfo
from labkit.store.checkpoint_files import BEST

if TYPE_CHECKING:
    import torch

    from labkit.data.bundle import DataBundle

__all__ = ["Grid", "Run", "open", "open_logs"]


@dataclass(frozen=True)
class Run(run_ref.RunInFolder):
    """One run of a grid (a :class:`labkit.store.identity.RunConfig` located at its
    folder: ``hash``, ``name``, ``run_id``, ``config``, the resolved config as
    ``config.json`` records it, and ``directory``), read from its files whenever asked:
    a run that trains meanwhile shows its newest state."""

    @property
    def state(self) -> str:
        """The training state ``labkit status`` shows: ``finished``, ``running``,
        ``interrupted``, ``failed``, ``incomplete``, ``damaged``, or ``not started``."""
        return runinfo.directory_state(self.directory, self.config,
                                       self.hash).get("state", "not started")

    @property
    def log(self) -> pd.DataFrame | None:
        """Its ``log.csv``, a row per epoch; ``None`` before the first epoch ends.

        Raises:
            DamagedFile: the file cannot be read (``labkit run`` rewrites it).
        """
        return runinfo.read_log(self.directory)

    def data(self) -> DataBundle:
        """Its data set as it trained on it (:class:`labkit.data.bundle.DataBundle`:
        ``train``, ``train_plain`` and ``evals`` splits, ``num_classes``, …)."""
        from labkit.training.build import build_component  # torch: only when asked

        return build_component(plugins.registries(), "datasets", self.config["dataset"])

    def network(self, checkpoint: Literal["final", "best"] = "final",
                device: str = "cpu") -> torch.nn.Module:
        """The trained network in eval mode: built from the resolved config (its data
        set gives the classes, channels and resolution) with the weights of the
        network its eval metrics were logged for (the method's evaluated module, an EMA
        copy say) from the final checkpoint, or ``best.pt`` with ``"best"``; each read
        only after its sha256 is verified and the final checkpoint found to be this
        run's (:func:`labkit.store.run_ref.read_run`). On the CPU, evaluate it under
        ``torch.set_num_threads(run.config["threads"])`` to reproduce the logged
        numbers bit for bit.

        Raises:
            UserError: the run is not trained (or its final checkpoint is damaged or
                another run's), ``checkpoint`` is neither ``final`` nor ``best``, the
                run kept no ``best.pt``, or that one was chosen under another
                ``best_metric``.
        """
        from labkit.analyses.base import FinishedRun  # torch: only when asked

        if checkpoint not in ("final", "best"):
            raise UserError(f"checkpoint {checkpoint!r} is neither 'final' nor 'best'")
        if not self.directory.is_dir():
            raise UserError(f"run {self.directory} has not started; labkit.lab never trains: "
                            f"`labkit run SPEC --run-id {self.run_id}` trains it")
        reference = run_ref.read_run(self.directory)
        path = reference.checkpoint
        if checkpoint == "best":
            path = self.directory / "checkpoints" / BEST
            if not path.exists():
                raise UserError(f"run {self.directory} kept no {BEST}: a run keeps it when "
                                f"its config sets best_metric; load checkpoint='final'")
        model = FinishedRun(reference.run, plugins.registries(), device, path).model
        if self.config.get("channels_last"):  # as it was evaluated while training
            import torch

            model = model.to(memory_format=torch.channels_last)
        return model


@dataclass(frozen=True)
class Grid:
    """The runs of a spec (:func:`open`) or of a logs folder (:func:`open_logs`).

    Attributes:
        runs: the runs, in the spec's order (a logs folder's: by directory).
        saturation: run hash → the ``saturation`` section the layers table counts that
            run's spectra with (the spec's; empty for a logs folder: each run's own).
    """

    runs: list[Run]
    saturation: dict[str, Any]

    def table(self, name: str = LOG_TABLE) -> pd.DataFrame:
        """A table of ``labkit results`` over these runs, as pandas: ``log``, ``layers``
        (:mod:`labkit.outputs.layers`: a row per run, layer and split, at the spec's
        ``delta`` and ``idim_rule``), ``probes``, ``receptive_field``, ``saturation``,
        ``intrinsic_dimension``, ``projection``, ``evaluations`` or a plugin's
        (:mod:`labkit.outputs.results`); files that cannot be used are left out with a
        warning. Empty when no run has been started.

        Raises:
            UserError: no run has the table (the message names those they have).
        """
        directories = [run.directory for run in self.runs if run.directory.is_dir()]
        if not directories:
            return pd.DataFrame()
        table = results_table(directories, name, on_damaged=_warn,
                              plugin_measures=spec_cache.measured_by_plugins(),
                              saturation=self.saturation)
        if table.empty:
            return table
        mine = table["run_hash"].isin({run.hash for run in self.runs})  # not nested runs
        return table[mine].reset_index(drop=True)

    def tables(self) -> list[str]:
        """The names :meth:`table` takes for these runs (``log`` and ``layers`` first)."""
        return available_tables([run.directory for run in self.runs
                                 if run.directory.is_dir()])

    def results(self) -> pd.DataFrame:
        """The log table: a row per run and epoch (a run without a log yet: one row of
        its config and state)."""
        return self.table(LOG_TABLE)

    def run(self, key: str) -> Run:
        """The run whose hash or name is ``key`` (a unique prefix of a hash will do).

        Raises:
            UserError: no run, or several, match.
        """
        found = [r for r in self.runs if r.name == key or r.hash.startswith(key)]
        if len(found) != 1:
            raise UserError(f"{len(found) or 'no'} runs match {key!r}; give a run's hash "
                            f"(or a unique prefix) or name: "
                            f"{', '.join(r.hash for r in self.runs)}")
        return found[0]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def open(spec: str | Path, run_id: str, sets: Sequence[str] = (),  # noqa: A001
         device: str | None = None) -> Grid:
    """The runs of ``spec`` under ``run_id``, as ``labkit status SPEC --run-id ID`` sees
    them.

    Args:
        spec: the spec file.
        run_id: the run-id it was run under.
        sets: ``--set KEY=VALUE`` overrides, as given to ``labkit run``.
        device: ``--device``, as given to ``labkit run``.

    Raises:
        UserError: the spec cannot be read or is invalid (one line saying why).
    """
    runs = load_runs(str(spec), run_id, device, tuple(sets))
    return Grid([Run(run.config, run.run_id, run.directory) for run in runs],
                {run.hash: run.config.get("saturation") for run in runs})


def open_logs(logs: str | Path = "logs", run_ids: Sequence[str] = ()) -> Grid:
    """The runs stored under the folder ``logs`` (any depth), optionally only those of
    ``run_ids``. A folder whose ``config.json`` is damaged or not its run's is left
    out with a warning.

    Raises:
        UserError: ``logs`` is not a folder.
    """
    if not Path(logs).is_dir():
        raise UserError(f"{logs} is not a folder; give the logs folder of your runs")
    runs = []
    for directory in find_runs([Path(logs)]):
        try:
            run = run_ref.run_in_folder(directory)
        except (UserError, DamagedFile) as exc:
            _warn(f"left out {directory}: {exc}")
            continue
        if not run_ids or run.run_id in run_ids:
            runs.append(Run(run.config, run.run_id, run.folder))
    return Grid(runs, {})

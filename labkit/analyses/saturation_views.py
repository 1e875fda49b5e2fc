"""Saturation at other deltas and counting rules, recomputed from the stored spectra.

Training stores every tracked layer's eigenvalue spectrum per pass and epoch
(``spectra/epoch_NNNN.npz``, :func:`labkit.measures.saturation.save_spectra`). This analysis reads
them back and tables the intrinsic dimensionality and saturation of every layer at each
requested ``delta`` and by each rule (``delve``, ``reach``; see :mod:`labkit.measures.saturation`),
without touching the network: a grid over delta trains one network, not one per delta.

Outputs in the run directory: ``saturation.csv`` (at the default params; others are
named by their digest, ``saturation-<8 hex digits>.csv``, as projections are), one row
per epoch, pass, layer, delta and rule with columns ``epoch, pass, layer, width, delta, rule,
intrinsic_dimensionality, saturation``; complete only with the record of the
parameters and final checkpoint it was computed from. A table lacking an epoch is never
written: a run whose spectra of some epoch are missing or damaged is refused, naming
them (spectra are measured while training; nothing else rebuilds them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from labkit.analyses.base import Analysis
from labkit.core.errors import UserError
from labkit.measures.pca_dimension import SPECTRA_DIR, intrinsic_dimensionality
from labkit.measures.spectra import SPECTRA_LOST, load_spectra, spectra_path
from labkit.spec.saturation import IdimRule
from labkit.store import runinfo
from labkit.store.atomic import write_csv
from labkit.store.checkpoint_files import epoch_of
from labkit.training.progress import track

RESULTS_CSV = "saturation.csv"


class SaturationViews(Analysis):
    """Intrinsic dimensionality and saturation per epoch, pass and layer at other deltas."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        deltas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
            [0.9, 0.95, 0.99, 0.999], min_length=1,
            description="explained-variance shares, each in (0, 1]")
        rules: list[IdimRule] = Field(
            ["delve"], min_length=1,
            description="counting rules: delve (below delta) and/or reach (reaches delta)")

    def outputs(self) -> list[Path]:
        """``saturation.csv`` at the default params; other deltas or rules add a suffix of
        their digest (``saturation-1a2b3c4d.csv``), so that no table replaces another."""
        return self.named_by_params(RESULTS_CSV)

    def compute(self, progress: bool = True) -> None:
        directory = self.run.directory
        if not any((directory / SPECTRA_DIR).glob("epoch_*.npz")):
            raise UserError(f"{directory} holds no saturation spectra ({SPECTRA_DIR}/): the "
                            f"run was trained without a `saturation` section, or by a labkit "
                            f"before 0.2; add the section and train it under a new run-id")
        last = epoch_of(runinfo.final_checkpoint(self.run.run).name) or 0
        epochs = range(1, last + 1)
        missing = [epoch for epoch in epochs if not spectra_path(directory, epoch).is_file()]
        if missing:
            raise UserError(f"{directory / SPECTRA_DIR} lacks the spectra of epoch(s) "
                            f"{', '.join(map(str, missing))} of {last}, so a table would lack "
                            f"them; {SPECTRA_LOST}")
        rows = []
        for epoch in track(epochs, "saturation", unit="epoch", progress=progress):
            for split, layers in load_spectra(spectra_path(directory, epoch)).items():
                for layer, eigenvalues in layers.items():
                    for delta in self.params.deltas:
                        for rule in self.params.rules:
                            idim = intrinsic_dimensionality(eigenvalues, delta, rule)
                            rows.append({"epoch": epoch, "pass": split, "layer": layer,
                                         "width": len(eigenvalues), "delta": delta,
                                         "rule": rule, "intrinsic_dimensionality": idim,
                                         "saturation": idim / len(eigenvalues)})
        write_csv(self.outputs()[0], pd.DataFrame(rows))


ANALYSES: dict[str, type[Analysis]] = {"saturation": SaturationViews}

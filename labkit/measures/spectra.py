"""The eigenvalue spectra stored per epoch (``spectra/epoch_NNNN.npz``, float64, no
pickles), and the saturation columns read from them at any ``delta`` and counting rule."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from labkit.core.errors import DamagedFile
from labkit.measures.pca_dimension import (SPECTRA_DIR, VIEW_STATS, column_name,
                                           intrinsic_dimensionality)
from labkit.spec.saturation import SaturationConfig
from labkit.store.atomic import write_bytes
from labkit.store.runinfo import read_log
from labkit.store.readers import read_npz_file


def spectra_path(run_dir: Path, epoch: int) -> Path:
    """Where :func:`save_spectra` keeps one epoch's eigenvalues in a run directory."""
    return Path(run_dir) / SPECTRA_DIR / f"epoch_{epoch:04d}.npz"


def save_spectra(path: Path, spectra: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write one epoch's ``{pass: {layer: eigenvalues}}`` atomically as ``.npz``
    (arrays named ``<pass>/<layer>``, float64; no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{split}/{layer}": values
                        for split, layers in spectra.items() for layer, values in layers.items()})
    write_bytes(path, buffer.getvalue())


SPECTRA_LOST = ("restore it: spectra are measured while training, so nothing rebuilds them "
                "but training the run again (under a new run-id)")


def load_spectra(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """What :func:`save_spectra` wrote; ``{}`` when the file does not exist.

    Raises:
        DamagedFile: the file is damaged (any bytes that are not such an archive of
            float64 spectra).
    """
    if not Path(path).exists():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, values in read_npz_file(path, "f", fix=SPECTRA_LOST).items():
        split, slash, layer = key.partition("/")
        if not slash or values.ndim != 1 or not len(values) or not np.isfinite(values).all():
            raise DamagedFile(f"{path} holds {key[:60]!r}, not the spectrum of a layer; "
                              f"{SPECTRA_LOST}")
        out.setdefault(split, {})[layer] = values
    return out


def final_spectra(run_dir: Path) -> tuple[int | None, dict[str, dict[str, np.ndarray]]]:
    """The epoch of the last row of the run's ``log.csv`` (``None`` without one) and that
    epoch's spectra (:func:`load_spectra`; ``{}`` when none were stored: a run trained
    without a ``saturation`` section).

    Raises:
        DamagedFile: the log or the spectra file cannot be read.
    """
    log = read_log(run_dir)
    if log is None:
        return None, {}
    epoch = int(log["epoch"].iloc[-1])
    return epoch, load_spectra(spectra_path(run_dir, epoch))


def view_columns(spectra: Mapping[str, Mapping[str, np.ndarray]], config: SaturationConfig,
                 layers: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """The delta-dependent log columns (``lsat``, ``idim`` among ``config.stats``) of one
    epoch, recomputed from its spectra at ``config.delta`` and ``config.idim_rule``.

    Args:
        spectra: ``{pass: {layer: eigenvalues}}`` (:func:`load_spectra`).
        config: the saturation settings to read the spectra with.
        layers: ``{pass: layer names}`` whose columns to fill (NaN where a layer has no
            spectrum); default: the layers of ``spectra``.
    """
    out = {}
    for split, values in spectra.items():
        names = (layers or {}).get(split, list(values))
        for stat in (s for s in config.stats if s in VIEW_STATS):
            for name in names:
                if name not in values:
                    out[column_name(split, stat, name)] = float("nan")
                    continue
                idim = intrinsic_dimensionality(values[name], config.delta, config.idim_rule)
                out[column_name(split, stat, name)] = float(
                    idim if stat == "idim" else idim / len(values[name]))
    return out


def saturation_view(run_dir: Path, history: list[dict[str, Any]],
                    config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``history`` with its delta-dependent saturation columns recomputed from the stored
    spectra at the requested ``delta`` and ``idim_rule`` (a run trained under other
    values shares the directory: they are not identity). Rows without spectra, or with
    damaged ones (a warning says so), keep the values computed while training."""
    if config is None:
        return history
    sat = SaturationConfig.model_validate(config)
    rows = []
    for row in history:
        try:
            view = view_columns(load_spectra(spectra_path(run_dir, int(row["epoch"]))), sat)
        except DamagedFile as exc:
            warnings.warn(f"{exc}; log.csv keeps the saturation values of epoch "
                          f"{row['epoch']} computed while training", stacklevel=2)
            view = {}
        rows.append({**row, **{k: v for k, v in view.items() if k in row}})
    return rows

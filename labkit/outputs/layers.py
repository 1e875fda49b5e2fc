"""The per-layer table, ``labkit results --table layers``: one row per run, layer and
split, with every per-layer measure the run has side by side (docs/layers.md).

Columns, in this order:

* the run's keys, as in every results table (:mod:`labkit.outputs.results`): ``run_hash``,
  ``run_id``, ``run_name``, ``run_dir``, ``state``, ``config.<key>``;
* ``layer``, ``layer_index``, ``relative_depth`` (the layer's place in the run's network
  order, :func:`labkit.outputs.results.network_order`), ``split``;
* saturation, from the spectra stored for the final epoch (the last row of ``log.csv``) on
  the split's pass (``train``: the training pass, augmented and in train mode; an eval
  split: its eval pass), counted at ``saturation_delta`` by ``idim_rule`` (the run's
  ``saturation`` section unless given, :mod:`labkit.measures.pca_dimension`):
  ``saturation_epoch``, ``width``, ``intrinsic_dimensionality``, ``saturation``;
* ``twonn`` and ``mle``, the ``intrinsic_dimension`` analysis's estimates;
* a probe's accuracy on the split (``train``: the un-augmented train split it was
  fitted on) for each probe the run has, one column each:
  ``probe_accuracy[_<prefix>]_<d4 | pixelwise | none>[_stream][_C<C>]``: the prefix of
  its file, its downsampling, ``_stream`` for probes fitted from forward passes, and
  ``_C<C>`` for a ``C`` other than 1 (``probe_accuracy_d4``, ``probe_accuracy_d2_C0.1``);
* the receptive field, the same on every split of a layer: ``rf_size_h``, ``rf_size_w``,
  ``rf_jump_h``, ``rf_jump_w`` (input pixels), ``border`` (the border layer), ``tail``
  (after the border layer), ``rf_status`` and, where the check ran, ``rf_check``;
* every column a plugin's ``labkit_layer_measures`` hook returns for the run.

Rows: every (layer, split) that some measure of the run has, in network order, ``train``
first; a layer only the receptive-field table knows gets a row on each of the run's
splits. A measure the run lacks is empty, never filled in. Files that cannot be read or
no longer match their analysis's digests are left out and reported, as by
:func:`labkit.outputs.results.collect`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.core.errors import DamagedFile
from labkit.measures.pca_dimension import intrinsic_dimensionality
from labkit.measures.spectra import final_spectra
from labkit.outputs.results import (LAYERS_TABLE, LOG_TABLE, NAMED_TABLES, collect, keyed,
                                    network_order, run_meta, table_rows, with_layer_keys)
from labkit.spec.saturation import SaturationConfig
from labkit.store import runinfo

KEYS = ["layer", "split"]
RF_COLUMNS = {"size_h": "rf_size_h", "size_w": "rf_size_w", "jump_h": "rf_jump_h",
              "jump_w": "rf_jump_w", "border": "border", "tail": "tail",
              "rf_status": "rf_status", "rf_check": "rf_check"}
ACCURACY = "_accuracy"
PROBES_SUFFIX = NAMED_TABLES["probes"]
# (run_dir=…, config=…) -> the plugins' answers to labkit_layer_measures for one run
PluginMeasures = Callable[..., list[Any]]
Report = Callable[[str], None]


def probe_column(prefix: str, downsampling: str, mode: str = "latents",
                 C: float = 1.0) -> str:
    """The layers table's column of one probe (module docstring)."""
    parts = ["probe_accuracy", prefix,
             f"d{downsampling}" if str(downsampling).isdigit() else str(downsampling),
             "stream" if mode == "stream" else "", f"C{C:g}" if C != 1.0 else ""]
    return "_".join(part for part in parts if part)


def _saturation(run_dir: Path, section: Mapping[str, Any] | None,
                report: Report) -> pd.DataFrame:
    """Final-epoch saturation per layer and pass from the stored spectra."""
    try:
        epoch, spectra = final_spectra(run_dir)
    except DamagedFile as exc:
        report(f"left out the saturation of {run_dir}: {exc}")
        return pd.DataFrame()
    config = SaturationConfig.model_validate(section or {})
    rows = []
    for split, layers in spectra.items():
        for layer, eigenvalues in layers.items():
            idim = intrinsic_dimensionality(eigenvalues, config.delta, config.idim_rule)
            rows.append({"layer": layer, "split": split, "saturation_epoch": epoch,
                         "width": len(eigenvalues), "intrinsic_dimensionality": idim,
                         "saturation": idim / len(eigenvalues),
                         "saturation_delta": config.delta, "idim_rule": config.idim_rule})
    return pd.DataFrame(rows)


def _probes(rows: pd.DataFrame) -> pd.DataFrame:
    """Probe tables (with ``source``) → one column per probe, a row per layer and split."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for _, row in rows.iterrows():
        prefix = str(row["source"])[:-len(PROBES_SUFFIX)].rstrip("_")
        mode, C = row.get("probe_mode"), row.get("probe_C")  # absent from older tables
        column = probe_column(prefix, str(row["downsampling"]),
                              str(mode) if pd.notna(mode) else "latents",
                              float(C) if pd.notna(C) else 1.0)
        for name in rows.columns:
            if name.endswith(ACCURACY) and pd.notna(row[name]):
                cell = cells.setdefault((str(row["layer"]), name[:-len(ACCURACY)]), {})
                cell[column] = float(row[name])
    return pd.DataFrame([{"layer": layer, "split": split, **values}
                         for (layer, split), values in cells.items()])


def _plugin_rows(answers: list[Any], taken: set[str], run_dir: Path,
                 report: Report) -> list[pd.DataFrame]:
    """The plugins' answers that are tables with ``layer`` and ``split``, without
    columns labkit's measures already fill (each one left out is reported)."""
    tables = []
    for answer in answers:
        if answer is None:
            continue
        if not isinstance(answer, pd.DataFrame) or not set(KEYS) <= set(answer.columns):
            report(f"left out a plugin's layer measures of {run_dir}: not a table with "
                   f"'layer' and 'split' columns")
            continue
        clash = sorted(taken & (set(answer.columns) - set(KEYS)))
        if clash:
            report(f"left out a plugin's columns {', '.join(clash)} of {run_dir}: labkit's "
                   f"measures fill them")
        answer = answer.drop(columns=clash).astype({"layer": str, "split": str})
        tables.append(answer.drop_duplicates(KEYS, keep="last"))
        taken |= set(answer.columns) - set(KEYS)
    return tables


def run_layers(run_dir: Path, report: Report, plugin_measures: PluginMeasures | None = None,
               saturation: Mapping[str, Mapping[str, Any] | None] | None = None
               ) -> pd.DataFrame:
    """One run's rows of the layers table (module docstring); empty when it has no
    per-layer measure.

    Args:
        run_dir: the run's directory.
        report: receives one line per file (or plugin answer) left out.
        plugin_measures: called as ``plugin_measures(run_dir=…, config=…)``, returning
            the plugins' answers (the ``labkit_layer_measures`` hook's caller); ``None``:
            no plugin is asked.
        saturation: run hash → the ``saturation`` section whose ``delta`` and
            ``idim_rule`` count that run's spectra (a spec's, say); a run not in it
            uses its own config's.

    Raises:
        DamagedFile: the run's config.json cannot be used.
    """
    run_dir = Path(run_dir)
    meta = run_meta(run_dir)
    config = runinfo.read_config(run_dir)["config"]
    section = (saturation or {}).get(str(meta["run_hash"]), config.get("saturation"))
    measures = [_saturation(run_dir, section, report)]
    found = table_rows(run_dir, "intrinsic_dimension", report)
    if not found.empty:
        measures.append(found[[*KEYS, "twonn", "mle"]].astype({"split": str}))
    probes = table_rows(run_dir, "probes", report)
    if not probes.empty:
        measures.append(_probes(probes))
    fields = table_rows(run_dir, "receptive_field", report)
    if not fields.empty:
        fields = fields.drop_duplicates("layer", keep="last")
        fields = fields[["layer", *(c for c in RF_COLUMNS if c in fields)]].rename(
            columns=RF_COLUMNS).astype({"layer": str})
    measures = [m for m in measures if not m.empty]
    if plugin_measures is not None:
        taken = {c for m in measures for c in m.columns} | set(RF_COLUMNS.values())
        extra = _plugin_rows(plugin_measures(run_dir=run_dir, config=config), taken,
                             run_dir, report)
    else:
        extra = []
    if not measures and not extra and fields.empty:
        return pd.DataFrame()
    pairs = pd.concat([m[KEYS] for m in measures + extra], ignore_index=True) \
        if measures or extra else pd.DataFrame(columns=KEYS)
    present = set(pairs["split"])
    splits = [s for s in dict.fromkeys(["train", *pairs["split"]]) if s in present] or [None]
    if not fields.empty:
        alone = [name for name in fields["layer"] if name not in set(pairs["layer"])]
        pairs = pd.concat([pairs, pd.DataFrame([{"layer": name, "split": split}
                                                for name in alone for split in splits])],
                          ignore_index=True)
    table = pairs.drop_duplicates(KEYS, ignore_index=True)
    for measure in measures:
        table = table.merge(measure, on=KEYS, how="left")
    if not fields.empty:
        table = table.merge(fields, on="layer", how="left")
    for measure in extra:
        table = table.merge(measure, on=KEYS, how="left")
    table = with_layer_keys(table, network_order(run_dir))
    rank = {split: i for i, split in enumerate(splits)}
    table = table.assign(_split=table["split"].map(rank)).sort_values(
        ["layer_index", "_split"], kind="stable", na_position="last").drop(columns="_split")
    return keyed(meta, table.reset_index(drop=True))


def layers_table(paths: list[Path], run_ids: tuple[str, ...] = (),
                 on_damaged: Report | None = None,
                 plugin_measures: PluginMeasures | None = None,
                 saturation: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The layers table of every run under ``paths`` (run directories or folders above
    them), optionally only the given run-ids (module docstring).

    Args:
        on_damaged: called with a line for each run, file or plugin answer left out;
            default :func:`warnings.warn`.
        plugin_measures: see :func:`run_layers`.
        saturation: see :func:`run_layers`.

    Raises:
        UserError: no run has any per-layer measure, or every one was left out as
            damaged (:func:`labkit.outputs.results.collect`).
    """
    return collect(paths, run_ids, on_damaged, LAYERS_TABLE,
                   lambda run_dir, report: run_layers(run_dir, report, plugin_measures,
                                                      saturation))


def results_table(paths: list[Path], table: str = LOG_TABLE, run_ids: tuple[str, ...] = (),
                  on_damaged: Report | None = None,
                  plugin_measures: PluginMeasures | None = None,
                  saturation: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Any table of ``labkit results``: :func:`layers_table` for ``layers``, else
    :func:`labkit.outputs.results.collect` of ``table`` (``plugin_measures`` and
    ``saturation`` serve the layers table only)."""
    if table == LAYERS_TABLE:
        return layers_table(paths, run_ids, on_damaged, plugin_measures, saturation)
    return collect(paths, run_ids, on_damaged, table)

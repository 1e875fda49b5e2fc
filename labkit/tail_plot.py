"""The "tail pattern" figure of a run: saturation, probe accuracy and the border layer.

Layers run along the x axis in network order. On one [0, 1] axis: the saturation of
each layer at the final epoch (log.csv's last ``eval-saturation_<layer>`` values, left
out when the run logged none), the eval accuracy of the linear probes (one line per
downsampling), and the receptive-field border: a dashed line at the border layer and
a shaded tail after it. Layers past the border whose probe accuracy stops rising and
whose saturation drops are the unproductive "tail" (Richter et al., 2021).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from labkit.atomic import write_figure
from labkit.probes import results_path
from labkit.receptive_field import RF_CSV
from labkit.runinfo import LOG_CSV

SATURATION_PREFIX = "eval-saturation_"
FIGURE = "tail_pattern.png"


def final_saturation(run_dir: Path) -> dict[str, float]:
    """Layer → saturation (fraction) in the last row of the run's log.csv; ``{}`` if none."""
    path = Path(run_dir) / LOG_CSV
    if not path.exists():
        return {}
    last = pd.read_csv(path).iloc[-1]
    return {column[len(SATURATION_PREFIX):]: float(last[column])
            for column in last.index if column.startswith(SATURATION_PREFIX)}


def draw_tail_pattern(run_dir: Path, prefix: str | None = None) -> Path:
    """Draw ``[<prefix>_]tail_pattern.png`` in ``run_dir`` from the files there.

    Reads the probe CSV (:func:`labkit.probes.results_path`), ``receptive_field.csv``
    and ``log.csv`` when present. Returns the figure's path.
    """
    # a bare Figure draws without pyplot: no display, no global backend switched under
    # the user; imported here to keep matplotlib out of every labkit command's start-up
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    probes = pd.read_csv(results_path(run_dir, prefix), dtype={"downsampling": str})
    fields = pd.read_csv(run_dir / RF_CSV) if (run_dir / RF_CSV).exists() else None
    saturation = final_saturation(run_dir)
    # network order: the receptive-field table lists every measured layer
    order = list(fields["layer"]) if fields is not None else list(dict.fromkeys(probes["layer"]))
    layers = [name for name in order if name in set(probes["layer"]) or name in saturation]
    position = {name: i for i, name in enumerate(layers)}

    figure = Figure(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5))
    axis = figure.subplots()
    if saturation:
        shown = [name for name in layers if name in saturation]
        axis.plot([position[n] for n in shown], [saturation[n] for n in shown],
                  "o-", color="tab:red", label="saturation (final epoch)")
    for mode, rows in probes.groupby("downsampling", sort=False):
        rows = rows[rows["layer"].isin(position)]
        axis.plot([position[n] for n in rows["layer"]], rows["eval_accuracy"], "s-",
                  label=f"probe eval accuracy (downsampling {mode})")
    if fields is not None and fields["border"].any():
        border = fields.loc[fields["border"], "layer"].iloc[0]
        if border in position:
            axis.axvline(position[border], color="black", linestyle="--",
                         label=f"border layer ({border})")
            axis.axvspan(position[border], len(layers) - 0.5, color="grey", alpha=0.15)
    axis.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
    axis.set_xlim(-0.5, len(layers) - 0.5)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("fraction")
    axis.set_title(run_dir.name, fontsize=9)
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path = run_dir / (f"{prefix}_{FIGURE}" if prefix else FIGURE)
    write_figure(path, figure, dpi=120)
    return path

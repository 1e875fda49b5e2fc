"""The tail-pattern figure of one run: saturation, probe accuracy and the border layer.

Drawn by :func:`labkit.outputs.figures.tail_pattern` (one panel for the final saturation, one for
the probe eval accuracy, which spans its data instead of lying flat on [0, 1]; legends
outside the axes; titled with the run), written as PNG and SVG into the run directory.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from labkit.outputs import figures
from labkit.store import runinfo

FIGURE = "tail_pattern.png"


def final_saturation(run_dir: Path) -> dict[str, float]:
    """Layer → saturation (fraction) on the eval pass in the last row of the run's
    log.csv; ``{}`` if none.

    Raises:
        DamagedFile: log.csv cannot be read.
    """
    return figures.final_saturation(runinfo.read_log(run_dir), "eval")


def draw_tail_pattern(run_dir: Path, prefix: str | None = None) -> Path:
    """Draw ``[<prefix>_]tail_pattern.png`` (and ``.svg``) in ``run_dir`` from the files
    there: the probe CSV, ``receptive_field.csv`` and ``log.csv`` when present. Returns
    the PNG's path. A damaged file is left out, with a warning."""
    run_dir = Path(run_dir)
    data = figures.tail_data(run_dir, prefix)
    for problem in data.problems:
        warnings.warn(f"left out of the tail pattern: {problem}", stacklevel=2)
    name = f"run {run_dir.name}" + (f", probes {prefix!r}" if prefix else "")
    # the title names the run: the legend stays short, so it never crowds the axes
    figure = figures.tail_pattern({"this run": [data]}, name)
    if figure is None:  # nothing measured: an empty, titled figure says so
        figure = figures.titled(figures.new_figure(figsize=(6, 2)),
                                "Tail pattern: no saturation or probe results", name)
    stem = run_dir / (f"{prefix}_{FIGURE}" if prefix else FIGURE)
    figures.save(figure, stem.with_suffix(""))
    return stem

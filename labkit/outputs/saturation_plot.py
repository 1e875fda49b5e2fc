"""The per-epoch saturation figure of one run (``plots/saturation_epoch_NNNN.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from labkit.outputs.figures import saturation_label
from labkit.spec.saturation import TRAIN_PASS
from labkit.store.atomic import write_figure


def plot_saturation(row: Mapping[str, Any], path: str | Path, name: str = "",
                    config: dict[str, Any] | None = None) -> Any:
    """Bar plot of one epoch's saturation: one bar per layer and pass, layers in network
    order, the legend to the right of the bars.

    Args:
        row: one row of ``log.csv`` (a dict or a pandas Series): its
            ``<pass>-saturation_<layer>`` columns give the bars (in column order, which
            is network order), ``epoch`` and the eval splits' ``<split>-accuracy`` the
            title.
        path: PNG file to write (atomically).
        name: the run, for the title.
        config: the run's config: the y axis states its δ
            (:func:`labkit.outputs.figures.saturation_label`).

    Returns:
        The matplotlib ``Figure`` written.
    """
    from matplotlib.figure import Figure

    marker = "-saturation_"
    bars: dict[str, dict[str, float]] = {}
    for key, value in row.items():
        if marker in key:
            split, layer = key.split(marker, 1)
            bars.setdefault(split, {})[layer] = float(value)
    layers = list(dict.fromkeys(layer for values in bars.values() for layer in values))
    accuracies = [f"{key[:-len('-accuracy')]} accuracy {row[key]:.4f}" for key in row.keys()
                  if key.endswith("-accuracy") and not key.startswith(f"{TRAIN_PASS}-")]

    # fixed margins sized from the labels: a layout engine would double the drawing time,
    # which matters once per epoch (rotated 10 pt text: about 0.075 inch per character)
    legend = 0.3 + 0.09 * max(map(len, bars))  # inches right of the bars
    width = max(4.0, 0.25 * len(layers) * len(bars) + 1.0) + legend
    below = 0.4 + 0.075 * max(map(len, layers))
    height = 3.0 + below + 0.7
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.7 / width, right=1 - (0.15 + legend) / width,
                           bottom=below / height, top=1 - 0.7 / height)
    axes = figure.add_subplot()
    bar = 0.8 / len(bars)
    for i, (split, values) in enumerate(bars.items()):
        positions = [j + (i - (len(bars) - 1) / 2) * bar for j in range(len(layers))]
        axes.bar(positions, [values.get(layer, float("nan")) for layer in layers],
                 width=bar, label=split)
    axes.set_xticks(range(len(layers)), layers, rotation=90)
    axes.set_ylim(0, 1.0)
    axes.set_ylabel(saturation_label(config).replace(" (", "\n("), fontsize=9)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                title="pass", fontsize=8)
    axes.set_title(", ".join([f"Saturation per layer, epoch {int(row['epoch'])}",
                              *accuracies]) + (f"\n{name}" if name else ""), fontsize=9)
    write_figure(path, figure)
    return figure



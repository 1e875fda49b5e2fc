"""Layer saturation (delve / PHD-LAB) tracked during training, on every pass of every epoch.

For each tracked layer the outputs of a whole pass (every batch of the training pass, or
of one eval split) are reduced to a data matrix ``(rows, width)`` and accumulated into a
float64 covariance matrix with delve's :class:`~delve.TorchCovarianceMatrix`, on the
model's device. At the end of the pass delve's metric functions turn each covariance
into the logged statistics, so the numbers keep delve's definitions and compare with
published ones:

* ``idim`` (intrinsic dimensionality): counted on the covariance's eigenvalues in
  decreasing order (negatives clipped to zero), by one of two rules (``idim_rule``):

  - ``delve`` (default, so numbers compare with published PHD-LAB / delve ones): the
    number of leading eigenvalues whose cumulative share of the variance stays strictly
    *below* ``delta``. That is one less than the directions needed to reach ``delta``
    (or the full width when even all but the last fall short), and 0 when the first
    eigenvalue alone explains ``delta``. (delve's code also means to add one dimension
    when that share falls more than 0.02 short of ``delta``, and to return at least 1,
    but both branches slice an already reduced tensor and never take effect; we keep
    what it computes.)
  - ``reach``: the smallest number of leading directions whose cumulative share
    reaches ``delta``; every direction at ``delta = 1`` (so a rank-deficient layer is
    not counted at its rank up to rounding). The count the PCA projection keeps.

* ``lsat`` (saturation): ``idim / width``, a share in [0, 1];
* ``det``, ``trc``: determinant and trace of the covariance; ``dtrc``: sum of its
  eigenvalues clipped at zero.

The eigenvalues of every tracked layer are kept per pass and epoch
(:func:`save_spectra`), so ``idim`` and ``lsat`` at any ``delta`` and by either rule
are recomputed after training without retraining (:func:`view_columns`); ``delta``
and ``idim_rule`` are therefore not part of a run's identity.

Unlike delve 0.1.50's own ``SaturationTracker``, which restarts its accumulator on
every batch and so reports the last batch only, the accumulator here lives for the
whole pass. Log columns are named as PHD-LAB named them:
``<pass>-<statistic>_<layer>``, e.g. ``train-saturation_block1-conv1`` or
``eval-intrinsic-dimensionality_fc`` (statistic names from delve's ``STATMAP``).

delve is imported inside the functions that use it: importing it loads pyplot and
pandas, which would slow down every ``labkit`` command.
"""
from __future__ import annotations

import functools
import io
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labkit.atomic import write_bytes, write_figure
from labkit.errors import UserError
from labkit.layers import MEASURED_TYPES, measured_layers

TRACKED_TYPES: tuple[type[nn.Module], ...] = (*MEASURED_TYPES, nn.LSTM)
TRAIN_PASS = "train"
IdimRule = Literal["delve", "reach"]
# statistics that depend on delta and the rule: recomputed from the stored spectra
VIEW_STATS = ("lsat", "idim")
SPECTRA_DIR = "spectra"


class SaturationConfig(BaseModel):
    """The ``saturation`` section of a spec; every field is part of the run's identity."""

    model_config = ConfigDict(extra="forbid")

    stats: list[Literal["lsat", "idim", "det", "trc", "dtrc"]] = Field(
        ["lsat", "idim"], min_length=1,
        description="statistics logged per layer and pass: lsat (saturation), idim "
                    "(intrinsic dimensionality), det / trc (determinant / trace of the "
                    "covariance), dtrc (sum of its non-negative eigenvalues)")
    delta: float = Field(
        0.99, gt=0.0, le=1.0,
        description="share of the variance the intrinsic dimensionality explains; not "
                    "part of run identity (recomputed from the stored eigenvalues); a list "
                    "is a grid axis")
    idim_rule: IdimRule = Field(
        "delve",
        description="how the intrinsic dimensionality is counted: delve = leading "
                    "eigenvalues whose cumulative share stays below delta (delve / "
                    "PHD-LAB, one less than reach); reach = smallest number of leading "
                    "directions whose share reaches delta; not part of run identity")
    conv_method: Literal["channelwise", "mean", "max", "flatten"] = Field(
        "channelwise",
        description="how a conv output (N, C, H, W) becomes data points: channelwise = "
                    "every pixel's C-vector (N*H*W rows of width C); mean / max = global "
                    "pooling (N rows of width C); flatten = N rows of width C*H*W")
    downsampling: int | None = Field(
        None, ge=1,
        description="resize conv outputs larger than this to downsampling x downsampling "
                    "(nearest neighbour, as PHD-LAB) before the reduction; null: full size")
    timeseries_method: Literal["last_timestep", "timestepwise"] = Field(
        "last_timestep",
        description="how an LSTM output (N, T, U) becomes data points: the last step's "
                    "U-vector, or all steps concatenated (width T*U)")
    layers: list[str] | None = Field(
        None,
        description="layer names to track, shell wildcards allowed (\"layer1-*\"); "
                    "null: every Conv2d, Linear and LSTM")
    splits: list[str] | None = Field(
        None,
        description="passes to track: \"train\" (the training pass) and eval split "
                    "names; null: all of them")
    max_samples: int | None = Field(
        None, ge=1,
        description="use only the first max_samples samples (images) of each pass per "
                    "layer; null: every sample")


def feature_matrix(output: torch.Tensor, config: SaturationConfig) -> torch.Tensor:
    """The data matrix of one batch of a layer's outputs, as delve forms it.

    Args:
        output: ``(N, C, H, W)`` conv output, ``(N, T, U)`` sequence output, or
            ``(N, F)`` linear output; ``N`` samples first.
        config: reduction settings (``conv_method``, ``downsampling``,
            ``timeseries_method``).

    Returns:
        ``(rows, width)`` float64: one data point per row (see :class:`SaturationConfig`),
        reduced at the accumulator's precision.
    """
    if output.dim() == 4:
        size = config.downsampling
        if size is not None and (output.shape[2] > size or output.shape[3] > size):
            output = F.interpolate(output, size=size, mode="nearest")
        if config.conv_method == "channelwise":
            # one copy into float64 laid out N, H, W, C makes the reshape below a view
            pixels = output.to(torch.float64, memory_format=torch.channels_last)
            return pixels.permute(0, 2, 3, 1).reshape(-1, output.shape[1])
        output = output.to(torch.float64)
        if config.conv_method == "mean":
            return output.mean(dim=(2, 3))
        if config.conv_method == "max":
            return output.amax(dim=(2, 3))
        return output.flatten(1)
    output = output.to(torch.float64)
    if output.dim() == 3:
        return output[:, -1] if config.timeseries_method == "last_timestep" else output.flatten(1)
    return output


def _samples_first(module: nn.Module, output: Any) -> torch.Tensor:
    """A layer's output tensor with samples on dimension 0 (an LSTM returns a tuple)."""
    if isinstance(module, nn.LSTM):
        sequence = output[0]
        return sequence if module.batch_first else sequence.transpose(0, 1)
    return output


def spectrum(cov: torch.Tensor) -> np.ndarray:
    """Eigenvalues of a covariance, decreasing, float64 (not clipped).

    Args:
        cov: ``(width, width)`` symmetric covariance.

    Returns:
        ``(width,)`` numpy array on the CPU.
    """
    return torch.linalg.eigvalsh(cov.to(torch.float64)).flip(0).cpu().numpy()


def intrinsic_dimensionality(eigenvalues: np.ndarray, delta: float,
                             rule: IdimRule = "delve") -> int:
    """Directions of a layer's output space that explain ``delta`` of its variance.

    Args:
        eigenvalues: ``(width,)`` covariance eigenvalues in decreasing order
            (:func:`spectrum`); negatives count as zero.
        delta: share of the variance, in (0, 1].
        rule: ``"delve"`` or ``"reach"`` (module docstring).

    Returns:
        The count, in ``[0, width]``; 0 for a layer without variance.
    """
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    width = len(values)
    if rule == "reach" and delta >= 1.0:
        return width
    total = values.sum()
    if not total > 0:
        return 0
    below = int((np.cumsum(values) / total < delta).sum())
    return below if rule == "delve" else min(below + 1, width)


def layer_statistics(cov: torch.Tensor, eigenvalues: np.ndarray, stats: Sequence[str],
                     delta: float, rule: IdimRule = "delve") -> dict[str, float]:
    """delve's statistics of one layer's covariance.

    Args:
        cov: ``(width, width)`` covariance, float64.
        eigenvalues: its :func:`spectrum`.
        stats: names among ``lsat, idim, det, trc, dtrc``.
        delta, rule: threshold and counting rule of ``idim`` and ``lsat``.

    Returns:
        ``{stat: value}`` in the order of ``stats``.
    """
    from delve import metrics

    idim = functools.cache(lambda: intrinsic_dimensionality(eigenvalues, delta, rule))
    compute = {
        "lsat": lambda: idim() / cov.shape[0],
        "idim": idim,
        "det": lambda: metrics.compute_cov_determinant(cov),
        "trc": lambda: metrics.compute_cov_trace(cov),
        "dtrc": lambda: np.clip(eigenvalues, 0.0, None).sum(),
    }
    return {stat: float(compute[stat]()) for stat in stats}


def column_name(split: str, stat: str, layer: str) -> str:
    """PHD-LAB's log column of one statistic: ``train-saturation_block1-conv1``."""
    from delve.writers import STATMAP

    return f"{split}-{STATMAP[stat]}_{layer}"


class SaturationTracker:
    """Accumulates each tracked layer's covariance over whole passes of a network.

    Args:
        config: the spec's ``saturation`` section; ``None`` (saturation off) gives a
            tracker that tracks no pass, so callers need no special case.
        model: the network, used to check that ``config.layers`` match some layer.
        passes: every pass the caller runs (``"train"`` and the eval split names);
            ``config.splits`` must name some of them.

    Raises:
        UserError: a layer pattern matches no layer, or a split name is unknown.

    Usage::

        with tracker.track("eval", model):
            ...  # forward every batch of the eval split
        row.update(tracker.columns("eval"))
    """

    def __init__(self, config: SaturationConfig | dict[str, Any] | None, model: nn.Module,
                 passes: Sequence[str]):
        self.config = SaturationConfig.model_validate(config) if config is not None else None
        self.passes: list[str] = []
        if self.config is not None:
            measured_layers(model, self.config.layers, TRACKED_TYPES)
            unknown = sorted(set(self.config.splits or ()) - set(passes))
            if unknown:
                raise UserError(f"saturation.splits: unknown pass(es) {unknown}; this run has "
                                f"{', '.join(passes)}")
            self.passes = [p for p in passes if p in (self.config.splits or passes)]
        # pass -> layer name -> delve accumulator, kept until the pass is tracked again
        self._accumulators: dict[str, dict[str, Any]] = {}
        self._layers: dict[str, list[str]] = {}
        self._seen: dict[str, int] = {}
        self._spectra: dict[str, dict[str, np.ndarray]] = {}

    @contextmanager
    def track(self, split: str, model: nn.Module) -> Iterator[None]:
        """Accumulate the covariances of ``split`` over every forward of ``model`` inside.

        Starts the pass's accumulators afresh; does nothing for an untracked pass.
        ``model`` may be a different object from the constructor's (an eval copy) as
        long as its layers have the same names.
        """
        if split not in self.passes:
            yield
            return
        layers = measured_layers(model, self.config.layers, TRACKED_TYPES)
        self._layers[split] = [name for name, _ in layers]
        self._accumulators[split] = {}
        self._spectra.pop(split, None)
        self._seen = {name: 0 for name, _ in layers}
        handles = [module.register_forward_hook(self._hook(split, name))
                   for name, module in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, split: str, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self._record(split, name, _samples_first(module, output))
        return record

    @torch.no_grad()
    def _record(self, split: str, name: str, output: torch.Tensor) -> None:
        from delve import TorchCovarianceMatrix

        limit = self.config.max_samples
        take = len(output) if limit is None else min(len(output), limit - self._seen[name])
        if take <= 0:
            return
        self._seen[name] += take
        rows = feature_matrix(output[:take].detach(), self.config)
        accumulators = self._accumulators[split]
        if name not in accumulators:
            accumulators[name] = TorchCovarianceMatrix(device=rows.device)
        accumulators[name].update(rows, vae=False)

    def moments(self, split: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (mean (width,), covariance (width, width))}`` of the last ``split`` pass.

        Both float64 on the model's device, in network order; a layer that saw no
        sample in the pass is left out.
        """
        out = {}
        for name in self._layers.get(split, []):
            acc = self._accumulators[split].get(name)
            if acc is not None:
                # delve keeps the running sum and count private; fix() gives the covariance
                out[name] = (acc._avg / acc._tlen, acc.fix())
        return out

    def spectra(self, split: str) -> dict[str, np.ndarray]:
        """``{layer: eigenvalues}`` (:func:`spectrum`) of the last ``split`` pass, network
        order; computed once per pass; a layer that saw no sample is left out."""
        if split not in self._spectra:
            self._spectra[split] = {name: spectrum(cov)
                                    for name, (_, cov) in self.moments(split).items()}
        return self._spectra[split]

    def epoch_spectra(self) -> dict[str, dict[str, np.ndarray]]:
        """``{pass: {layer: eigenvalues}}`` of every pass tracked since the last call
        of :meth:`track` on each pass (what :func:`save_spectra` stores per epoch)."""
        return {split: self.spectra(split) for split in self.passes if split in self._layers}

    def columns(self, split: str) -> dict[str, float]:
        """The log columns of the last ``split`` pass; ``{}`` when none was tracked.

        Stat-major, layers in network order; a layer that saw no sample (a branch the
        network did not take) gets NaN.
        """
        if split not in self._layers:
            return {}
        config, moments, spectra = self.config, self.moments(split), self.spectra(split)
        nan = dict.fromkeys(config.stats, float("nan"))
        values = {name: (layer_statistics(moments[name][1], spectra[name], config.stats,
                                          config.delta, config.idim_rule)
                         if name in moments else nan)
                  for name in self._layers[split]}
        return {column_name(split, stat, name): values[name][stat]
                for stat in config.stats for name in self._layers[split]}


def plot_saturation(row: Mapping[str, Any], path: str | Path) -> Any:
    """Bar plot of one epoch's saturation: one bar per layer and pass, layers in network order.

    Args:
        row: one row of ``log.csv`` (a dict or a pandas Series): its
            ``<pass>-saturation_<layer>`` columns give the bars (in column order, which
            is network order), ``epoch`` and the eval splits' ``<split>-accuracy`` the
            title.
        path: PNG file to write (atomically).

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
    width = max(4.0, 0.25 * len(layers) * len(bars) + 1.0)
    below = 0.4 + 0.075 * max(map(len, layers))
    height = 3.0 + below + 0.4
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=below / height,
                           top=1 - 0.4 / height)
    axes = figure.add_subplot()
    bar = 0.8 / len(bars)
    for i, (split, values) in enumerate(bars.items()):
        positions = [j + (i - (len(bars) - 1) / 2) * bar for j in range(len(layers))]
        axes.bar(positions, [values.get(layer, float("nan")) for layer in layers],
                 width=bar, label=split)
    axes.set_xticks(range(len(layers)), layers, rotation=90)
    axes.set_ylim(0, 1.15)  # headroom above 1 keeps the legend off the bars
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel("saturation")
    axes.legend(loc="upper right", ncols=len(bars))
    axes.set_title(", ".join([f"epoch {int(row['epoch'])}", *accuracies]))
    write_figure(path, figure)
    return figure


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


def load_spectra(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """What :func:`save_spectra` wrote; ``{}`` when the file does not exist.

    Raises:
        UserError: the file is damaged.
    """
    if not Path(path).exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            out: dict[str, dict[str, np.ndarray]] = {}
            for key in archive.files:
                split, layer = key.split("/", 1)
                out.setdefault(split, {})[layer] = archive[key]
            return out
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is damaged ({exc}); delete it and retrain the run's last "
                        f"epochs to rebuild it") from None


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

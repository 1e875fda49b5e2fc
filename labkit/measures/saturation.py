"""Layer saturation (delve / PHD-LAB) tracked during training, on every pass of every epoch.

For each tracked layer the outputs of a whole pass (every batch of the training pass, or
of one eval split) are reduced to delve's data matrix ``(rows, width)``
(:func:`feature_points`) and summed, on the model's device, into what delve's
:class:`~delve.TorchCovarianceMatrix` keeps: ``Σ x xᵀ``, ``Σ x`` and the count, here
taken around a fixed reference point (:class:`LayerMoments`). The covariance is delve's,
``E[x xᵀ] - μ μᵀ`` with the sums divided by the count. A channelwise conv map gives
``N·H·W`` rows a batch, and their products are nearly all of tracking's cost: they are
multiplied in float32, in blocks of :data:`BLOCK_ROWS` rows read from the output's own
layout, and the blocks added in float64; the reference (the first batch's mean) keeps
float32 from losing the covariance to cancellation, so it agrees with float64
throughout to about 1e-7 of its largest entry. Layers with one row per sample
(Linear, LSTM, pooled or flattened conv outputs) are multiplied in float64. At the end
of the pass delve's metric functions turn each covariance into the logged statistics,
so the numbers keep delve's definitions and compare with published ones:

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
whole pass; a mid-epoch checkpoint saves it (:meth:`SaturationTracker.pass_state`),
and the processes of one run add theirs together (:meth:`SaturationTracker.all_reduce`).
Log columns are named as PHD-LAB named them:
``<pass>-<statistic>_<layer>``, e.g. ``train-saturation_block1-conv1`` or
``eval-intrinsic-dimensionality_fc`` (statistic names from delve's ``STATMAP``).

delve is imported inside the functions that use it: importing it loads pyplot and
pandas, which would slow down every ``labkit`` command.
"""
from __future__ import annotations

import functools
import io
import itertools
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from labkit.core.errors import DamagedFile, UserError
from labkit.measures.layers import MEASURED_TYPES, measured_layers
from labkit.spec.saturation import IdimRule, SaturationConfig
from labkit.store.atomic import write_bytes, write_figure
from labkit.store.readers import read_npz_file

TRACKED_TYPES: tuple[type[nn.Module], ...] = (*MEASURED_TYPES, nn.LSTM)
TRAIN_PASS = "train"
# statistics that depend on delta and the rule: recomputed from the stored spectra
VIEW_STATS = ("lsat", "idim")
SPECTRA_DIR = "spectra"

# rows of one float32 product: its rounding error stays near 1e-7 of the layer's variance
BLOCK_ROWS = 4096
# per-sample products straight from the (C, H*W) layout pay a fixed cost per sample and
# need enough pixels per product to run at the speed of one large one; smaller maps
# are cheaper to transpose block by block (measured on the CPU, benchmarks/)
NATIVE_MIN_PIXELS = 64
NATIVE_MIN_VALUES = 8192
# devices that work through a batch in chunks of about CHUNK_VALUES float32 values
# (4 MB: it stays in cache), each chunk's blocks in one batched product; elsewhere
# (accelerators, where every kernel launch costs) the whole batch at once
CHUNKED_DEVICE_TYPES = {"cpu"}
CHUNK_VALUES = 1 << 20


def feature_points(output: torch.Tensor, config: SaturationConfig) -> torch.Tensor:
    """One batch of a layer's outputs as data points, samples first and width last.

    Args:
        output: ``(N, C, H, W)`` conv output, ``(N, T, U)`` sequence output, or
            ``(N, F)`` linear output; ``N`` samples first.
        config: reduction settings (``conv_method``, ``downsampling``,
            ``timeseries_method``).

    Returns:
        ``(N, width)``, or for ``channelwise`` the ``(N, H, W, C)`` permuted view of the
        conv output (no copy): flattened to ``(rows, width)`` it is delve's data matrix,
        one data point per row (see :class:`SaturationConfig`), in the output's dtype.
    """
    if output.dim() == 4:
        size = config.downsampling
        if size is not None and (output.shape[2] > size or output.shape[3] > size):
            output = F.interpolate(output, size=size, mode="nearest")
        if config.conv_method == "channelwise":
            return output.permute(0, 2, 3, 1)
        if config.conv_method == "mean":
            return output.mean(dim=(2, 3), dtype=torch.float32)
        if config.conv_method == "max":
            return output.amax(dim=(2, 3))
        return output.flatten(1)
    if output.dim() == 3:
        return output[:, -1] if config.timeseries_method == "last_timestep" else output.flatten(1)
    return output


class LayerMoments:
    """One layer's sums over a pass, taken around a fixed reference point.

    With ``d = x - reference`` for every data point ``x`` (a row of delve's data matrix),
    ``sums`` is the float64 matrix ``[[Σ d dᵀ, Σ d], [Σ dᵀ, n]]`` (width + 1 square): the
    Gram matrix of the points with a constant 1 appended. Where a sample gives many
    points (a channelwise conv map), each block of at most :data:`BLOCK_ROWS` of them is
    multiplied in float32 on the layer's own layout and added in float64; one point a
    sample (Linear, LSTM, pooled conv outputs) is multiplied in float64. The reference (the first batch's mean, float32) keeps ``d`` small
    next to ``x``, so float32 loses no more than its rounding of the spread: without it a
    layer whose mean is 1000 times its spread would lose the covariance to cancellation.
    The covariance is delve's, ``E[x xᵀ] - μ μᵀ`` divided by ``n``, which the shift leaves
    unchanged: ``E[d dᵀ] - E[d] E[d]ᵀ``.

    Args:
        reference: ``(width,)`` float32 point subtracted from every data point.
        sums: ``(width + 1, width + 1)`` float64 accumulator; zeros when omitted.
        count: data points in ``sums``.
    """

    def __init__(self, reference: torch.Tensor, sums: torch.Tensor | None = None,
                 count: int = 0):
        width = len(reference)
        self.reference = reference
        self.sums = (torch.zeros(width + 1, width + 1, dtype=torch.float64,
                                 device=reference.device) if sums is None else sums)
        self.count = count

    @classmethod
    def around(cls, points: torch.Tensor) -> "LayerMoments":
        """Empty sums around the mean of ``points`` (:func:`feature_points`)."""
        return cls(points.mean(dim=tuple(range(points.dim() - 1)), dtype=torch.float32))

    @property
    def width(self) -> int:
        return len(self.reference)

    def add(self, points: torch.Tensor) -> None:
        """Add a batch of :func:`feature_points` (any float dtype) to the sums."""
        rows = points[0].numel() // self.width if len(points) else 0
        if rows == 0:
            return
        if self.sums.device != points.device:  # restored from a checkpoint on the CPU
            self.reference = self.reference.to(points.device)
            self.sums = self.sums.to(points.device)
        self.count += len(points) * rows
        if rows == 1:
            self._add_float64(points.reshape(len(points), self.width))
            return
        native = points.dim() == 4 and points.permute(0, 3, 1, 2).is_contiguous()
        with _ieee_float32(points.device):
            chunked = points.device.type in CHUNKED_DEVICE_TYPES
            if (chunked and native and rows >= NATIVE_MIN_PIXELS
                    and rows * self.width >= NATIVE_MIN_VALUES):
                self._add_channel_major(points.permute(0, 3, 1, 2).reshape(
                    len(points), self.width, rows))
            else:
                self._add_blocks(points.reshape(len(points), rows, self.width), chunked)

    def _add_float64(self, points: torch.Tensor) -> None:
        """Sums of ``(N, width)`` points, one per sample, in one float64 product."""
        augmented = torch.ones(len(points), self.width + 1, dtype=torch.float64,
                               device=points.device)
        torch.sub(points.to(torch.float64), self.reference.to(torch.float64),
                  out=augmented[:, :-1])
        self.sums.addmm_(augmented.T, augmented)

    def _add_channel_major(self, samples: torch.Tensor) -> None:
        """Sums of ``(N, width, pixels)`` samples, one product per sample without a
        transposed copy; every :data:`BLOCK_ROWS` points go into the float64 sums."""
        width, pixels = samples.shape[1:]
        augmented = torch.ones(width + 1, pixels, dtype=torch.float32, device=samples.device)
        product = torch.zeros(width + 1, width + 1, dtype=torch.float32, device=samples.device)
        per_block = max(1, BLOCK_ROWS // pixels)
        reference = self.reference[:, None]
        for i, sample in enumerate(samples):
            torch.sub(sample, reference, out=augmented[:width])
            product.addmm_(augmented, augmented.T)
            if (i + 1) % per_block == 0 or i + 1 == len(samples):
                self.sums += product
                product.zero_()

    def _add_blocks(self, samples: torch.Tensor, chunked: bool) -> None:
        """Sums of ``(N, rows, width)`` samples, :data:`BLOCK_ROWS` points per product,
        the blocks of a chunk of whole samples in one batched product: ``chunked``, about
        :data:`CHUNK_VALUES` values a chunk, else the whole batch."""
        count, rows, width = samples.shape
        per_chunk = max(1, CHUNK_VALUES // (rows * width)) if chunked else count
        total = min(count, per_chunk) * rows
        blocks = -(-total // BLOCK_ROWS)
        # padding rows stay zero, constant included, and so add nothing
        buffer = torch.zeros(blocks * min(total, BLOCK_ROWS), width + 1, dtype=torch.float32,
                             device=samples.device)
        for start in range(0, count, per_chunk):
            chunk = samples[start:start + per_chunk]
            used = len(chunk) * rows
            torch.sub(chunk, self.reference, out=buffer[:used, :width].view(chunk.shape))
            buffer[:used, width] = 1.0
            if used < len(buffer):
                buffer[used:] = 0.0
            blocked = buffer.view(blocks, -1, width + 1)
            self.sums += torch.bmm(blocked.transpose(1, 2), blocked).sum(0, dtype=torch.float64)

    def mean(self) -> torch.Tensor:
        """``(width,)`` float64 mean of the points added."""
        return self.reference.to(torch.float64) + self.sums[-1, :-1] / self.count

    def covariance(self) -> torch.Tensor:
        """``(width, width)`` float64 covariance, delve's (centred, divided by ``n``)."""
        shift = self.sums[:-1, -1] / self.count
        return self.sums[:-1, :-1] / self.count - torch.outer(shift, shift)

    def moved_to(self, reference: torch.Tensor) -> "LayerMoments":
        """The same sums taken around another ``reference`` (float64 algebra, exact up
        to rounding): ``d' = d - δ`` with ``δ = reference - self.reference``."""
        delta = reference.to(torch.float64) - self.reference.to(torch.float64)
        move = torch.eye(self.width + 1, dtype=torch.float64, device=self.sums.device)
        move[:-1, -1] = -delta
        return LayerMoments(reference, move @ self.sums @ move.T, self.count)


@contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """Float32 products at full float32 precision inside: on CUDA, TF32 (10-bit
    mantissa, which a user or plugin may have switched on) would cost the covariance
    three digits."""
    if device.type != "cuda":
        yield
        return
    # the fp32_precision API: reading the legacy allow_tf32 flag raises once anyone
    # has set the new one
    precision = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = precision


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def _reduce_moments(layers: Sequence[str], moments: Mapping[str, LayerMoments],
                    device: torch.device) -> dict[str, LayerMoments]:
    """Every process's ``moments`` of ``layers`` summed over the process group.

    Three collectives, whatever the number of layers: counts and widths (a process may
    hold no sums of a layer its inputs never reached), the count-weighted mean of the
    references, then the sums moved to that common reference.
    """
    meta = torch.zeros(len(layers), 3, dtype=torch.float64, device=device)
    for i, name in enumerate(layers):
        if name in moments and moments[name].count:
            meta[i] = torch.tensor([moments[name].count, moments[name].width, 1.0],
                                   dtype=torch.float64)
    dist.all_reduce(meta)
    present = {name: (int(count), round(width / processes))
               for name, (count, width, processes) in zip(layers, meta.tolist()) if count}

    def gathered(size: Callable[[int], int],
                 part: Callable[[str, LayerMoments], torch.Tensor]) -> dict[str, torch.Tensor]:
        """``part`` of every present layer, zeros where this process has none, summed."""
        pieces = [part(name, moments[name]).flatten()
                  if name in moments and moments[name].count
                  else torch.zeros(size(width), dtype=torch.float64, device=device)
                  for name, (_, width) in present.items()]
        flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64,
                                                            device=device)
        dist.all_reduce(flat)
        return dict(zip(present, flat.split([size(width) for _, width in present.values()])))

    weighted = gathered(lambda width: width,
                        lambda name, m: m.reference.to(torch.float64) * m.count)
    references = {name: (weighted[name] / count).to(torch.float32)
                  for name, (count, _) in present.items()}
    sums = gathered(lambda width: (width + 1) ** 2,
                    lambda name, m: m.moved_to(references[name]).sums)
    return {name: LayerMoments(references[name], sums[name].view(width + 1, width + 1), count)
            for name, (count, width) in present.items()}


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
            tracker.all_reduce()  # several processes: sum their passes (else a no-op)
        row.update(tracker.columns("eval"))

    A pass interrupted by a mid-epoch checkpoint continues exactly: inside its
    ``track`` context, :meth:`pass_state` gives the sums so far; after resuming,
    :meth:`load_pass_state` right after entering ``track`` again restores them.
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
        # pass -> layer name -> sums, kept until the pass is tracked again
        self._moments: dict[str, dict[str, LayerMoments]] = {}
        self._layers: dict[str, list[str]] = {}
        self._seen: dict[str, dict[str, int]] = {}  # samples taken per layer (max_samples)
        self._device: dict[str, torch.device] = {}
        self._open: list[str] = []  # passes whose track() context is running
        self._last: str | None = None
        self._reduced: set[str] = set()
        self._spectra: dict[str, dict[str, np.ndarray]] = {}

    @contextmanager
    def track(self, split: str, model: nn.Module) -> Iterator[None]:
        """Accumulate the covariances of ``split`` over every forward of ``model`` inside.

        Starts the pass's sums afresh; does nothing for an untracked pass. ``model``
        may be a different object from the constructor's (an eval copy) as long as its
        layers have the same names.
        """
        if split not in self.passes:
            yield
            return
        layers = measured_layers(model, self.config.layers, TRACKED_TYPES)
        self._layers[split] = [name for name, _ in layers]
        self._moments[split] = {}
        self._seen[split] = {name: 0 for name, _ in layers}
        self._device[split] = next(itertools.chain(model.parameters(), model.buffers()),
                                   torch.empty(0)).device
        self._reduced.discard(split)
        self._spectra.pop(split, None)
        self._last = split
        handles = [module.register_forward_hook(self._hook(split, name))
                   for name, module in layers]
        self._open.append(split)
        try:
            yield
        finally:
            self._open.remove(split)
            for handle in handles:
                handle.remove()

    def _hook(self, split: str, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self._record(split, name, _samples_first(module, output))
        return record

    @torch.no_grad()
    def _record(self, split: str, name: str, output: torch.Tensor) -> None:
        limit = self.config.max_samples
        seen = self._seen[split]
        take = len(output) if limit is None else min(len(output), limit - seen[name])
        if take <= 0:
            return
        seen[name] += take
        points = feature_points(output[:take].detach(), self.config)
        moments = self._moments[split]
        if name not in moments:
            moments[name] = LayerMoments.around(points)
        moments[name].add(points)

    def pass_state(self) -> dict[str, Any]:
        """The sums of every pass whose :meth:`track` context is running, for a
        mid-epoch checkpoint.

        Returns:
            ``{pass: {"layers": {layer: {"reference", "sums", "count"}}, "seen":
            {layer: samples}}}``: CPU copies of the float64 sums and float32 references,
            and ints; plain enough for ``torch.load(..., weights_only=True)``. ``{}``
            outside a tracked pass.
        """
        return {split: {"layers": {name: {"reference": _cpu_copy(m.reference),
                                          "sums": _cpu_copy(m.sums), "count": m.count}
                                   for name, m in self._moments[split].items()},
                        "seen": dict(self._seen[split])}
                for split in self._open}

    def load_pass_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`pass_state` returned, right after entering :meth:`track`
        of the same pass (before its first batch); continuing the pass then gives the
        covariances, bit for bit, of a pass never interrupted.

        Raises:
            ValueError: a pass in ``state`` is not being tracked now, or names a layer
                it does not track.
        """
        for split, saved in state.items():
            if split not in self._open:
                raise ValueError(f"saturation state of pass {split!r} must be loaded inside "
                                 f"'with tracker.track({split!r}, model)', before its first "
                                 f"batch")
            unknown = sorted(set(saved["seen"]) - set(self._layers[split]))
            if unknown:
                raise ValueError(f"saturation state of pass {split!r} has layers {unknown} "
                                 f"this pass does not track")
            device = self._device[split]
            self._moments[split] = {
                name: LayerMoments(layer["reference"].to(device), layer["sums"].to(device),
                                   int(layer["count"]))
                for name, layer in saved["layers"].items()}
            self._seen[split].update({name: int(n) for name, n in saved["seen"].items()})
            self._spectra.pop(split, None)

    def all_reduce(self) -> None:
        """Sum the sums of every pass being tracked (or, outside :meth:`track`, of the
        last pass tracked) over the processes of ``torch.distributed``, so every
        process then reports the statistics of all their samples together.

        Call it on every process at the end of the pass, once: a second call for the
        same pass does nothing. A no-op without an initialized process group. Each
        process takes its sums around its own reference; they are moved to one common
        reference (the count-weighted mean of the processes' references) before adding,
        so the result equals one process tracking every sample up to float32 rounding
        of the products.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        current = list(self._open) if self._open else [self._last] if self._last else []
        for split in (s for s in current if s not in self._reduced):
            self._moments[split] = _reduce_moments(self._layers[split], self._moments[split],
                                                   self._device[split])
            self._reduced.add(split)
            self._spectra.pop(split, None)

    def moments(self, split: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (mean (width,), covariance (width, width))}`` of the last ``split`` pass.

        Both float64 on the model's device, in network order; a layer that saw no
        sample in the pass is left out.
        """
        out = {}
        for name in self._layers.get(split, []):
            layer = self._moments[split].get(name)
            if layer is not None and layer.count:
                out[name] = (layer.mean(), layer.covariance())
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

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

delve is imported only where a statistic needs it (``det``, ``trc``): importing it loads
pyplot and pandas, about 1.7 s of every training process and ``labkit`` command.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.measures.layers import MEASURED_TYPES
from labkit.measures.pca_dimension import intrinsic_dimensionality
from labkit.spec.saturation import IdimRule, SaturationConfig

TRACKED_TYPES: tuple[type[nn.Module], ...] = (*MEASURED_TYPES, nn.LSTM)
# statistics that depend on delta and the rule: recomputed from the stored spectra

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


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def spectrum(cov: torch.Tensor) -> np.ndarray:
    """Eigenvalues of a covariance, decreasing, float64 (not clipped).

    Args:
        cov: ``(width, width)`` symmetric covariance.

    Returns:
        ``(width,)`` numpy array on the CPU.
    """
    return torch.linalg.eigvalsh(cov.to(torch.float64)).flip(0).cpu().numpy()


def _delve_metrics() -> Any:
    """``delve.metrics``, imported when a statistic needs it (``det``, ``trc``)."""
    from delve import metrics
    return metrics


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
    idim = functools.cache(lambda: intrinsic_dimensionality(eigenvalues, delta, rule))
    compute = {
        "lsat": lambda: idim() / cov.shape[0],
        "idim": idim,
        "det": lambda: _delve_metrics().compute_cov_determinant(cov),
        "trc": lambda: _delve_metrics().compute_cov_trace(cov),
        "dtrc": lambda: np.clip(eigenvalues, 0.0, None).sum(),
    }
    return {stat: float(compute[stat]()) for stat in stats}

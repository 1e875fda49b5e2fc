"""Saturation tracked while a network trains and evaluates: forward hooks feed every
measured layer's activations into float64 moments over all samples of a pass, reduced
over processes, and turned into each pass's log columns and eigenvalue spectra
(:class:`SaturationTracker`)."""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from labkit.core.errors import UserError
from labkit.measures.layers import measured_layers
from labkit.measures.saturation import (TRACKED_TYPES, LayerMoments, cpu_copy, feature_points,
                                        layer_statistics, spectrum)
from labkit.measures.pca_dimension import column_name
from labkit.spec.saturation import SaturationConfig


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
        return {split: {"layers": {name: {"reference": cpu_copy(m.reference),
                                          "sums": cpu_copy(m.sums), "count": m.count}
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



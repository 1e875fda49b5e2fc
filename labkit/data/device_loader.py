"""A training loader that keeps the whole training split on the run's device.

Small data sets (digits, MNIST, CIFAR, TinyImageNet) are loader-bound on a GPU when every
image goes through torchvision's per-image pipeline on CPU workers. :func:`device_loader`
instead reads the split once, stores it as one tensor on the device (uint8 for images
decoded from files, float for in-memory tensors), and per batch gathers the images and
applies the augmentation to the whole batch there (FFCV / airbench style).

Contract of ``device_loader(dataset, batch_size, generator, device, drop_last)``:

* ``dataset`` is a training split as built by :func:`labkit.data.splits.build_bundle`
  (a :class:`~labkit.data.splits.SplitDataset`); anything else, or a transform that
  cannot be applied batchwise, is a :class:`~labkit.core.errors.UserError` listing
  :data:`SUPPORTED`.
* Iterating yields ``[images, labels]`` (float tensor ``(B, C, H, W)`` and int64
  ``(B,)``, both already on ``device``), like a ``DataLoader`` over
  :class:`~labkit.data.seeded.SeededSamples` with a
  :class:`~labkit.data.seeded.SeededSampler` and the same ``batch_size`` and
  ``drop_last``; ``len()`` is its number of batches.
* Sample order: each ``iter()`` draws the epoch's permutation and one seed per sample
  from ``generator`` exactly as :class:`SeededSampler` does, so the generator's state
  after an epoch is the same with either loader and the checkpoint's ``data_order``
  state resumes both. Like the DataLoader, each ``iter()`` also takes one draw from
  torch's global generator (the DataLoader's worker base seed), so with deterministic
  transforms (normalisation only) a run trains the same weights with either loader.
* Augmentation: every image's random parameters are drawn from its own seed alone
  (:class:`SampleDraws`: SplitMix64 per seed, computed for the whole epoch on the
  device when it starts), so they depend on neither the batch size nor the image's
  place in its batch, the device or any other state: a run with ``accumulate`` k
  draws what one with a k times larger batch draws.
* Resuming mid-epoch: as with :class:`SeededSampler`, setting ``loader.sampler.start``
  (or ``loader.start``) to ``k`` before ``iter()`` skips the epoch's first ``k`` samples
  (``len()`` counts the rest; the next epoch starts at 0 again), and with the generator
  state of the epoch's start the remaining batches are the uninterrupted epoch's when
  ``k`` is a multiple of ``batch_size``.
* The random draws differ from torchvision's per-image ones (which :class:`SeededSamples`
  seeds per sample): a run using this loader trains other weights than the DataLoader
  path whenever the data set augments.
* Steps applied once, at load: resize and centre crop (they must come before any
  random step), conversion of PIL images to tensors. Steps applied per batch, in the
  data set's order: random crop with padding (``reflect``, ``edge``, ``symmetric`` or
  ``constant`` padding; the ``flip_translate`` preset's translation is a crop of the
  zero-padded image), random horizontal flip, conversion to float, normalisation,
  cutout (:class:`~labkit.data.transforms.Cutout`: one square per image, its centre
  drawn per image, zeroed after normalisation). Crop, flip and float conversion commute
  exactly, so moving the conversion to tensors before them changes no pixel.

On CUDA the split must fit in the device's free memory; on the CPU the tensor lives in
host memory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchvision.transforms import v2

from labkit.core.errors import UserError
from labkit.data.seeded import SEED_RANGE
from labkit.data.splits import SplitDataset
from labkit.data.transforms import Cutout

SUPPORTED = ("resize and centre crop (done once, at load), random crop with padding "
             "(augment \"crop\" / \"flip_crop\" / \"flip_translate\"), random horizontal "
             "flip, float conversion, normalisation and cutout (\"flip_crop_cutout\")")
_FIX = ("use augment \"none\", \"crop\", \"flip_crop\", \"flip_translate\" or "
        "\"flip_crop_cutout\", or set \"data_loader\": \"torch\" (the per-image loader)")
# fraction of a GPU's free memory the stored split may take
_MEMORY_SHARE = 0.8


def _refuse(problem: str) -> UserError:
    return UserError(f"data_loader \"device\": {problem}; it supports {SUPPORTED}; {_FIX}")


def _shift_right(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 ``values`` read as unsigned 64-bit words."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def _signed(word: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return word - 2**64 if word >= 2**63 else word


_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (unsigned)
_MIX1, _MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def sample_words(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` outputs of SplitMix64 seeded with each of ``seeds``, top 53
    bits: output ``k`` of seed ``s`` is SplitMix64's finaliser of ``s + k·γ``, computed in
    int64 arithmetic (which wraps like the unsigned words) on the seeds' device.

    Args:
        seeds: ``(N,)`` int64 (in ``[0, 2**62)``).

    Returns:
        ``(N, count)`` int64 in ``[0, 2**53)``; row ``i`` depends on ``seeds[i]`` alone.
    """
    offsets = torch.tensor([_signed(k * _GAMMA % 2**64) for k in range(1, count + 1)],
                           dtype=torch.int64, device=seeds.device)
    z = seeds.view(-1, 1) + offsets
    z ^= _shift_right(z, 30)
    z *= _MIX1
    z ^= _shift_right(z, 27)
    z *= _MIX2
    z ^= _shift_right(z, 31)
    return _shift_right(z, 11)


class SampleDraws:
    """Random numbers for every image of a batch, each image's from its own seed alone.

    Hands out the columns of :func:`sample_words` in turn: the ``k``-th draw of every
    image is its seed's ``k``-th SplitMix64 output. An image's draws therefore depend on
    its seed and on how many draws the steps before took, never on the batch it sits
    in or on the device.

    Args:
        words: ``(N, steps' draws)`` from :func:`sample_words`, one row per image.
    """

    def __init__(self, words: torch.Tensor):
        self.words = words
        self.used = 0

    def _next(self) -> torch.Tensor:
        column = self.words[:, self.used]
        self.used += 1
        return column

    def integers(self, high: int) -> torch.Tensor:
        """``(N,)`` int64, uniform in ``[0, high)`` (bias below ``high / 2**53``)."""
        return self._next() % high

    def uniform(self) -> torch.Tensor:
        """``(N,)`` float64, uniform in ``[0, 1)`` on a grid of ``2**-53``."""
        return self._next().double() * 2.0**-53


class _Crop:
    """Random crop of ``size`` out of the image padded by ``padding`` (left, top, right,
    bottom), done as two gathers with padded coordinates mapped back into the image."""

    draws = 2  # per image: top, left

    def __init__(self, size: tuple[int, int], padding: list[int], mode: str, fill: Any):
        if mode not in ("reflect", "edge", "symmetric", "constant"):
            raise _refuse(f"random crop with padding_mode {mode!r}")
        if not isinstance(fill, (int, float)):
            raise _refuse(f"random crop with fill {fill!r} (only one number)")
        self.size, self.mode, self.fill = size, mode, fill
        self.left, self.top, self.right, self.bottom = padding

    @staticmethod
    def _map(index: torch.Tensor, length: int, mode: str) -> torch.Tensor:
        """Padded coordinates → coordinates inside ``[0, length)`` (constant: clamped;
        the caller masks those outside)."""
        if mode == "reflect":
            index = index.abs()
            return torch.where(index >= length, 2 * (length - 1) - index, index)
        if mode == "symmetric":
            index = torch.where(index < 0, -index - 1, index)
            return torch.where(index >= length, 2 * length - 1 - index, index)
        return index.clamp(0, length - 1)

    def __call__(self, batch: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        n, channels, height, width = batch.shape
        out_h, out_w = self.size
        spare_h = height + self.top + self.bottom - out_h
        spare_w = width + self.left + self.right - out_w
        if spare_h < 0 or spare_w < 0:
            raise _refuse(f"random crop of {out_h}x{out_w} from {height}x{width} images padded "
                          f"by {self.left, self.top, self.right, self.bottom}")
        top = draws.integers(spare_h + 1).view(n, 1)
        left = draws.integers(spare_w + 1).view(n, 1)
        rows = top - self.top + torch.arange(out_h, device=batch.device)
        cols = left - self.left + torch.arange(out_w, device=batch.device)
        rows_in = self._map(rows, height, self.mode)
        cols_in = self._map(cols, width, self.mode)
        batch = batch.gather(2, rows_in.view(n, 1, out_h, 1).expand(n, channels, out_h, width))
        batch = batch.gather(3, cols_in.view(n, 1, 1, out_w).expand(n, channels, out_h, out_w))
        if self.mode == "constant" and (self.top or self.bottom or self.left or self.right):
            inside = (((rows >= 0) & (rows < height)).view(n, 1, out_h, 1)
                      & ((cols >= 0) & (cols < width)).view(n, 1, 1, out_w))
            batch = batch.masked_fill(~inside, self.fill)
        return batch


class _Flip:
    """Horizontal flip of each image with probability ``p``."""

    draws = 1

    def __init__(self, p: float):
        self.p = p

    def __call__(self, batch: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        flip = (draws.uniform() < self.p).view(-1, 1, 1, 1)
        return torch.where(flip, batch.flip(-1), batch)


class _Cutout:
    """:class:`~labkit.data.transforms.Cutout` of every image of a batch: one
    ``size`` x ``size`` square per image, its centre pixel drawn uniformly per image,
    clipped at the borders, set to 0."""

    draws = 2  # per image: the centre's row and column

    def __init__(self, size: int):
        self.size = size

    def __call__(self, batch: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        n, _, height, width = batch.shape
        top = draws.integers(height).view(n, 1) - self.size // 2
        left = draws.integers(width).view(n, 1) - self.size // 2
        rows = torch.arange(height, device=batch.device)
        cols = torch.arange(width, device=batch.device)
        in_rows = (rows >= top) & (rows < top + self.size)
        in_cols = (cols >= left) & (cols < left + self.size)
        square = in_rows.view(n, 1, height, 1) & in_cols.view(n, 1, 1, width)
        return batch.masked_fill(square, 0)


class _Deterministic:
    """A torchvision step that is elementwise and works on a batch as on one image."""

    draws = 0

    def __init__(self, step: Callable):
        self.step = step

    def __call__(self, batch: torch.Tensor, draws: SampleDraws) -> torch.Tensor:
        return self.step(batch)


_AT_LOAD = (v2.Resize, v2.CenterCrop)
_CONVERSIONS = (v2.ToImage, v2.ToPureTensor, v2.Identity)


def plan(transform: Callable) -> tuple[list[Callable], list[Callable]]:
    """Split a data set's per-image transform into steps done once per image at load and
    steps done per batch on the device (see the module docstring).

    Raises:
        UserError: a step that cannot be done batchwise, or a resize after a batch step.
    """
    steps = list(transform.transforms) if isinstance(transform, v2.Compose) else [transform]
    at_load: list[Callable] = []
    per_batch: list[Callable] = []
    for step in steps:
        if isinstance(step, _AT_LOAD):
            if per_batch:
                raise _refuse(f"{type(step).__name__} comes after {type(per_batch[0]).__name__}")
            at_load.append(step)
        elif isinstance(step, _CONVERSIONS):
            at_load.append(step)
        elif type(step) is v2.RandomCrop:
            if step.pad_if_needed:
                raise _refuse("random crop with pad_if_needed")
            padding = list(step.padding) if step.padding is not None else [0, 0, 0, 0]
            per_batch.append(_Crop(tuple(step.size), padding, step.padding_mode, step.fill))
        elif type(step) is v2.RandomHorizontalFlip:
            per_batch.append(_Flip(step.p))
        elif type(step) is Cutout:
            per_batch.append(_Cutout(step.size))
        elif isinstance(step, (v2.ToDtype, v2.Normalize)):
            per_batch.append(_Deterministic(step))
        else:
            raise _refuse(f"the data set's transform {type(step).__name__} cannot be applied "
                          f"to whole batches")
    return at_load, per_batch


class DeviceLoader:
    """The training split held on ``device``, batched and augmented there.

    Args:
        dataset: the training split (a :class:`SplitDataset`).
        batch_size: images per batch.
        generator: the run's data-order generator (consumed as :class:`SeededSampler`).
        device: where images, labels and augmentation live.
        drop_last: leave out a last incomplete batch.

    Raises:
        UserError: ``dataset`` is no built-in split, its transform cannot be done
            batchwise, or it does not fit in the device's free memory.
    """

    def __init__(self, dataset: Any, batch_size: int, generator: torch.Generator,
                 device: torch.device | str, drop_last: bool = False):
        if not isinstance(dataset, SplitDataset):
            raise _refuse(f"the training set is a {type(dataset).__name__}, not a data set's "
                          f"own training split (the method may wrap it)")
        if len(dataset) == 0:
            raise _refuse("the training split is empty")
        self.batch_size, self.generator, self.drop_last = batch_size, generator, drop_last
        self.start = 0  # samples of the next epoch to skip (a resume mid-epoch)
        self.device = torch.device(device)
        at_load, self.steps = plan(dataset.transform)
        images, labels = self._read(dataset, at_load)
        self._check_memory(images)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)

    @staticmethod
    def _read(dataset: SplitDataset, at_load: list[Callable]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the split through the at-load steps, stacked; its labels."""
        images, labels = [], []
        for index in dataset.indices:
            image, label = dataset.base[int(index)]
            for step in at_load:
                image = step(image)
            if not isinstance(image, torch.Tensor):
                raise _refuse(f"the data set yields {type(image).__name__} images that no "
                              f"conversion turns into tensors")
            images.append(image.as_subclass(torch.Tensor))
            labels.append(int(label))
        try:
            return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
        except RuntimeError:
            raise _refuse("the split's images differ in size before augmentation") from None

    def _check_memory(self, images: torch.Tensor) -> None:
        if self.device.type != "cuda":
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        needed = images.numel() * images.element_size()
        if needed > _MEMORY_SHARE * free:
            raise UserError(
                f"data_loader \"device\": the training split takes {needed / 2**30:.2f} GiB, "
                f"more than {_MEMORY_SHARE:.0%} of the {free / 2**30:.2f} GiB free on "
                f"{self.device}; set \"data_loader\": \"torch\" for data sets this large")

    @property
    def sampler(self) -> "DeviceLoader":
        """Itself: ``loader.sampler.start = k`` resumes an epoch on either loader."""
        return self

    def __len__(self) -> int:
        size = len(self.labels) - self.start
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        """One epoch's batches from sample :attr:`start` on (then reset to 0). The whole
        epoch's order and seeds are drawn either way, so the generator ends where an
        uninterrupted epoch leaves it."""
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader's worker base seed
        size = len(self.labels)
        order = torch.randperm(size, generator=self.generator)
        seeds = torch.randint(SEED_RANGE, (size,), generator=self.generator)
        batches = len(self)
        start, self.start = self.start, 0
        return self._batches(order[start:], seeds[start:], batches)

    def _batches(self, order: torch.Tensor, seeds: torch.Tensor,
                 batches: int) -> Iterator[list[torch.Tensor]]:
        order = order.to(self.device, non_blocking=True)
        # every draw of the epoch at once: a few vectorised operations instead of per batch
        words = sample_words(seeds.to(self.device, non_blocking=True),
                             sum(step.draws for step in self.steps))
        for b in range(batches):
            first = b * self.batch_size
            index = order[first:first + self.batch_size]
            images = self.images.index_select(0, index)
            labels = self.labels.index_select(0, index)
            draws = SampleDraws(words[first:first + self.batch_size])
            for step in self.steps:
                images = step(images, draws)
            yield [images, labels]


def device_loader(dataset: Any, batch_size: int, generator: torch.Generator,
                  device: torch.device | str, drop_last: bool = False) -> DeviceLoader:
    """The engine's entry point: a :class:`DeviceLoader` (see the module docstring)."""
    return DeviceLoader(dataset, batch_size, generator, device, drop_last)

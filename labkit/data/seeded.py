"""Training batches whose augmentation does not depend on the DataLoader's workers.

torchvision's random transforms draw from torch's global generator, which a DataLoader
worker seeds from its own base seed: the same run with 0 or 2 workers would see other
crops and flips, and train other weights. Here the sampler, in the main process, draws
each epoch's order and one seed per sample from the run's data-order generator (which
the checkpoint stores), and the dataset applies each batch's transforms under its first
sample's seed, in whatever process it runs. Any worker count then gives the same
batches, bit for bit, and the main process's generator (dropout, mixing) is never
touched by loading.

Only torch's generator is seeded: a transform drawing from Python's ``random`` or
NumPy's global state would still depend on the worker.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

SEED_RANGE = 2**62


class SeededSampler(Sampler):
    """Yields ``(index, seed)`` for every sample of a shuffled epoch.

    Args:
        size: number of samples.
        generator: the run's data-order generator; each epoch draws a permutation and
            ``size`` seeds from it, so its state after an epoch is all a resume needs.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.generator = generator
        self.start = 0  # samples of the epoch to skip (a resume mid-epoch); see __iter__

    def __len__(self) -> int:
        return self.size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The epoch's samples from position ``start`` on. The whole epoch's order and
        seeds are drawn either way, so the generator ends where an uninterrupted epoch
        leaves it; ``start`` is reset to 0 for the next epoch."""
        order = torch.randperm(self.size, generator=self.generator)
        seeds = torch.randint(SEED_RANGE, (self.size,), generator=self.generator)
        start, self.start = self.start, 0
        return zip(order[start:].tolist(), seeds[start:].tolist())


class SeededSamples(Dataset):
    """``dataset[index]`` computed with torch's generator seeded by the sample's seed.

    Indexed by what :class:`SeededSampler` yields; the caller's generator state is
    restored afterwards. A DataLoader fetches a whole batch in one process (the main
    one or a worker), through :meth:`__getitems__`: the batch is seeded once, by its
    first sample's seed, which keeps the cost of seeding off every sample while the
    batches stay the same for any number of workers.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        # the CPU generator alone: torch.manual_seed also seeds every accelerator, which
        # costs about a millisecond; transforms draw from the CPU one
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(keys[0][1])
        try:
            return [self.dataset[index] for index, _ in keys]
        finally:
            generator.set_state(state)


class ShardedBatches(Sampler):
    """This process's share of every training batch of a run on several processes.

    The global batches are those of a one-process run: ``batch_size`` consecutive
    samples of :class:`SeededSampler`'s order. Each is split into ``world`` contiguous
    shards and shard ``rank`` is yielded (a list of ``(index, seed)`` keys, for
    :class:`SeededSamples`). A last global batch too small to give every process two
    samples is dropped (BatchNorm cannot train on one), the one-process rule for
    ``world = 1``.
    """

    def __init__(self, sampler: SeededSampler, batch_size: int, rank: int, world: int):
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def _sizes(self) -> list[int]:
        n, b = self.sampler.size, self.batch_size
        sizes = [min(b, n - i) for i in range(0, n, b)]
        return [s for s in sizes if s >= 2 * self.world]

    def __len__(self) -> int:
        return len(self._sizes())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        keys = list(iter(self.sampler))
        for start, size in zip(range(0, len(keys), self.batch_size), self._sizes()):
            batch = keys[start:start + size]
            yield batch[size * self.rank // self.world:size * (self.rank + 1) // self.world]

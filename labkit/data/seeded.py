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

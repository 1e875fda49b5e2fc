"""Training batches whose augmentation depends on neither the DataLoader's workers nor
the batch layout.

torchvision's random transforms draw from torch's global generator, which a DataLoader
worker seeds from its own base seed: the same run with 0 or 2 workers would see other
crops and flips, and train other weights. Here the sampler, in the main process, draws
each epoch's order and one seed per sample from the run's data-order generator (which
the checkpoint stores), and the dataset applies each sample's transforms under that
sample's own seed, in whatever process it runs. A sample's augmentation is then a
function of the run's seed, the epoch and the sample alone — not of the worker count,
nor of where the sample sits in a batch, a micro-batch (``accumulate``) or a process's
shard (``nproc``) — and the main process's generator (dropout, mixing) is never touched
by loading.

Only torch's generator is seeded: a transform drawing from Python's ``random`` or
NumPy's global state would still depend on the worker.

:data:`AUGMENT_DRAWS` names this scheme; checkpoints record it, and a run whose
checkpoints were written under another scheme is not resumed (:func:`check_draws`).
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from labkit.core.errors import UserError

SEED_RANGE = 2**62
# the augmentation draw scheme that checkpoints record: every sample seeded on its own
# (earlier labkits recorded none: they seeded a batch by its first sample's seed)
AUGMENT_DRAWS = "per-sample"


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
    restored afterwards. Every sample is seeded on its own (about 2 µs: the CPU
    generator alone), so its draws do not depend on the batch that fetches it.
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
        try:
            samples = []
            for index, seed in keys:
                generator.manual_seed(seed)
                samples.append(self.dataset[index])
            return samples
        finally:
            generator.set_state(state)


def check_draws(state: dict[str, Any], directory: Any) -> None:
    """Refuse to resume from a checkpoint written under another augmentation draw scheme
    (:data:`AUGMENT_DRAWS`; an earlier labkit's checkpoints record none): the rest of the
    run would be augmented otherwise than its start, which no single labkit can
    reproduce.

    Raises:
        UserError: naming ``directory`` (the run's checkpoints) and the fix.
    """
    draws = state.get("augment_draws")
    if draws != AUGMENT_DRAWS:
        written = (f"under augmentation draws {draws!r}" if draws is not None
                   else "by an earlier labkit, whose augmentation draws were seeded per batch")
        raise UserError(f"{directory} holds checkpoints written {written}, not "
                        f"{AUGMENT_DRAWS} as this labkit draws them; "
                        f"the run cannot resume exactly: move the run's directory away "
                        f"and run again to train it from the start")


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

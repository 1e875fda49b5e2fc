"""Random augmentation independent of the batch layout (issue 23, item 3): every sample's
draws come from the run's seed, the epoch and the sample alone, so `accumulate` k trains
what one k times larger batch trains, with `crop` and `flip_crop`, on the per-image
DataLoader and on the device loader, and a process's shard is augmented as its part of
the global batch (`nproc` 2 against 1 end to end: tests/test_distributed.py); checkpoints
record the draw scheme and one written under another is never resumed."""
import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from labkit import engine
from labkit.core.errors import UserError
from labkit.data import DATASETS
from labkit.data.device_loader import device_loader, sample_words
from labkit.data.seeded import SeededSampler, SeededSamples, ShardedBatches
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import forget_last_epoch

# no BatchNorm, no dropout: the arithmetic of 2 x 32 and of 64 is the same up to rounding
# (seed 1: under some seeds a rounding difference lands on a ReLU's kink and grows to
# about 1e-3, e.g. seed 0 with flip_crop on the device loader)
BASE = {"model": "mlp_s", "epochs": 1, "seed": 1, "optimizer": {"name": "sgd", "lr": 0.05}}


def dataset(augment):
    return {"name": "digits", "augment": augment}


def first_images(augment, loader, batch_size, count=192, seed=3):
    """The first ``count`` training images of an epoch of digits under ``augment``, in
    batches of ``batch_size``, from the per-image DataLoader (``torch``) or the device
    loader."""
    train = DATASETS["digits"](augment=augment).train
    generator = torch.Generator().manual_seed(seed)
    if loader == "device":
        batches = device_loader(train, batch_size, generator, "cpu")
    else:
        batches = DataLoader(SeededSamples(train), batch_size=batch_size,
                             sampler=SeededSampler(len(train), generator))
    return torch.cat([images for images, _ in itertools.islice(batches, count // batch_size)])


@pytest.mark.parametrize("loader", ["torch", "device"])
@pytest.mark.parametrize("augment", ["crop", "flip_crop"])
def test_every_image_is_augmented_alike_in_batches_of_any_size(augment, loader):
    large = first_images(augment, loader, 64)
    assert torch.equal(first_images(augment, loader, 32), large)
    assert torch.equal(first_images(augment, loader, 96), large)
    # the augmentation does draw: another seed gives other images
    assert not torch.equal(first_images(augment, loader, 64, seed=4), large)


def splitmix64(seed, k):
    """Output ``k`` (from 1) of SplitMix64 seeded with ``seed``, top 53 bits, in Python."""
    z = (seed + k * 0x9E3779B97F4A7C15) % 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % 2**64
    return (z ^ (z >> 31)) >> 11


def test_the_device_loaders_draws_are_splitmix64_of_each_seed():
    # int64 arithmetic must wrap like unsigned 64-bit words (seeds up to 2**62 - 1)
    seeds = torch.cat([torch.randint(2**62, (200,), generator=torch.Generator().manual_seed(0)),
                       torch.tensor([0, 1, 2**62 - 1])])
    words = sample_words(seeds, 3)
    assert words.shape == (203, 3)
    assert words.tolist() == [[splitmix64(int(s), k) for k in (1, 2, 3)] for s in seeds]
    assert splitmix64(0, 1) == 0xE220A8397B1DCDAF >> 11  # SplitMix64's published first output


def test_a_process_shard_is_augmented_as_its_part_of_the_global_batch():
    train = DATASETS["digits"](augment="flip_crop").train

    def images(rank, world):
        sampler = SeededSampler(len(train), torch.Generator().manual_seed(3))
        loader = DataLoader(SeededSamples(train),
                            batch_sampler=ShardedBatches(sampler, 64, rank, world))
        return [images for images, _ in loader]

    whole, first, second = images(0, 1), images(0, 2), images(1, 2)
    for batch, a, b in zip(whole, first, second, strict=True):
        assert torch.equal(batch, torch.cat([a, b]))


def trained(registries, tmp_path, name, **overrides):
    (config,) = expand({**BASE, "logs_dir": str(tmp_path / name), **overrides}, registries)
    run = RunConfig(config, "L")
    assert engine.train(run, registries, progress=False) == "finished"
    return run, checkpoint.read(runinfo.final_checkpoint(run))


def max_change(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("augment, loader",
                         [("crop", "torch"), ("flip_crop", "torch"), ("flip_crop", "device")])
def test_accumulated_micro_batches_train_what_one_large_batch_trains(
        registries, tmp_path, augment, loader):
    # 8 steps of 64 samples either way; before, each micro-batch drew its own crops
    # and the weights differed by 0.01 or more
    fields = {"dataset": dataset(augment), "data_loader": loader, "steps": 8}
    _, large = trained(registries, tmp_path, "large", batch_size=64, **fields)
    _, micro = trained(registries, tmp_path, "micro", batch_size=32, accumulate=2, **fields)
    assert max_change(large["modules"]["model"], micro["modules"]["model"]) < 1e-6
    assert micro["history"][-1]["train-loss"] == pytest.approx(
        large["history"][-1]["train-loss"], rel=1e-6)


def test_a_checkpoint_of_another_draw_scheme_is_never_resumed(registries, tmp_path):
    run, _ = trained(registries, tmp_path, "old", dataset=dataset("crop"), epochs=2)
    forget_last_epoch(run.directory)
    ckpt_dir = run.directory / "checkpoints"
    state = checkpoint.read(checkpoint.checkpoint_path(ckpt_dir, 1))
    del state["augment_draws"]  # as a labkit that seeded per batch wrote it
    checkpoint.save(ckpt_dir, 1, state)
    with pytest.raises(UserError, match="by an earlier labkit.*move the run.s directory"):
        engine.train(run, registries, progress=False)
    assert runinfo.read_status(run.directory)["state"] == "failed"
    assert checkpoint.epochs_on_disk(ckpt_dir) == [1]  # nothing was deleted

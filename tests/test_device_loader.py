"""The device-resident training loader (issue 15, part 6): the DataLoader's sample order,
its batches where transforms are deterministic, valid and reproducible batch augmentation."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from labkit.core.errors import UserError
from labkit.data import DATASETS
from labkit.data.device_loader import device_loader
from labkit.data.seeded import SeededSampler, SeededSamples


def photo_folder(root, sizes=((10, 13), (12, 9), (11, 11))):
    """Three classes of small RGB photos of varying sizes (resized and centre-cropped
    at load), with pixel patterns that make every crop and flip distinguishable."""
    generator = torch.Generator().manual_seed(0)
    for c, name in enumerate(["ant", "bee", "cat"]):
        for i in range(7):
            w, h = sizes[(c + i) % len(sizes)]
            pixels = torch.randint(256, (h, w, 3), generator=generator, dtype=torch.uint8)
            path = root / "imagefolder" / "train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(path)
    return {"root": str(root), "resolution": 8, "eval_fraction": 0.2}


def bundles(tmp_path, augment):
    return {"digits": DATASETS["digits"](augment=augment, resolution=16),
            "folder": DATASETS["imagefolder"](augment=augment, **photo_folder(tmp_path))}


def torch_batches(dataset, batch_size, generator, drop_last=False):
    return DataLoader(SeededSamples(dataset), batch_size=batch_size, drop_last=drop_last,
                      sampler=SeededSampler(len(dataset), generator))


@pytest.mark.parametrize("name", ["digits", "folder"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_deterministic_transforms_give_the_dataloaders_batches(tmp_path, name, drop_last):
    data = bundles(tmp_path, "none")[name]
    batch = 5 if name == "folder" else 100
    mine, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    loader = device_loader(data.train, batch, mine, "cpu", drop_last=drop_last)
    reference = torch_batches(data.train, batch, theirs, drop_last)
    assert len(loader) == len(reference)
    for epoch in range(2):  # the generator carries over from epoch to epoch
        torch.manual_seed(epoch)
        expected = list(reference)
        global_after_reference = torch.random.get_rng_state()
        torch.manual_seed(epoch)
        got = list(loader)
        # the global generator (dropout, mixing) sees the same draws with either loader
        assert torch.equal(torch.random.get_rng_state(), global_after_reference)
        assert len(got) == len(expected)
        for (images, labels), (want_images, want_labels) in zip(got, expected):
            assert images.dtype == torch.float32 and labels.dtype == torch.int64
            assert torch.equal(labels, want_labels)
            assert torch.equal(images, want_images)  # bit for bit, normalisation included
        assert torch.equal(mine.get_state(), theirs.get_state())


def test_a_resumed_epoch_matches_the_resumed_dataloader():
    data = DATASETS["digits"](augment="none")
    mine, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loader = device_loader(data.train, 64, mine, "cpu")
    sampler = SeededSampler(len(data.train), theirs)
    reference = DataLoader(SeededSamples(data.train), batch_size=64, sampler=sampler)
    loader.sampler.start = sampler.start = 7 * 64  # as the engine resumes either loader
    assert len(loader) == len(reference) == -(-(len(data.train) - 7 * 64) // 64)
    got, expected = list(loader), list(reference)
    assert len(got) == len(expected)
    for (images, labels), (want_images, want_labels) in zip(got, expected):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
    assert torch.equal(mine.get_state(), theirs.get_state())


def with_sources(data, seed=3, batch=4):
    """One epoch of the device loader on ``data.train`` (seeded with ``seed``), image by
    image: ``(batch number, position in the batch, augmented image, its source as the
    plain split gives it (normalised, not augmented), its position in the split)``, each
    label checked against the source's."""
    loader = device_loader(data.train, batch, torch.Generator().manual_seed(seed), "cpu")
    # positions of the epoch's samples, as SeededSampler orders them
    positions = [index for index, _ in
                 SeededSampler(len(data.train), torch.Generator().manual_seed(seed))]
    for b, (images, labels) in enumerate(loader):
        for k, image in enumerate(images):
            position = positions[batch * b + k]
            source, label = data.train_plain[position]
            assert int(labels[k]) == label
            yield b, k, image, source, position


@pytest.mark.parametrize("name", ["digits", "folder"])
def test_every_augmented_image_is_a_crop_or_flipped_crop_of_its_source(tmp_path, name):
    data = bundles(tmp_path, "flip_crop")[name]
    pad, size = data.resolution // 8, data.resolution
    offsets, flips = set(), set()
    for b, k, image, source, position in with_sources(data):
        padded = F.pad(source[None], (pad,) * 4, mode="reflect")[0]
        matches = [(top, left, flip)
                   for top in range(2 * pad + 1) for left in range(2 * pad + 1)
                   for flip in (False, True)
                   if torch.allclose(image, (lambda c: c.flip(-1) if flip else c)(
                       padded[:, top:top + size, left:left + size]), atol=1e-6)]
        assert matches, f"batch {b} image {k} is no crop of sample {position}"
        offsets.add(matches[0][:2])
        flips.update(flip for *_, flip in matches)
    # the augmentation does something: several offsets, both flipped and not
    assert len(offsets) > 3 and flips == {False, True}


def test_augmented_batches_are_reproducible_and_resumable(tmp_path):
    data = DATASETS["digits"](augment="flip_crop", resolution=16)

    def epochs(seed, n=2):
        loader = device_loader(data.train, 64, torch.Generator().manual_seed(seed), "cpu")
        return [list(loader) for _ in range(n)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    for epoch, epoch_again in zip(first, again):
        for (a, la), (b, lb) in zip(epoch, epoch_again):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(first[0][0][0], other[0][0][0])
    assert not torch.equal(first[0][0][0], first[1][0][0])  # each epoch draws anew

    # resuming an epoch after 5 batches from the generator state at the epoch's start
    generator = torch.Generator().manual_seed(1)
    loader = device_loader(data.train, 64, generator, "cpu")
    list(loader)  # epoch 1
    state = generator.get_state()
    list(loader)
    after_whole = generator.get_state()
    generator.set_state(state)
    loader.sampler.start = 5 * 64
    assert len(loader) == len(first[1]) - 5
    tail = list(loader)
    assert len(tail) == len(first[1]) - 5
    for (a, la), (b, lb) in zip(tail, first[1][5:]):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(generator.get_state(), after_whole)  # the whole epoch was drawn
    assert loader.start == 0 and len(loader) == len(first[1])  # the next epoch is whole


def test_transforms_that_cannot_be_batched_are_refused(tmp_path):
    data = DATASETS["imagefolder"](augment="imagenet", **photo_folder(tmp_path))
    with pytest.raises(UserError, match="RandomResizedCrop.*flip_crop.*\"torch\""):
        device_loader(data.train, 4, torch.Generator(), "cpu")
    plain = DATASETS["digits"]()
    wrapped = torch.utils.data.Subset(plain.train, range(10))
    with pytest.raises(UserError, match="Subset.*data_loader"):
        device_loader(wrapped, 4, torch.Generator(), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_batches_live_there_and_match_the_cpu_ones():
    data = DATASETS["digits"](augment="flip_crop", resolution=16)
    on_gpu = list(device_loader(data.train, 64, torch.Generator().manual_seed(4), "cuda"))
    on_cpu = list(device_loader(data.train, 64, torch.Generator().manual_seed(4), "cpu"))
    for (a, la), (b, lb) in zip(on_gpu, on_cpu):
        assert a.device.type == "cuda" and la.device.type == "cuda"
        assert torch.equal(la.cpu(), lb)
        assert torch.allclose(a.cpu(), b, atol=1e-6)


def normaliser(data):
    """The Normalize step of the split's transform (its fill is black before it)."""
    from torchvision.transforms import v2
    return next(step for step in data.train.transform.transforms if isinstance(step, v2.Normalize))


def translations(source, shift, black):
    """Every shift by -shift..shift pixels in x and y of ``source``, zero (black) filled,
    flipped or not: ``{(dy, dx, flip): image}``."""
    channels, height, width = source.shape
    padded = black.view(-1, 1, 1).expand(channels, height + 2 * shift, width + 2 * shift).clone()
    padded[:, shift:shift + height, shift:shift + width] = source
    return {(top - shift, left - shift, flip): (lambda c: c.flip(-1) if flip else c)(
                padded[:, top:top + height, left:left + width])
            for top in range(2 * shift + 1) for left in range(2 * shift + 1)
            for flip in (False, True)}


def cutout_squares(height, width, side):
    """Every zeroed region cutout can make: a side x side square at each centre pixel,
    clipped at the borders; ``(H * W, H, W)`` booleans."""
    rows, cols = torch.arange(height), torch.arange(width)
    masks = []
    for cy in range(height):
        for cx in range(width):
            top, left = cy - side // 2, cx - side // 2
            masks.append(((rows >= top) & (rows < top + side))[:, None]
                         & ((cols >= left) & (cols < left + side))[None, :])
    return torch.stack(masks)


def flip_crops(source, pad):
    """Every flip_crop of ``source`` (reflect padding ``pad``): ``{(top, left, flip): image}``."""
    size = source.shape[-1]
    padded = F.pad(source[None], (pad,) * 4, mode="reflect")[0]
    return {(top, left, flip): (lambda c: c.flip(-1) if flip else c)(
                padded[:, top:top + size, left:left + size])
            for top in range(2 * pad + 1) for left in range(2 * pad + 1) for flip in (False, True)}


def cutout_match(image, candidates, squares):
    """``(key, square index)`` of the first candidate that ``image`` equals outside one
    cutout square, with that square exactly 0 in every channel; ``None`` if none."""
    for key, candidate in candidates.items():
        differs = ~torch.isclose(image, candidate, atol=1e-6).all(0)
        hit = (squares == differs).all((1, 2)).nonzero()
        if len(hit) and bool((image[:, differs] == 0).all()):
            return key, int(hit[0])
    return None


@pytest.mark.parametrize("name", ["digits", "folder"])
def test_every_flip_translate_image_is_a_zero_filled_shift_of_its_source(tmp_path, name):
    data = bundles(tmp_path, "flip_translate")[name]
    size = data.resolution
    shift = max(1, size // 16)  # the documented largest shift
    normalize = normaliser(data)
    black = -torch.tensor(normalize.mean) / torch.tensor(normalize.std)
    shifts, flips = set(), set()
    for b, k, image, source, _ in with_sources(data):
        matches = [key for key, shifted in translations(source, shift, black).items()
                   if torch.allclose(image, shifted, atol=1e-5)]
        assert matches, f"batch {b} image {k} is no (flipped) translation of its source"
        shifts.update(key[:2] for key in matches)
        flips.update(flip for *_, flip in matches)
    # with many images every shift in range is drawn (a narrower range would fail here, a
    # wider one above); the 17 photos show several
    every = {(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)}
    assert shifts == every if len(data.train) > 100 else len(shifts) > 3
    assert flips == {False, True}


@pytest.mark.parametrize("name", ["digits", "folder"])
def test_every_flip_crop_cutout_image_has_one_zeroed_square_over_a_flip_crop(tmp_path, name):
    data = bundles(tmp_path, "flip_crop_cutout")[name]
    size, pad = data.resolution, data.resolution // 8
    squares = cutout_squares(size, size, size // 2)
    used, flips = set(), set()
    for b, k, image, source, _ in with_sources(data):
        match = cutout_match(image, flip_crops(source, pad), squares)
        assert match, f"batch {b} image {k}: no cutout square over a flip_crop of its source"
        used.add(match[1])
        flips.add(match[0][2])
    areas = {int(squares[i].sum()) for i in used}
    # many centres, whole squares and squares clipped at a border, flipped and not
    assert len(used) > 10 and (size // 2) ** 2 in areas and min(areas) < (size // 2) ** 2
    assert flips == {False, True}


@pytest.mark.parametrize("augment", ["flip_translate", "flip_crop_cutout"])
def test_new_presets_are_reproducible_per_seed_on_the_device_loader(augment):
    data = DATASETS["digits"](augment=augment, resolution=16)

    def epoch(seed):
        return list(device_loader(data.train, 64, torch.Generator().manual_seed(seed), "cpu"))

    first, again, other = epoch(1), epoch(1), epoch(2)
    for (a, la), (b, lb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(first[0][0], other[0][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("augment", ["flip_translate", "flip_crop_cutout"])
def test_on_cuda_the_new_presets_match_the_cpu_batches(augment):
    data = DATASETS["digits"](augment=augment, resolution=16)
    on_gpu = list(device_loader(data.train, 64, torch.Generator().manual_seed(4), "cuda"))
    on_cpu = list(device_loader(data.train, 64, torch.Generator().manual_seed(4), "cpu"))
    for (a, la), (b, lb) in zip(on_gpu, on_cpu):
        assert a.device.type == "cuda"
        assert torch.equal(la.cpu(), lb) and torch.allclose(a.cpu(), b, atol=1e-6)

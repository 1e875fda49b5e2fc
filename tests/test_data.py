"""Built-in datasets, loaded from real-format files written to tmp_path (no network)."""
import hashlib
import importlib
import inspect
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader
from torchvision import datasets

from labkit.core.errors import DatasetNotFound, UserError
from labkit.data import DATASETS, DataBundle
from labkit.data.digits import DIGITS_MEAN, DIGITS_STD
from labkit.data.splits import split_indices, stratified_choice

# ---------------------------------------------------------------- registry


def test_every_factory_has_annotated_defaulted_keyword_params():
    shared = {"root", "download", "resolution", "augment", "normalize", "eval_fraction", "split_seed", "subset"}
    for name, factory in DATASETS.items():
        params = inspect.signature(factory).parameters
        assert shared <= set(params), name
        for param in params.values():
            assert param.annotation is not inspect.Parameter.empty, (name, param.name)
            assert param.default is not inspect.Parameter.empty, (name, param.name)
            # Real type objects, not strings: the registry builds a pydantic model from them.
            assert not isinstance(param.annotation, str), (name, param.name)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def sk_digits():
    raw = load_digits()
    return raw.images / 16.0, raw.target


@pytest.fixture(scope="module")
def digits_bundle() -> DataBundle:
    return DATASETS["digits"]()


def test_digits_shapes_and_metadata(digits_bundle):
    b = digits_bundle
    assert (b.num_classes, b.in_channels, b.resolution) == (10, 1, 8)
    assert b.info["name"] == "digits" and b.info["root"] is None
    assert b.info["classes"] == [str(i) for i in range(10)]
    assert len(b.train) + len(b.evals["eval"]) == 1797
    assert len(b.evals["eval"]) == round(0.2 * 1797)
    image, label = b.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int)
    x, y = next(iter(DataLoader(b.train, batch_size=64)))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.int64


def test_digits_items_match_sklearn_with_normalisation(digits_bundle, sk_digits):
    images, labels = sk_digits
    for split in (digits_bundle.train, digits_bundle.evals["eval"]):
        for i in (0, 7, len(split) - 1):
            image, label = split[i]
            source = split.indices[i]
            expected = (images[source] - DIGITS_MEAN[0]) / DIGITS_STD[0]
            np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)
            assert label == labels[source]


def test_digits_are_read_bit_for_bit_as_sklearn_reads_them_without_importing_it(monkeypatch):
    raw = load_digits()
    read = subprocess.run(
        [sys.executable, "-c", "import importlib, sys; "
         "images, target, _ = importlib.import_module('labkit.data.digits')._read(); "
         "sys.stdout.buffer.write(images.tobytes() + "
         "target.tobytes()); assert 'sklearn' not in sys.modules"],
        capture_output=True, check=True).stdout
    expected = (raw.images.astype(np.float32) / 16.0).tobytes() + raw.target.astype(np.int64).tobytes()
    assert read == expected
    # where the CSV is not found, scikit-learn's own loader, to the same arrays
    digits_module = importlib.import_module("labkit.data.digits")  # labkit.data.digits is the factory
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)
    digits_module._read.cache_clear()
    try:
        images, target, classes = digits_module._read()
    finally:
        digits_module._read.cache_clear()
    assert images.tobytes() + target.tobytes() == expected and classes == [str(i) for i in range(10)]


def test_digits_normalisation_constants_match_data(sk_digits):
    images, _ = sk_digits
    assert images.mean() == pytest.approx(DIGITS_MEAN[0], abs=1e-3)
    assert images.std() == pytest.approx(DIGITS_STD[0], abs=1e-3)


def test_digits_split_is_disjoint_complete_stratified_and_deterministic(digits_bundle, sk_digits):
    _, labels = sk_digits
    train_idx = digits_bundle.train.indices
    eval_idx = digits_bundle.evals["eval"].indices
    assert not set(train_idx) & set(eval_idx)
    assert sorted([*train_idx, *eval_idx]) == list(range(1797))
    class_counts = np.bincount(labels)
    eval_counts = np.bincount(labels[eval_idx], minlength=10)
    assert np.all(np.abs(eval_counts - 0.2 * class_counts) < 1)

    again = DATASETS["digits"]()
    np.testing.assert_array_equal(again.evals["eval"].indices, eval_idx)
    np.testing.assert_array_equal(again.train_plain.indices, train_idx)
    other_seed = DATASETS["digits"](split_seed=1)
    assert not np.array_equal(other_seed.evals["eval"].indices, eval_idx)


def test_split_is_pure_function_of_labels_fraction_seed():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    kept, held = split_indices(labels, 0.1, seed=5)
    assert len(held) == 10 and np.bincount(labels[held]).tolist() == [5, 3, 2]
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    kept2, held2 = split_indices(labels.copy(), 0.1, seed=5)
    assert np.array_equal(held, held2) and np.array_equal(kept, kept2)
    # Largest-remainder quotas add up to exactly n even when shares are fractional.
    assert len(stratified_choice(labels, 7, seed=0)) == 7


def test_digits_eval_fraction_changes_split_size():
    b = DATASETS["digits"](eval_fraction=0.5)
    assert len(b.evals["eval"]) == round(0.5 * 1797)
    assert len(b.train) == 1797 - round(0.5 * 1797)


def test_digits_subset_is_stratified_and_taken_from_train(sk_digits):
    _, labels = sk_digits
    b = DATASETS["digits"](subset=100)
    assert len(b.train) == len(b.train_plain) == 100
    np.testing.assert_array_equal(b.train.indices, b.train_plain.indices)
    assert np.bincount(labels[b.train.indices], minlength=10).tolist() == [10] * 10
    full = DATASETS["digits"]()
    assert set(b.train.indices) <= set(full.train.indices)
    np.testing.assert_array_equal(b.evals["eval"].indices, full.evals["eval"].indices)


def test_digits_resolution_resizes():
    b = DATASETS["digits"](resolution=16, augment="imagenet")
    assert b.resolution == 16
    assert b.train[0][0].shape == (1, 16, 16)
    assert b.evals["eval"][0][0].shape == (1, 16, 16)
    assert b.train_plain[0][0].shape == (1, 16, 16)


def test_digits_flip_crop_augments_only_train(digits_bundle):
    b = DATASETS["digits"](augment="flip_crop")
    torch.manual_seed(0)
    draws = [b.train[3][0] for _ in range(10)]
    plain = b.train_plain[3][0]
    assert all(d.shape == (1, 8, 8) for d in draws)
    assert any(not torch.equal(d, plain) for d in draws)
    assert len({d.numpy().tobytes() for d in draws}) > 1
    # train_plain and evals equal the unaugmented bundle's, on every access.
    assert torch.equal(plain, digits_bundle.train_plain[3][0])
    assert torch.equal(b.train_plain[3][0], plain)
    for i in (0, 50):
        assert torch.equal(b.evals["eval"][i][0], digits_bundle.evals["eval"][i][0])


def test_unknown_augment_and_bad_options_are_user_errors():
    with pytest.raises(UserError, match="flip_crop") as error:
        DATASETS["digits"](augment="mixup")
    assert "mixup" in str(error.value)
    with pytest.raises(UserError, match="eval_fraction"):
        DATASETS["digits"](eval_fraction=1.5)
    with pytest.raises(UserError, match="eval_fraction"):
        DATASETS["digits"](eval_fraction=0.0)


# ---------------------------------------------------------------- CIFAR


def _cifar_image(k: int, label: int) -> np.ndarray:
    """Row of 3072 uint8 in CIFAR's order (R plane, G plane, B plane; each 32x32 row-major)."""
    planes = np.zeros((3, 32, 32), dtype=np.uint8)
    planes[0], planes[1], planes[2] = k, 2 * label, 255 - k
    planes[0, 0, 1] = 255  # marker: row 0, column 1 of the red plane
    return planes.reshape(-1)


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are Python 2 pickles


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar(base, batches: dict[str, list[int]], label_key: str, meta_name: str, meta: dict):
    """Write each batch file with images k = 0..n-1 of the given labels."""
    base.mkdir(parents=True)
    for name, labels in batches.items():
        data = np.stack([_cifar_image(k, y) for k, y in enumerate(labels)])
        _write_pickle(base / name, {"data": data, label_key: labels, "batch_label": name})
    _write_pickle(base / meta_name, meta)


def _trust_written_files(monkeypatch, cls, base):
    # torchvision only accepts CIFAR files whose md5 matches the published archive,
    # which synthetic files never do. Pointing the class's checksum table at the md5
    # of the files we wrote keeps its real integrity check running (a corrupted file
    # would still fail) and touches only this test's class attributes.
    monkeypatch.setattr(cls, "train_list", [[n, _md5(base / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(base / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(base / cls.meta["filename"])})


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def cifar10_root(tmp_path):
    base = tmp_path / "cifar10" / "cifar-10-batches-py"
    batches = {f"data_batch_{b}": [(b + k) % 10 for k in range(6)] for b in range(1, 6)}
    batches["test_batch"] = [k % 10 for k in range(10)]
    _write_cifar(base, batches, "labels", "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    return tmp_path, base


def test_cifar10_loads_real_format_with_aligned_labels(cifar10_root, monkeypatch):
    root, base = cifar10_root
    _trust_written_files(monkeypatch, datasets.CIFAR10, base)
    b = DATASETS["cifar10"](root=str(root), normalize=False)
    assert (b.num_classes, b.in_channels, b.resolution) == (10, 3, 32)
    assert b.info["classes"] == CIFAR10_NAMES and b.info["root"] == str(root / "cifar10")
    assert len(b.train) == 30 and len(b.evals["eval"]) == 10 and set(b.evals) == {"eval"}
    # Train items are the batches in file order: batch b, image k -> position 6 * (b - 1) + k.
    for batch, k in [(1, 0), (3, 4), (5, 5)]:
        image, label = b.train[6 * (batch - 1) + k]
        assert label == (batch + k) % 10
        assert image.shape == (3, 32, 32)
        assert image[0, 5, 5].item() == pytest.approx(k / 255)
        assert image[1, 5, 5].item() == pytest.approx(2 * label / 255)
        assert image[2, 5, 5].item() == pytest.approx((255 - k) / 255)
        assert image[0, 0, 1].item() == 1.0 and image[0, 1, 0].item() == pytest.approx(k / 255)
    image, label = b.evals["eval"][7]
    assert label == 7 and image[1, 0, 0].item() == pytest.approx(14 / 255)


def test_cifar10_normalises_resizes_and_holds_out_val(cifar10_root, monkeypatch):
    root, base = cifar10_root
    _trust_written_files(monkeypatch, datasets.CIFAR10, base)
    b = DATASETS["cifar10"](root=str(root), eval_fraction=0.2, resolution=16, augment="flip_crop")
    assert set(b.evals) == {"eval", "val"}
    assert len(b.evals["val"]) == 6 and len(b.train) == 24 and len(b.evals["eval"]) == 10
    assert not set(b.evals["val"].indices) & set(b.train.indices)
    assert b.train[0][0].shape == b.evals["val"][0][0].shape == (3, 16, 16)
    image, _ = b.train_plain[0]
    k = int(b.train_plain.indices[0]) % 6
    mean, std = b.info["mean"], b.info["std"]
    assert image[2, 8, 8].item() == pytest.approx(((255 - k) / 255 - mean[2]) / std[2], abs=1e-4)


def test_cifar10_with_wrong_checksums_is_dataset_not_found(cifar10_root):
    root, base = cifar10_root  # files present, but not the published ones
    with pytest.raises(DatasetNotFound, match="corrupted") as error:
        DATASETS["cifar10"](root=str(root))
    assert str(base) in str(error.value)


def test_cifar100_loads_fine_labels(tmp_path, monkeypatch):
    base = tmp_path / "cifar100" / "cifar-100-python"
    names = [f"class{i:02d}" for i in range(100)]
    batches = {"train": [k * 7 % 100 for k in range(12)], "test": [99, 0, 42]}
    _write_cifar(base, batches, "fine_labels", "meta", {"fine_label_names": names, "coarse_label_names": []})
    _trust_written_files(monkeypatch, datasets.CIFAR100, base)
    b = DATASETS["cifar100"](root=str(tmp_path), normalize=False)
    assert b.num_classes == 100 and b.info["classes"] == names
    image, label = b.train[5]
    assert label == 35 and image[1, 3, 3].item() == pytest.approx(70 / 255)
    assert [b.evals["eval"][i][1] for i in range(3)] == [99, 0, 42]


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def _write_idx(path, array: np.ndarray):
    """IDX file: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(raw_dir, n_train: int, n_test: int):
    raw_dir.mkdir(parents=True)
    for prefix, n, offset in [("train", n_train, 0), ("t10k", n_test, 100)]:
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:] = (offset + np.arange(n))[:, None, None]
        images[:, 0, 1] = 255
        _write_idx(raw_dir / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw_dir / f"{prefix}-labels-idx1-ubyte", (offset + np.arange(n)) % 10)


@pytest.mark.parametrize("name,folder,mean,std", [("mnist", "MNIST", 0.1307, 0.3081), ("fashionmnist", "FashionMNIST", 0.2860, 0.3530)])
def test_mnist_like_idx_files(tmp_path, name, folder, mean, std):
    _write_mnist(tmp_path / name / folder / "raw", n_train=30, n_test=10)
    b = DATASETS[name](root=str(tmp_path), normalize=False)
    assert (b.num_classes, b.in_channels, b.resolution) == (10, 1, 28)
    assert len(b.train) == 30 and len(b.evals["eval"]) == 10
    image, label = b.train[13]
    assert label == 3 and image.shape == (1, 28, 28)
    assert image[0, 9, 9].item() == pytest.approx(13 / 255)
    assert image[0, 0, 1].item() == 1.0 and image[0, 1, 0].item() == pytest.approx(13 / 255)
    image, label = b.evals["eval"][4]
    assert label == 4 and image[0, 9, 9].item() == pytest.approx(104 / 255)

    b = DATASETS[name](root=str(tmp_path), eval_fraction=0.2, resolution=32)
    assert len(b.train) == 24 and len(b.evals["val"]) == 6
    assert sorted([*b.train.indices, *b.evals["val"].indices]) == list(range(30))
    image, _ = b.evals["eval"][0]
    assert image.shape == (1, 32, 32)
    assert image[0, 16, 16].item() == pytest.approx((100 / 255 - mean) / std, abs=1e-4)


# ---------------------------------------------------------------- image folders

COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}


def _write_png(path, colour, size=(14, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _colour_of(image: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in (image.mean(dim=(1, 2)) * 255).tolist())


def test_imagefolder_train_and_val_with_missing_val_class(tmp_path):
    for name, colour in COLOURS.items():
        for i in range(4):
            _write_png(tmp_path / "shapes" / "train" / name / f"{i}.png", colour)
    for name in ("ant", "cat"):  # no "bee" in val: labels must still follow train's classes
        _write_png(tmp_path / "shapes" / "val" / name / "v.png", COLOURS[name])
    b = DATASETS["imagefolder"](root=str(tmp_path), folder="shapes", resolution=8, normalize=False)
    assert b.info["classes"] == ["ant", "bee", "cat"] and b.num_classes == 3 and b.in_channels == 3
    assert len(b.train) == 12 and len(b.evals["eval"]) == 2
    for split in (b.train, b.evals["eval"]):
        for i in range(len(split)):
            image, label = split[i]
            assert image.shape == (3, 8, 8)  # 14x10 PNG -> shorter side 8 -> centre crop
            assert _colour_of(image) == COLOURS[b.info["classes"][label]]
    assert [b.evals["eval"][i][1] for i in range(2)] == [0, 2]


def test_imagefolder_without_val_needs_and_uses_seeded_split(tmp_path):
    for name, colour in COLOURS.items():
        for i in range(4):
            _write_png(tmp_path / "imagefolder" / "train" / name / f"{i}.png", colour)
    with pytest.raises(UserError, match="eval_fraction"):
        DATASETS["imagefolder"](root=str(tmp_path), resolution=8)
    b = DATASETS["imagefolder"](root=str(tmp_path), resolution=8, eval_fraction=0.25, augment="imagenet")
    assert len(b.evals["eval"]) == 3 and len(b.train) == 9
    assert sorted(b.evals["eval"][i][1] for i in range(3)) == [0, 1, 2]
    assert b.train[0][0].shape == (3, 8, 8)


def test_imagefolder_val_with_unknown_class_is_user_error(tmp_path):
    _write_png(tmp_path / "imagefolder" / "train" / "ant" / "0.png", COLOURS["ant"])
    _write_png(tmp_path / "imagefolder" / "val" / "wasp" / "0.png", COLOURS["ant"])
    with pytest.raises(UserError, match="wasp"):
        DATASETS["imagefolder"](root=str(tmp_path))


def test_tinyimagenet_official_val_layout(tmp_path):
    base = tmp_path / "tinyimagenet"
    wnids = {"n01443537": (200, 30, 30), "n01629819": (30, 200, 30)}
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid, colour in wnids.items():
        for i in range(3):
            _write_png(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, size=(64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    val_labels = ["n01629819", "n01443537", "n01629819"]
    for i, wnid in enumerate(val_labels):
        _write_png(base / "val" / "images" / f"val_{i}.JPEG", wnids[wnid], size=(64, 64))
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n" for i, wnid in enumerate(val_labels))
    )
    b = DATASETS["tinyimagenet"](root=str(tmp_path), normalize=False)
    assert b.info["classes"] == sorted(wnids) and b.resolution == 64
    assert len(b.train) == 6 and len(b.evals["eval"]) == 3
    for i, wnid in enumerate(val_labels):
        image, label = b.evals["eval"][i]
        assert image.shape == (3, 64, 64)
        assert label == sorted(wnids).index(wnid)
        assert all(abs(a - e) <= 3 for a, e in zip(_colour_of(image), wnids[wnid]))  # JPEG is lossy


# ---------------------------------------------------------------- missing data


def test_missing_cifar_names_path_and_download(tmp_path):
    with pytest.raises(DatasetNotFound) as error:
        DATASETS["cifar10"](root=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in message
    assert '"download": true' in message and "data_batch_1" in message and "cifar-10-python.tar.gz" in message


def test_missing_mnist_uses_labkit_data_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFound) as error:
        DATASETS["mnist"]()
    message = str(error.value)
    assert str(tmp_path / "mnist" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and '"download": true' in message


def test_missing_image_folder_names_layout(tmp_path):
    with pytest.raises(DatasetNotFound) as error:
        DATASETS["tinyimagenet"](root=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "tinyimagenet") in message
    assert "train/<class>" in message and "tiny-imagenet-200.zip" in message and "download" in message


def test_bad_option_fails_before_reading_files(tmp_path):
    with pytest.raises(UserError, match="Unknown augmentation") as error:
        DATASETS["imagenet"](root=str(tmp_path), augment="autoaugment")
    assert not isinstance(error.value, DatasetNotFound)


# ---------------------------------------------------------------- per-image presets


def _cutout_regions(size, side):
    """Every region cutout can zero: a side x side square at each centre pixel, clipped."""
    idx = torch.arange(size)
    spans = [(idx >= c - side // 2) & (idx < c - side // 2 + side) for c in range(size)]
    return torch.stack([r[:, None] & c[None, :] for r in spans for c in spans])


@pytest.mark.parametrize("augment", ["flip_translate", "flip_crop_cutout"])
def test_per_image_flip_translate_and_flip_crop_cutout_are_valid_and_seeded(augment):
    b = DATASETS["digits"](augment=augment, resolution=16)
    size = b.resolution
    black = ((0 - torch.tensor(DIGITS_MEAN)) / torch.tensor(DIGITS_STD)).view(-1, 1, 1)
    if augment == "flip_translate":  # zero (black) fill, shifts up to max(1, size // 16)
        pad = max(1, size // 16)
        regions = torch.zeros(1, size, size, dtype=torch.bool)  # nothing cut out
    else:  # flip_crop's reflect padding, then one square of side size // 2
        pad = size // 8
        regions = _cutout_regions(size, size // 2)
    seen_shifts, seen_regions, seen_flips = set(), set(), set()
    for i in range(0, 400, 4):
        torch.manual_seed(i)
        image = b.train[i][0]
        torch.manual_seed(i)
        assert torch.equal(b.train[i][0], image)  # a fixed seed redraws the same image
        plain = b.train_plain[i][0]
        if augment == "flip_translate":
            padded = black.expand(1, size + 2 * pad, size + 2 * pad).clone()
            padded[:, pad:pad + size, pad:pad + size] = plain
        else:
            padded = torch.nn.functional.pad(plain[None], (pad,) * 4, mode="reflect")[0]
        found = False
        for top in range(2 * pad + 1):
            for left in range(2 * pad + 1):
                for flip in (False, True):
                    crop = padded[:, top:top + size, left:left + size]
                    crop = crop.flip(-1) if flip else crop
                    differs = ~torch.isclose(image, crop, atol=1e-5).all(0)
                    hit = (regions == differs).all((1, 2)).nonzero()
                    if len(hit) and bool((image[:, differs] == 0).all()):
                        found = True
                        seen_shifts.add((top, left))
                        seen_flips.add(flip)
                        seen_regions.add(int(hit[0]))
        assert found, f"train[{i}] is no valid {augment} of train_plain[{i}]"
    assert len(seen_shifts) == (2 * pad + 1) ** 2 and seen_flips == {False, True}
    if augment == "flip_crop_cutout":
        areas = {int(regions[r].sum()) for r in seen_regions}
        assert len(seen_regions) > 10 and (size // 2) ** 2 in areas and min(areas) < (size // 2) ** 2


def test_new_presets_are_listed_in_the_unknown_preset_message():
    with pytest.raises(UserError, match="flip_translate.*flip_crop_cutout"):
        DATASETS["digits"](augment="cutout")

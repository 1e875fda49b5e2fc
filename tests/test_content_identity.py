"""Inputs that change numbers are identified or verified by their content (issue 23):
a folder data set by the bytes of every file torchvision's loader reads, found by the
loader's own walk (symbolic links followed), with digests cached by the files' stat;
a torch hub weights file by the hash in its name, checked as torch's hub checks a
download, at plan time."""
import hashlib
import json
import os
import time

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.datasets import ImageFolder

from labkit.cli import cli
from labkit.core.errors import UserError
from labkit.models.torchvision_models import check_hub_file, enum_weights_path
from labkit.spec import expand
from labkit.store.file_digests import DIGESTS
from labkit.store.identity import RunConfig

COLOURS = {"a": (220, 30, 30), "b": (30, 30, 220)}
TINY = {"model": "cnn_xs", "epochs": 3, "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.01}}
PAST = time.time() - 3600  # older than any racy window: digests of such files are cached


def write_bmps(folder, per_class, classes=COLOURS):
    """Noisy one-colour 8x8 BMPs (all of one byte size), ``<folder>/train/<class>/<i>.bmp``."""
    for name in classes:
        for i in range(per_class):
            path = folder / "train" / name / f"{i}.bmp"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = tuple(max(0, c - 11 * i) for c in COLOURS[name])
            Image.new("RGB", (8, 8), colour).save(path)
            os.utime(path, (PAST, PAST))


def swap(x, y):
    """Exchange the bytes of two files (the same names, sizes and folders stay)."""
    data_x, data_y = x.read_bytes(), y.read_bytes()
    x.write_bytes(data_y)
    y.write_bytes(data_x)


def dataset(root, folder="imagefolder"):
    return {"name": "imagefolder", "root": str(root), "folder": folder, "resolution": 8,
            "eval_fraction": 0.25}


def run_of(registries, root, folder="imagefolder"):
    (config,) = expand({**TINY, "dataset": dataset(root, folder)}, registries)
    return RunConfig(config, "C")


def cli_out(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output.strip()


# ---------------------------------------------------------------- folder data sets

def test_a_relabelling_by_swapping_same_size_files_is_another_run(registries, tmp_path):
    write_bmps(tmp_path / "imagefolder", 4)
    before = run_of(registries, tmp_path)
    train = tmp_path / "imagefolder" / "train"
    swap(train / "a" / "0.bmp", train / "b" / "0.bmp")
    after = run_of(registries, tmp_path)
    assert after.hash != before.hash and after.config["data"]["files"] == 8
    swap(train / "a" / "0.bmp", train / "b" / "0.bmp")  # the same bytes again: the same run
    assert run_of(registries, tmp_path).hash == before.hash


def test_an_edit_in_place_is_seen_through_the_digest_cache(registries, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    write_bmps(tmp_path / "imagefolder", 4)
    before = run_of(registries, tmp_path)
    (cache,) = (tmp_path / "cache" / DIGESTS).glob("*.json")
    files = json.loads(cache.read_text())["files"]
    folder = tmp_path / "imagefolder"
    assert sorted(files) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.bmp"))
    assert run_of(registries, tmp_path).hash == before.hash

    image = folder / "train" / "b" / "2.bmp"
    data = bytearray(image.read_bytes())

    def write(position):
        data[position] ^= 0xFF  # one pixel value, the size unchanged
        with open(image, "r+b") as handle:
            handle.write(data)

    write(-1)
    assert run_of(registries, tmp_path).hash != before.hash
    write(-1)  # the old bytes again, and the old mtime: the digest cached again
    os.utime(image, (PAST, PAST))
    assert run_of(registries, tmp_path).hash == before.hash
    time.sleep(0.05)  # a clock tick of the file system
    write(-2)
    os.utime(image, (PAST, PAST))  # only the ctime tells the cached digest is stale
    edited = run_of(registries, tmp_path).hash
    assert edited != before.hash

    # a digest whose stat still matches is read from the cache, never computed again
    record = json.loads(cache.read_text())
    record["files"]["train/a/0.bmp"][5] = "0" * 64
    cache.write_text(json.dumps(record))
    assert run_of(registries, tmp_path).hash != edited
    cache.unlink()
    assert run_of(registries, tmp_path).hash == edited


def test_a_damaged_digest_cache_is_ignored_and_rewritten(registries, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    write_bmps(tmp_path / "imagefolder", 3)
    good = run_of(registries, tmp_path).hash
    (cache,) = (tmp_path / "cache" / DIGESTS).glob("*.json")
    entry = [0, 0, 0, 0, 0, "0" * 64]
    for damage in (b"\xff\xfe{", b"[" * 100_000, b'{"format": 1, "files": []}',
                   json.dumps({"format": 1, "group": str(tmp_path / "imagefolder"),
                               "files": {str(p.relative_to(tmp_path / "imagefolder")): entry for p in
                               (tmp_path / "imagefolder").rglob("*.bmp")}}).encode()):
        cache.write_bytes(damage)
        assert run_of(registries, tmp_path).hash == good
        assert len(json.loads(cache.read_text())["files"]) == 6


def test_the_identity_follows_symbolic_links_and_the_loaders_extensions(registries, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_bmps(elsewhere, 3)
    write_bmps(tmp_path / "imagefolder", 3, classes=["a"])
    (tmp_path / "imagefolder" / "train" / "b").symlink_to(elsewhere / "train" / "b")
    before = run_of(registries, tmp_path)
    loader = ImageFolder(str(tmp_path / "imagefolder" / "train"))
    assert before.config["data"]["files"] == len(loader.samples) == 6

    (tmp_path / "imagefolder" / "train" / "a" / "notes.txt").write_text("not an image")
    assert run_of(registries, tmp_path).hash == before.hash  # the loader reads no .txt

    (elsewhere / "train" / "b" / "2.bmp").unlink()  # behind the link
    after = run_of(registries, tmp_path)
    assert after.hash != before.hash and after.config["data"]["files"] == 5


def test_a_file_the_loader_cannot_read_is_one_line_at_plan(tmp_path, write_spec):
    write_bmps(tmp_path / "imagefolder", 2)
    broken = tmp_path / "imagefolder" / "train" / "a" / "gone.bmp"
    broken.symlink_to(tmp_path / "nowhere.bmp")
    spec = write_spec({**TINY, "dataset": dataset(tmp_path)})
    code, out = cli_out("plan", str(spec), "--run-id", "C")
    assert code == 2 and len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert str(broken) in out and "remove it" in out


def test_evaluate_on_a_relabelled_folder_scores_it_again(tmp_path, write_spec):
    write_bmps(tmp_path / "imagefolder", 8)
    write_bmps(tmp_path / "other", 4)
    spec = write_spec({**TINY, "dataset": dataset(tmp_path)})
    assert cli_out("run", str(spec), "--run-id", "E", "--quiet")[0] == 0

    def accuracy():
        code, out = cli_out("evaluate", str(spec), "--run-id", "E", "--split", "train",
                            "--on", json.dumps(dataset(tmp_path, "other")))
        assert code == 0, out
        (csv,) = (tmp_path / "logs").rglob("evaluations.csv")
        (row,) = pd.read_csv(csv).to_dict("records")
        return row["accuracy"]

    before = accuracy()
    assert before > 0.5  # the colours are learnt
    train = tmp_path / "other" / "train"
    for i in range(4):  # every image of a is b's now and back: labels flip, sizes stay
        swap(train / "a" / f"{i}.bmp", train / "b" / f"{i}.bmp")
    assert accuracy() == pytest.approx(1 - before)


# ---------------------------------------------------------------- torch hub weights

WEIGHTS = {"name": "tv:resnet18", "weights": "IMAGENET1K_V1"}


def hub_spec(write_spec):
    return write_spec({**TINY, "model": WEIGHTS,
                       "dataset": {"name": "digits", "resolution": 32}})


@pytest.mark.parametrize("damage", ["other weights", "truncated", "a folder"])
def test_a_hub_file_that_is_not_what_its_name_says_is_refused_at_plan(damage, tmp_path,
                                                                      monkeypatch, write_spec):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = enum_weights_path("resnet18", "IMAGENET1K_V1")
    assert cached.name == "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    state = {"fc.bias": torch.randn(1000), "fc.weight": torch.randn(1000, 512)}
    if damage == "a folder":
        cached.mkdir()
    else:
        torch.save(state, cached)
        if damage == "truncated":
            cached.write_bytes(cached.read_bytes()[:1000])
    spec = hub_spec(write_spec)
    for command in (["plan"], ["run", "--dry-run"], ["run", "--quiet"]):
        code, out = cli_out(*command, str(spec), "--run-id", "W")
        assert code == 2 and len(out.splitlines()) == 1 and "Traceback" not in out, out
        assert str(cached) in out and "download it again" in out
        assert ("cannot be read" if damage == "a folder" else "not f37072fd") in out
    assert not (tmp_path / "logs").exists()  # refused before any training


def test_a_hub_file_is_checked_by_the_hash_in_its_name_and_replacements_are_seen(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "state.pt"
    torch.save({"w": torch.arange(6.0)}, source)
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    named = tmp_path / "hub" / f"tiny-{prefix}.pth"
    named.parent.mkdir()
    named.write_bytes(source.read_bytes())
    os.utime(named, (PAST, PAST))
    check_hub_file(named)  # the right bytes pass, and their digest is cached
    check_hub_file(named)
    assert list((tmp_path / "cache" / DIGESTS).glob("*.json"))

    other = tmp_path / "other.pt"
    torch.save({"w": torch.arange(6.0) + 1}, other)  # same size, other values
    assert other.stat().st_size == named.stat().st_size
    os.replace(other, named)  # replaced by other weights
    os.utime(named, (PAST, PAST))
    with pytest.raises(UserError, match=f"not {prefix} as its name says"):
        check_hub_file(named)

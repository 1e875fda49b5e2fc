"""Plumbing shared by every dataset factory: data root, seeded splits, bundle assembly.

A factory loads its raw datasets once (images without transforms), describes them
as a :class:`Source`; :func:`build_bundle` validates the shared options, holds
out the seeded splits, applies ``subset`` and wraps every split with its
transform from :mod:`labkit.data.transforms`.
"""
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from torch.utils.data import Dataset

from labkit.core.errors import DatasetNotFound, UserError
from labkit.core.registry import Seed
from labkit.data.bundle import DataBundle
from labkit.data.transforms import AUGMENT_PRESETS, build_transform, check_augment
from labkit.store.file_digests import file_digests, relative

DATA_ENV_VAR = "LABKIT_DATA"

# the shared dataset parameters' types: the registry turns them into the spec's
# validation, so a bad value is reported by `labkit plan`, before any file is read
Resolution = Annotated[int, Field(ge=8, le=4096, description="side of the images in pixels, "
                                                         "resized to it; default: the "
                                                         "data set's native side")]
Augment = Literal[tuple(AUGMENT_PRESETS)]  # type: ignore[valid-type]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, description=(
    "share of the training split held out, stratified and seeded by split_seed: as the "
    "`eval` split when the data set has no test set, else as a `val` split beside the "
    "test set's `eval` (both are logged)"))]
Subset = Annotated[int, Field(ge=1, description="training samples kept (stratified, seeded by "
                                                "split_seed); null: all")] | None

# the parameters every data set shares, as the ``Args:`` section of each factory's
# docstring (the documentation's components page shows them)
SHARED_ARGS = "\n".join(["Args:", *(f"    {name}: {text}" for name, text in {
    "root": f"the data root, the folder holding each data set's folder; null: "
            f"``${DATA_ENV_VAR}``, else ``./data``. A missing data set is an error naming "
            f"the path searched and how to fix it.",
    "download": "let torchvision download missing files (labkit never downloads "
                "silently); data sets that are folders or ship with a library ignore it.",
    "augment": "augmentation preset of the training split (eval splits are never "
               "augmented): " + "; ".join(f"``{name}``: {text}"
                                         for name, text in AUGMENT_PRESETS.items())
               + ". ``\"data_loader\": \"device\"`` refuses presets it cannot batch "
                 "(``imagenet``).",
    "normalize": "subtract the data set's per-channel mean and divide by its std.",
    "split_seed": "seed of the held-out split and of ``subset``.",
    "subset": "training samples kept (stratified, seeded by ``split_seed``); null: all.",
}.items())])


def with_shared_args(doc: str) -> str:
    """A data set factory's docstring ``doc`` followed by :data:`SHARED_ARGS`."""
    return f"{inspect.cleandoc(doc)}\n\n{SHARED_ARGS}"


def resolve_root(root: str | None) -> Path:
    """Directory that holds all datasets: ``root``, else ``$LABKIT_DATA``, else ``./data``.

    Returned absolute so error messages and ``info["root"]`` name an unambiguous path.
    """
    chosen = root if root is not None else os.environ.get(DATA_ENV_VAR) or "data"
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def content_digest(directory: Path, classes: Sequence[str],
                   samples: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
    """A fingerprint of what a loader reads under ``directory``: sha256 of the class
    names and, per sample, its split, path relative to ``directory``, label and the
    sha256 of its file's content (:func:`labkit.store.file_digests.file_digests`, cached by
    the files' stat, so that only new or changed files are read again).

    Args:
        directory: the data set's folder.
        classes: the class names the labels index.
        samples: ``(split, path, label)`` of every file the loader reads, in its order.

    Returns:
        ``{"root": directory, "files": len(samples), "digest": hex}``.

    Raises:
        UserError: a file cannot be read.
    """
    try:
        digests = file_digests([path for _, path, _ in samples], directory, prune=True)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename} ({exc.strerror}); make it readable or "
                        f"remove it from {directory}") from None
    folder = str(directory)
    listed = [[split, relative(path, folder), label, digest]
              for (split, path, label), digest in zip(samples, digests)]
    text = json.dumps([list(classes), listed])  # unambiguous whatever the names hold
    return {"root": str(directory), "files": len(samples),
            "digest": hashlib.sha256(text.encode()).hexdigest()}


def dataset_not_found(title: str, searched: Path, needed: str, how_to_get: str) -> DatasetNotFound:
    """The error every factory raises when its files are missing, corrupted or failed to download.

    Args:
        title: human name of the dataset, e.g. ``"CIFAR-10"``.
        searched: the directory that was looked in.
        needed: what must be in ``searched`` (file names or folder layout).
        how_to_get: the fix; says whether ``"download": true`` is available.
    """
    return DatasetNotFound(
        f"{title} not found (or incomplete/corrupted) in {searched}. "
        f"Expected there: {needed}. {how_to_get} "
        f"The data root is the dataset's \"root\" in the spec, else ${DATA_ENV_VAR}, else ./data; "
        f"point it at the directory that already holds the data if it lives elsewhere."
    )


def stratified_choice(labels: Sequence[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Pick ``n`` indices of ``labels`` so that every class keeps its share.

    Class quotas are ``n * class_count / len(labels)`` rounded by largest remainder
    (so they sum to exactly ``n``); members of each class are drawn by a permutation
    from ``numpy.random.default_rng(seed)``. A pure function of (labels, n, seed).

    Returns:
        Sorted int64 array of ``n`` distinct positions into ``labels``.
    """
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(np.int64)
    # Stable sort: equal remainders go to the smaller class label, deterministically.
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_indices(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of ``range(len(labels))`` into (kept, held_out).

    ``held_out`` has ``round(fraction * len(labels))`` indices chosen by
    :func:`stratified_choice`; ``kept`` is the sorted rest. Same result on every call.
    """
    n_held = round(fraction * len(labels))
    if not 0 < n_held < len(labels):
        raise UserError(
            f"eval_fraction={fraction} of {len(labels)} samples leaves an empty split. "
            f"Set \"eval_fraction\" in the spec's dataset object so that both parts keep samples."
        )
    held = stratified_choice(labels, n_held, seed)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


class SplitDataset(Dataset):
    """``base[indices[i]]`` with ``transform`` applied to the image.

    Lets train, train_plain and held-out splits share one loaded base dataset (CIFAR
    arrays loaded once, an ImageNet folder scanned once) with different transforms.

    Attributes:
        base: dataset yielding ``(raw image, label)`` (PIL image or float tensor).
        indices: int64 positions into ``base``, in this split's order.
        transform: maps a raw image to a float tensor ``(C, H, W)``.
    """

    def __init__(self, base: Dataset, indices: np.ndarray, transform: Callable):
        self.base = base
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.base[int(self.indices[i])]
        return self.transform(image), int(label)


@dataclass(frozen=True)
class Source:
    """What a factory loaded, before splitting and transforms.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        root: dataset directory actually read (``None`` for bundled data).
        train: raw training set yielding ``(image, label)``.
        train_labels: label of every ``train`` item, same order.
        test: raw official test set, or ``None`` when the dataset has none.
        classes: class names, index = label.
        in_channels: channels per image.
        native: side in pixels of the stored square images, ``None`` if sizes vary.
        mean, std: per-channel normalisation constants on the [0, 1] scale.
        pil_input: True if items are PIL images, False for float tensors in [0, 1].
    """

    name: str
    root: Path | None
    train: Dataset
    train_labels: np.ndarray
    test: Dataset | None
    classes: list[str]
    in_channels: int
    native: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pil_input: bool

    @classmethod
    def of_image_sets(cls, name: str, root: Path, train: Any, test: Any, in_channels: int,
                      native: int | None, mean: tuple[float, ...],
                      std: tuple[float, ...]) -> "Source":
        """A source of torchvision-style sets of PIL images: ``train`` (and ``test``, or
        ``None``) with the ``targets`` and ``classes`` attributes torchvision's data sets
        and ``ImageFolder`` have."""
        return cls(name=name, root=root, train=train, train_labels=np.asarray(train.targets),
                   test=test, classes=list(train.classes), in_channels=in_channels,
                   native=native, mean=mean, std=std, pil_input=True)


def check_options(*, resolution: int, augment: str, eval_fraction: float, subset: int | None) -> None:
    """Raise :class:`UserError` for invalid shared options."""
    check_augment(augment)
    if resolution < 1:
        raise UserError(f"resolution={resolution} is not a positive pixel count. Set \"resolution\" to e.g. 32.")
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval_fraction={eval_fraction} is outside [0, 1). Set \"eval_fraction\" to e.g. 0.1.")
    if subset is not None and subset < 1:
        raise UserError(f"subset={subset} keeps no training sample. Set \"subset\" to a positive count or null.")


def build_bundle(
    load: Callable[[], Source],
    *,
    resolution: int,
    augment: str,
    normalize: bool,
    eval_fraction: float,
    split_seed: int,
    subset: int | None,
) -> DataBundle:
    """Validate the shared options, call ``load`` and turn its :class:`Source` into a bundle.

    Options are checked before ``load`` so a typo fails before any file is read.
    ``evals["eval"]`` is the official test set if there is one, else a stratified
    ``eval_fraction`` of train. With an official test set, ``eval_fraction > 0``
    additionally moves a stratified ``evals["val"]`` out of train. ``subset`` then
    caps train (stratified, seeded with ``split_seed``). Only ``train`` is augmented;
    ``train_plain`` has the same items in the same order.
    """
    check_options(resolution=resolution, augment=augment, eval_fraction=eval_fraction, subset=subset)
    source = load()
    if source.test is None and eval_fraction == 0.0:
        raise UserError(
            f"Dataset {source.name!r} has no official evaluation split (for image folders: no val/ folder) "
            f"and eval_fraction is 0. Set \"eval_fraction\" in the spec's dataset object (e.g. 0.2) "
            f"to hold out a seeded, stratified split."
        )

    def transform(preset: str) -> Callable:
        return build_transform(
            resolution=resolution,
            native=source.native,
            augment=preset,
            mean=source.mean if normalize else None,
            std=source.std if normalize else None,
            pil_input=source.pil_input,
        )

    plain = transform("none")
    labels = np.asarray(source.train_labels)
    train_idx = np.arange(len(labels))
    evals: dict[str, Dataset] = {}
    if source.test is not None:
        evals["eval"] = SplitDataset(source.test, np.arange(len(source.test)), plain)
    if eval_fraction > 0.0:
        train_idx, held_idx = split_indices(labels, eval_fraction, split_seed)
        evals["val" if source.test is not None else "eval"] = SplitDataset(source.train, held_idx, plain)
    if subset is not None and subset < len(train_idx):
        train_idx = train_idx[stratified_choice(labels[train_idx], subset, split_seed)]
    return DataBundle(
        train=SplitDataset(source.train, train_idx, transform(augment)),
        evals=evals,
        train_plain=SplitDataset(source.train, train_idx, plain),
        num_classes=len(source.classes),
        in_channels=source.in_channels,
        resolution=resolution,
        info={
            "name": source.name,
            "root": None if source.root is None else str(source.root),
            "classes": list(source.classes),
            "mean": list(source.mean) if normalize else None,
            "std": list(source.std) if normalize else None,
            "augment": augment,
            "sizes": {"train": len(train_idx), **{k: len(v) for k, v in evals.items()}},
        },
    )


def dataset_factory(load: Callable[[str | None, bool, int], Source], *, resolution: int,
                    eval_fraction: float = 0.0, test: bool = True,
                    doc: str) -> Callable[..., DataBundle]:
    """A registry factory taking the shared dataset parameters, with per-dataset defaults.

    Args:
        load: ``load(root, download, resolution) -> Source`` reads the files.
        resolution: the dataset's native resolution (default of ``resolution``), pixels.
        eval_fraction: default share of train held out (``evals["eval"]`` when the
            dataset has no test set, else ``evals["val"]``).
        test: whether the dataset may have an official test set (``load`` gives one).
        doc: the factory's docstring (what the data is, where its files live).

    The returned function's signature spells out every parameter with its type and
    default, which is what the registry turns into the spec's parameter model.
    """
    native, default_fraction = resolution, eval_fraction

    def factory(root: str | None = None, download: bool = False, resolution: Resolution = native,
                augment: Augment = "none", normalize: bool = True,
                eval_fraction: Fraction = default_fraction, split_seed: Seed = 0,
                subset: Subset = None) -> DataBundle:
        return build_bundle(lambda: load(root, download, resolution), resolution=resolution,
                            augment=augment, normalize=normalize, eval_fraction=eval_fraction,
                            split_seed=split_seed, subset=subset)

    factory.__doc__ = with_shared_args(doc)
    # the eval splits build_bundle makes, known before loading (labkit plan checks a
    # best_metric against them): "eval", and "val" held out beside a test set
    factory.eval_splits = lambda params: ["eval", *(["val"] if test and params.get(
        "eval_fraction", default_fraction) > 0 else [])]
    return factory

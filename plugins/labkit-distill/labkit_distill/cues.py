"""Cue datasets: a label-predictive cue added to any base dataset, with counterfactual
eval splits.

Every image has content (the base image) and may carry a cue showing a class. In the
training split the cue shows the image's label on a ``cue_fraction`` of the images and
is absent on the rest. The eval splits, all built from the base's ``eval`` split, are
(see :data:`EVAL_SPLITS`):

    eval            cues as trained (label-aligned on cue_fraction of the images)
    eval_nocue      no cue: only the content predicts the label
    eval_randcue    a cue on every image, showing a random class (independent of the label)
    eval_cueonly    the label's cue on every image, the content blanked

A network that relies on the cue loses accuracy on ``eval_randcue`` and keeps it on
``eval_cueonly``; one that relies on the content does the opposite. The engine logs
every split like any eval split (``eval_randcue-accuracy``, …). Which item gets which
cue is drawn from ``cue_seed`` only, never from the run's seed, so a teacher and its
students see the same images.

Two cues: ``box_cue`` (a bright square whose position encodes the class, after
Ekdeep Singh Lubana's box datasets) and ``dominoes`` (the base image on top of a
class-matched image from a second dataset). :mod:`labkit_distill.shapes` has the third
kind, whose cues are generative factors.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from labkit.api import DataBundle, UserError, check_augment
from labkit_distill.sources import (augmenter, build_source, labels_of, pixel_range,
                                    resolve_source)

EVAL_SPLITS = {
    "eval": "cues as trained",
    "eval_nocue": "cue removed",
    "eval_randcue": "cue of a random class on every image",
    "eval_cueonly": "the label's cue on every image, content blanked",
}
# every split draws its plan from its own stream of the seed: [seed, index here]
PLAN_STREAMS = ("train", *EVAL_SPLITS)

# compose(content image or None when blanked, cue class or -1, item position) -> image
Compose = Callable[[torch.Tensor | None, int, int], torch.Tensor]


def cue_plan(labels: np.ndarray, split: str, cue_fraction: float, num_classes: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the class its cue shows (−1: no cue) and whether its content is kept.

    Args:
        labels: ``(N,)`` labels of the split's items.
        split: ``"train"`` or a key of :data:`EVAL_SPLITS`.
        cue_fraction: share of images whose cue shows the label (``train``, ``eval``).
        num_classes: number of classes, for random cues.
        seed: the dataset's ``cue_seed``.

    Returns:
        ``(cue, keep)``: int64 ``(N,)`` and bool ``(N,)``.
    """
    rng = np.random.default_rng([seed, PLAN_STREAMS.index(split)])
    n = len(labels)
    if split in ("train", "eval"):
        cue = np.where(rng.random(n) < cue_fraction, labels, -1)
    elif split == "eval_nocue":
        cue = np.full(n, -1)
    elif split == "eval_randcue":
        cue = rng.integers(0, num_classes, n)
    else:
        cue = np.asarray(labels)
    return cue.astype(np.int64), np.full(n, split != "eval_cueonly")


class CueImages(Dataset):
    """The items of ``content`` with their cue composed in, then ``transform``.

    Exposes ``labels`` and, when ``content`` has them, its ``base`` and ``indices``
    (which source items it holds), so soft labels and further wrappers find their rows.
    """

    def __init__(self, content: Dataset, labels: np.ndarray, cue: np.ndarray, keep: np.ndarray,
                 compose: Compose, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.content, self.labels, self.cue, self.keep = content, labels, cue, keep
        self.compose, self.transform = compose, transform
        self.base = getattr(content, "base", None)
        self.indices = getattr(content, "indices", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.content[i]
        image = self.compose(image if self.keep[i] else None, int(self.cue[i]), i)
        return self.transform(image), int(label)


def cue_bundle(name: str, content: DataBundle, compose_for: Callable[[str, np.ndarray], Compose],
               *, cue_fraction: float, cue_seed: int, in_channels: int, resolution: int,
               augment: str, info: dict[str, Any]) -> DataBundle:
    """Assemble a cue dataset: the train split and every split of :data:`EVAL_SPLITS`.

    Args:
        name: the dataset's registry name (``info["name"]``).
        content: the base bundle (unaugmented) whose ``train_plain`` and ``evals["eval"]``
            give the content images.
        compose_for: ``compose_for(split, cue)`` returns the split's :data:`Compose`.
        cue_fraction, cue_seed: see :func:`cue_plan`.
        in_channels, resolution: shape of the composed images.
        augment: labkit augmentation preset, applied to the composed training images.
        info: extra entries of ``DataBundle.info``.
    """
    def split_images(split: str, dataset: Dataset, transform: Callable) -> CueImages:
        labels = labels_of(dataset)
        cue, keep = cue_plan(labels, split, cue_fraction, content.num_classes, cue_seed)
        return CueImages(dataset, labels, cue, keep, compose_for(split, cue), transform)

    train_plain = split_images("train", content.train_plain, v2.Identity())
    train = CueImages(train_plain.content, train_plain.labels, train_plain.cue, train_plain.keep,
                      train_plain.compose, augmenter(resolution, augment))
    evals = {split: split_images(split, content.evals["eval"], v2.Identity())
             for split in EVAL_SPLITS}
    return DataBundle(
        train=train, evals=evals, train_plain=train_plain, num_classes=content.num_classes,
        in_channels=in_channels, resolution=resolution,
        info={"name": name, "base": content.info, "classes": content.info.get("classes"),
              "mean": content.info.get("mean"), "std": content.info.get("std"),
              "augment": augment, "splits": EVAL_SPLITS,
              "sizes": {"train": len(train), **{k: len(v) for k, v in evals.items()}}, **info})


def check_cue_options(cue_fraction: float, augment: str) -> None:
    """Raise :class:`UserError` for an invalid ``cue_fraction`` or augmentation preset."""
    check_augment(augment)
    if not 0.0 <= cue_fraction <= 1.0:
        raise UserError(f"cue_fraction={cue_fraction} is not a share; give a value in [0, 1]")


class Box:
    """Paints a bright ``size``-pixel square at the cell of the cue's class.

    The image is divided into a k × k grid of cells, k = ⌈√C⌉; class c owns cell
    (c // k, c % k) and its square sits in that cell's centre.
    """

    def __init__(self, num_classes: int, resolution: int, size: int | None,
                 black: torch.Tensor, white: torch.Tensor):
        k = math.ceil(math.sqrt(num_classes))
        cell = resolution // k
        self.size = size or max(1, cell // 2)
        if cell < 1 or self.size > cell:
            raise UserError(f"{num_classes} box positions of {self.size} pixels do not fit a "
                            f"{resolution}-pixel image; raise resolution or lower box_size")
        offset = (cell - self.size) // 2
        self.corners = [(row * cell + offset, col * cell + offset)
                        for row, col in (divmod(c, k) for c in range(num_classes))]
        self.black = black.expand(-1, resolution, resolution)
        self.white = white

    def __call__(self, image: torch.Tensor | None, cue: int, i: int) -> torch.Tensor:
        canvas = (self.black if image is None else image).clone()
        if cue >= 0:
            top, left = self.corners[cue]
            canvas[:, top:top + self.size, left:left + self.size] = self.white
        return canvas


def box_cue(base: str | dict[str, Any] = "digits", resolution: int = 16,
            cue_fraction: float = 1.0, box_size: int | None = None, cue_seed: int = 0,
            augment: str = "none") -> DataBundle:
    """A base dataset with a box whose position encodes the label.

    Args:
        base: the content dataset (a name or ``{"name": …, params}``), built at
            ``resolution`` without augmentation, normalised as it normalises.
        resolution: image side in pixels.
        cue_fraction: share of training images carrying the label's box.
        box_size: side of the box in pixels; ``None``: half a grid cell (see :class:`Box`).
        cue_seed: seed of which image gets which box.
        augment: augmentation preset applied after the box is painted.

    Returns:
        A :class:`DataBundle` with the splits of :data:`EVAL_SPLITS`; images
        ``(base channels, resolution, resolution)``; ``eval_cueonly`` images are black
        with the box.
    """
    check_cue_options(cue_fraction, augment)
    content = build_source(resolve_source(base), resolution)
    black, white = pixel_range(content)
    box = Box(content.num_classes, resolution, box_size, black, white)
    return cue_bundle("box_cue", content, lambda split, cue: box, cue_fraction=cue_fraction,
                      cue_seed=cue_seed, in_channels=content.in_channels,
                      resolution=resolution, augment=augment, info={})


class Stack:
    """Content image in the top half, a second-source image in the bottom half.

    Each half-resolution image is centred horizontally on a black row of the full width;
    a grayscale half is repeated over channels when the other half is in colour.
    """

    def __init__(self, second: Dataset, pairs: np.ndarray, blacks: tuple[torch.Tensor, torch.Tensor],
                 channels: int, resolution: int):
        self.second, self.pairs, self.channels = second, pairs, channels
        self.half, self.left = resolution // 2, resolution // 4
        top, bottom = (b.expand(channels, self.half, resolution) for b in blacks)
        self.canvas = torch.cat([top, bottom], dim=1)

    def __call__(self, image: torch.Tensor | None, cue: int, i: int) -> torch.Tensor:
        canvas = self.canvas.clone()
        columns = slice(self.left, self.left + self.half)
        if image is not None:
            canvas[:, :self.half, columns] = image.expand(self.channels, -1, -1)
        if cue >= 0:
            other, _ = self.second[int(self.pairs[i])]
            canvas[:, self.half:, columns] = other.expand(self.channels, -1, -1)
        return canvas


def class_matched(cue: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each item, a random position among ``labels`` of its cue's class (−1: no cue).

    Raises:
        UserError: a class the second dataset does not have.
    """
    pairs = np.full(len(cue), -1, dtype=np.int64)
    for c in np.unique(cue[cue >= 0]):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise UserError(f"the second dataset of dominoes has no image of class {c}; it "
                            f"needs at least as many classes as the base")
        where = np.flatnonzero(cue == c)
        pairs[where] = rng.choice(members, len(where))
    return pairs


def dominoes(base: str | dict[str, Any] = "digits", second: str | dict[str, Any] = "shapes",
             resolution: int = 16, cue_fraction: float = 1.0, cue_seed: int = 0,
             augment: str = "none") -> DataBundle:
    """Two datasets stacked: the base image on top, a class-matched ``second`` image below.

    The bottom image is the cue: an image of the label's class from ``second`` (class c
    of the base pairs with class c of ``second``), drawn from ``second``'s training split
    for the training images and from its ``eval`` split for the eval splits.

    Args:
        base, second: datasets (names or ``{"name": …, params}``), each built at
            ``resolution // 2`` without augmentation; ``second`` needs at least the base's
            classes (the default ``shapes`` has 10, like digits).
        resolution: side of the stacked image in pixels (even).
        cue_fraction: share of training images whose bottom half shows the label's class
            (the rest have a black bottom half).
        cue_seed: seed of which image gets which partner.
        augment: augmentation preset applied to the stacked image.

    Returns:
        A :class:`DataBundle` with the splits of :data:`EVAL_SPLITS`, images
        ``(max channels of the two, resolution, resolution)``.
    """
    check_cue_options(cue_fraction, augment)
    if resolution % 2 or resolution < 2:
        raise UserError(f"dominoes resolution={resolution}: give an even number of pixels "
                        f"(each half is resolution // 2)")
    content = build_source(resolve_source(base), resolution // 2)
    other = build_source(resolve_source(second), resolution // 2)
    channels = max(content.in_channels, other.in_channels)
    if {content.in_channels, other.in_channels} - {1, channels}:
        raise UserError(f"dominoes stacks {content.in_channels}- and {other.in_channels}-channel "
                        f"images; one must have 1 channel or both the same number")
    blacks = (pixel_range(content)[0], pixel_range(other)[0])
    partners = {"train": other.train_plain, "eval": other.evals["eval"]}
    labels = {part: labels_of(dataset) for part, dataset in partners.items()}

    def compose_for(split: str, cue: np.ndarray) -> Stack:
        part = "train" if split == "train" else "eval"
        rng = np.random.default_rng([cue_seed, PLAN_STREAMS.index(split), 1])
        pairs = class_matched(cue, labels[part], rng)
        return Stack(partners[part], pairs, blacks, channels, resolution)

    return cue_bundle("dominoes", content, compose_for, cue_fraction=cue_fraction,
                      cue_seed=cue_seed, in_channels=channels, resolution=resolution,
                      augment=augment, info={"second": other.info})

"""Multi-crop views of the training images and their per-crop augmentation.

A crop spec such as ``"2x32+4x16"`` asks for 2 *global* crops of 32 × 32 pixels, seen by
teacher and student, and 4 *local* crops of 16 × 16 pixels, seen by the student only:
the first ``+``-separated group is global, every later group local. Each crop is a
``RandomResizedCrop`` of the image to its size, covering a random share of the image's
area drawn from its scale range. Default scales are the reference codebase's: globals
(0.4, 1) with local crops, (0.14, 1) without, and (1, 1) for a single global crop (the
whole image, resized: an un-augmented view with augmentation ``none``); locals (0.05, 0.4).

Per-crop augmentation presets (:data:`AUGMENTATIONS`) act on the image in [0, 1], so the
dataset's normalisation is undone before and redone after them.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

AUGMENTATIONS: dict[str, str] = {
    "none": "the crop only",
    "flip": "random horizontal flip",
    "dino": "DINO's: flip, colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur "
            "(p 1.0 / 0.1 / 0.5 for global crop 1 / global crop 2 / local crops, "
            "kernel and sigma scaled from DINO's 224 px to the crop size), "
            "solarisation (p 0.2, global crop 2)",
}

_SPEC = re.compile(r"^\d+x\d+(\+\d+x\d+)*$")


@dataclass(frozen=True)
class Crop:
    """One view: output size in pixels, area scale range, and whether the teacher sees it."""

    size: int
    scale: tuple[float, float]
    teacher: bool


def parse_crops(spec: str, global_scale: Sequence[float] | None = None,
                local_scale: Sequence[float] = (0.05, 0.4)) -> list[Crop]:
    """The crops of a spec like ``"2x32+4x16"`` (see the module docstring).

    Raises:
        ValueError: the spec does not match ``<count>x<size>(+<count>x<size>)*`` or a
            count or size is 0.
    """
    if not _SPEC.match(spec):
        raise ValueError(f"crop spec {spec!r} must look like '2x32+4x16' "
                         f"(<count>x<size in pixels>, groups joined by '+')")
    groups = [tuple(int(n) for n in group.split("x")) for group in spec.split("+")]
    if any(count == 0 or size == 0 for count, size in groups):
        raise ValueError(f"crop spec {spec!r}: counts and sizes must be positive")
    (n_global, global_size), locals_ = groups[0], groups[1:]
    if global_scale is None:
        global_scale = (0.4, 1.0) if locals_ else (0.14, 1.0) if n_global > 1 else (1.0, 1.0)
    crops = [Crop(global_size, tuple(global_scale), True) for _ in range(n_global)]
    for count, size in locals_:
        crops += [Crop(size, tuple(local_scale), False) for _ in range(count)]
    return crops


def _crop(crop: Crop) -> Callable:
    if crop.scale == (1.0, 1.0):
        # the whole image: a deterministic resize, no random draw
        return v2.Resize(crop.size, antialias=True)
    return v2.RandomResizedCrop(crop.size, scale=crop.scale, antialias=True)


def _dino(size: int, blur_p: float, solarize_p: float) -> list[Callable]:
    """DINO's photometric augmentation of one crop (its ``DataAugmentationDINO``)."""
    # DINO blurs 224 px crops with a 23 px kernel and sigma in [0.1, 2]; keep the ratio
    kernel = max(3, 2 * round(23 * size / 224 / 2) + 1)
    sigma = (0.1 * size / 224, 2.0 * size / 224)
    steps = [
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2,
                                       hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=blur_p),
    ]
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=0.5, p=solarize_p))
    return steps


def crop_transforms(crops: list[Crop], augment: str, mean: Sequence[float] | None,
                    std: Sequence[float] | None) -> list[Callable]:
    """One transform per crop: ``(C, H, W)`` normalised image → ``(C, size, size)`` view.

    ``mean``/``std``: the dataset's normalisation (``None``: images are in [0, 1]).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown crop augmentation {augment!r}; one of {list(AUGMENTATIONS)}")
    transforms = []
    n_global = sum(c.teacher for c in crops)
    for index, crop in enumerate(crops):
        steps: list[Callable] = []
        if mean is not None:
            # undo the dataset's normalisation: photometric transforms expect [0, 1]
            steps.append(v2.Normalize([-m / s for m, s in zip(mean, std)], [1 / s for s in std]))
        steps.append(_crop(crop))
        if augment == "flip":
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        elif augment == "dino":
            first, second = index == 0, index == 1 and n_global > 1
            blur_p = 1.0 if first else 0.1 if second else 0.5
            steps += _dino(crop.size, blur_p, solarize_p=0.2 if second else 0.0)
        if mean is not None:
            steps.append(v2.Normalize(list(mean), list(std)))
        transforms.append(v2.Compose(steps))
    return transforms


class MultiViewDataset(Dataset):
    """Item ``i`` of ``base``, ``(image, target)``, as ``(views, target)``.

    ``views`` is a list with one tensor per transform (one per crop), or ``[image]``
    unchanged when ``transforms`` is ``None`` (a single un-augmented view).
    """

    def __init__(self, base: Dataset, transforms: list[Callable] | None):
        self.base = base
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], object]:
        image, target = self.base[i]
        if self.transforms is None:
            return [image], target
        return [t(image) for t in self.transforms], target

"""The value every dataset factory returns."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset


@dataclass
class DataBundle:
    """Everything the engine needs from a dataset.

    Every dataset yields ``(image, label)`` with ``image`` a float tensor of shape
    ``(in_channels, resolution, resolution)`` and ``label`` an ``int`` in
    ``[0, num_classes)``.

    Attributes:
        train: the training split, with the spec's augmentation applied.
        evals: named evaluation splits (at least ``"eval"``), never augmented.
        train_plain: the training split without augmentation, same order as ``train``
            (used for layer analyses and latent extraction).
        num_classes: number of classes.
        in_channels: channels of each image.
        resolution: height and width of each image, in pixels.
    """

    train: Dataset
    evals: dict[str, Dataset]
    train_plain: Dataset
    num_classes: int
    in_channels: int
    resolution: int
    info: dict = field(default_factory=dict)

"""scikit-learn's 8x8 handwritten digits, held in memory (the quickstart and test dataset)."""
import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from labkit.data.splits import Source, dataset_factory

# Over all 1797 images scaled to [0, 1] (raw values 0..16 divided by 16).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)


class TensorImages(Dataset):
    """In-memory images: item ``i`` is ``(images[i], int(labels[i]))``.

    Args:
        images: float32 tensor ``(N, C, H, W)`` with values in [0, 1].
        labels: int64 tensor ``(N,)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


@functools.lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's digits as (images (N, 8, 8) float32 in [0, 1], labels, class
    names), read once per process; the arrays are read-only.

    The CSV that ``sklearn.datasets.load_digits`` reads is read directly from the
    installed scikit-learn, without importing it (which costs every training process,
    data loader worker and ``nproc`` process about a second); where that file is not
    where it was, ``load_digits`` itself."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" \
        if spec is not None and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")  # 64 pixel columns, then the label
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    else:
        from sklearn.datasets import load_digits

        raw = load_digits()
        pixels, target = raw.images, raw.target
    images = pixels.astype(np.float32) / 16.0
    target = np.array(target, dtype=np.int64)
    for array in (images, target):
        array.setflags(write=False)
    return images, target, [str(c) for c in range(10)]


def _load(root: str | None, download: bool, resolution: int) -> Source:
    """Read the digits and resize the whole tensor to ``resolution`` (root, download unused)."""
    pixels, target, classes = _read()
    images = torch.from_numpy(pixels.copy()).unsqueeze(1)
    if resolution != 8:
        # Resize the whole tensor once instead of per item: it is deterministic.
        images = v2.functional.resize(images, [resolution, resolution], antialias=True).clamp_(0.0, 1.0)
    return Source(
        name="digits",
        root=None,
        train=TensorImages(images, torch.from_numpy(target.copy()).long()),
        train_labels=target.copy(),
        test=None,
        classes=list(classes),
        in_channels=1,
        native=resolution,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        pil_input=False,
    )


digits = dataset_factory(_load, resolution=8, eval_fraction=0.2, test=False, doc="""
    scikit-learn ``load_digits()``: 1797 grayscale 8x8 digits, 10 classes.

    Ships with scikit-learn, so ``root`` and ``download`` are accepted for a uniform
    interface and ignored (``info["root"]`` is ``None``). There is no official test
    set: ``evals["eval"]`` is a stratified, seeded ``eval_fraction`` of the data.
    Pixels are scaled from 0..16 to [0, 1]; normalisation uses mean 0.3053, std 0.3760.

    Returns:
        A :class:`DataBundle` of items ``(float tensor (1, resolution, resolution), label)``.
    """)

"""Image transforms: resize, augmentation presets and per-channel normalisation.

Every pipeline ends in a float32 tensor of shape ``(C, resolution, resolution)``.
Order: resize -> augmentation -> to float in [0, 1] -> normalise (-> cutout), so
that crop padding and translations are measured in output pixels, the zero fill of a
translation is black before normalisation, and the cutout square is exactly 0 in the
model's input.
"""
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from labkit.core.errors import UserError

AUGMENT_PRESETS: dict[str, str] = {
    "none": "no augmentation",
    "crop": "random crop with reflect padding of resolution // 8 pixels",
    "flip_crop": "random crop (as 'crop') plus random horizontal flip; the CIFAR standard",
    "imagenet": "RandomResizedCrop to resolution plus random horizontal flip",
    "flip_translate": "random horizontal flip plus a random translation by up to "
                      "max(1, resolution // 16) pixels in x and y (2 at 32 px) with zero "
                      "(black) fill",
    "flip_crop_cutout": "'flip_crop' plus cutout: one square of side resolution // 2 at a "
                        "uniformly random centre pixel, clipped at the borders, set to 0 "
                        "after normalisation",
}


def translate_pixels(resolution: int) -> int:
    """Largest shift, in pixels, of the ``flip_translate`` preset: 1/16 of the side
    (2 at 32 px), at least 1."""
    return max(1, resolution // 16)


class Cutout:
    """Set one ``size`` x ``size`` square of a ``(..., H, W)`` tensor to 0.

    The square's centre is a uniformly random pixel; its rows are
    ``[cy - size // 2, cy - size // 2 + size)`` clipped to the image (likewise the
    columns), so near a border a smaller rectangle is zeroed. Draws from torch's
    global generator, like torchvision's random transforms; returns a new tensor.
    """

    def __init__(self, size: int):
        if size < 1:
            raise UserError(f"Cutout needs a square side of at least 1 pixel, got {size}.")
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        top = int(torch.randint(height, ())) - self.size // 2
        left = int(torch.randint(width, ())) - self.size // 2
        out = image.clone()
        out[..., max(top, 0):max(top + self.size, 0), max(left, 0):max(left + self.size, 0)] = 0
        return out

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class Normalize(v2.Normalize):
    """torchvision's ``v2.Normalize`` with a short path for a plain float tensor
    ``(C, H, W)`` (in-memory data sets): the same arithmetic as torchvision's kernel
    (mean and std as tensors of the image's dtype, ``image.sub(mean).div_(std)``), so
    the same bits, without the dispatch that costs about 7× the arithmetic on small
    images. Anything else (tv_tensors, batches of other ranks) goes through
    torchvision."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__(mean=list(mean), std=list(std))
        self._constants: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, *inputs: object) -> object:
        image = inputs[0] if len(inputs) == 1 else None
        if type(image) is not torch.Tensor or image.ndim != 3 or not image.is_floating_point() \
                or not all(self.std):
            return super().forward(*inputs)
        key = (image.dtype, image.device)
        if key not in self._constants:
            self._constants[key] = tuple(
                torch.as_tensor(values, dtype=image.dtype, device=image.device).view(-1, 1, 1)
                for values in (self.mean, self.std))
        mean, std = self._constants[key]
        return image.sub(mean).div_(std)


def check_augment(augment: str) -> None:
    """Raise :class:`UserError` unless ``augment`` names a preset in :data:`AUGMENT_PRESETS`."""
    if augment not in AUGMENT_PRESETS:
        valid = ", ".join(f"{name!r} ({what})" for name, what in AUGMENT_PRESETS.items())
        raise UserError(
            f"Unknown augmentation preset {augment!r}. "
            f"Set \"augment\" in the spec's dataset object to one of: {valid}."
        )


def build_transform(
    *,
    resolution: int,
    native: int | None,
    augment: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    pil_input: bool,
) -> Callable:
    """Build the pipeline that turns one stored image into the model's input.

    Args:
        resolution: output height and width, in pixels.
        native: side of the stored images in pixels when all are square and of that
            size; ``None`` when sizes vary (image folders), which forces a resize.
        augment: a preset name from :data:`AUGMENT_PRESETS`; pass ``"none"`` for
            evaluation and ``train_plain`` pipelines.
        mean, std: per-channel normalisation constants on the [0, 1] scale, or
            ``None`` for no normalisation.
        pil_input: True for PIL images (torchvision datasets), False for float
            tensors ``(C, H, W)`` already in [0, 1] (in-memory datasets).

    Returns:
        A callable mapping one image to a float32 tensor ``(C, resolution, resolution)``.
    """
    check_augment(augment)
    steps: list[Callable] = []
    # RandomResizedCrop already outputs ``resolution``; resizing first would only
    # throw away pixels it could have cropped from.
    if augment != "imagenet" and native != resolution:
        # Shorter side to ``resolution`` then a centre crop: square outputs without
        # distorting non-square photos (a no-op crop for square images).
        steps += [v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)]
    if augment in ("crop", "flip_crop", "flip_crop_cutout"):
        steps.append(v2.RandomCrop(resolution, padding=resolution // 8, padding_mode="reflect"))
    if augment == "flip_translate":
        # a crop of the zero-padded image: a shift by -pad..pad pixels in x and y
        steps.append(v2.RandomCrop(resolution, padding=translate_pixels(resolution),
                                   padding_mode="constant", fill=0))
    if augment == "imagenet":
        steps.append(v2.RandomResizedCrop(resolution, antialias=True))
    if augment in ("flip_crop", "imagenet", "flip_translate", "flip_crop_cutout"):
        steps.append(v2.RandomHorizontalFlip())
    if pil_input:
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        steps.append(Normalize(mean, std))
    if pil_input:
        # tv_tensors.Image would otherwise leak into user code and collate.
        steps.append(v2.ToPureTensor())
    if augment == "flip_crop_cutout":
        steps.append(Cutout(resolution // 2))
    if len(steps) == 1:
        return steps[0]  # no Compose around one step: it is called once per image
    return v2.Compose(steps) if steps else v2.Identity()

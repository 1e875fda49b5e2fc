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

Three cues: ``box_cue`` (a bright square whose position encodes the class, after
Ekdeep Singh Lubana's box datasets), ``dominoes`` (the base image on top of a
class-matched image from a second dataset) and ``colour_cue`` (the image tinted with its
class's colour). :mod:`labkit_distill.shapes` has a fourth kind, whose cues are
generative factors.

**Nested cues.** A cue dataset's base may itself be a cue dataset (``box_cue`` on
``dominoes``): each level is one *mechanism* (``box``, ``dominoes``, ``colour``), the
innermost base is the content. The generic splits then vary every mechanism together
(``eval_nocue``: none of them, ``eval_randcue``: each an independent random class,
``eval_cueonly``: all of them with the content blanked), and each mechanism m gets its
own splits (:func:`split_modes`):

    eval_nocue_<m>      m removed, the other cues as trained, content kept
    eval_randcue_<m>    m of a random class, the other cues as trained, content kept
    eval_cueonly_<m>    m alone (the label's), the other cues removed, content blanked
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb
from torch.utils.data import Dataset
from torchvision.transforms import v2

from labkit.api import DataBundle, Seed, UserError, check_augment
from labkit_distill.sources import augmenter, build_source, labels_of, pixel_range, resolve_source

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

# what a mechanism shows in a split: as trained (the label on cue_fraction of the images),
# nothing, a random class on every image, the label on every image; and the generic split
# whose plan (and random stream) that mode reuses
MODE_SPLITS = {"trained": "eval", "none": "eval_nocue", "random": "eval_randcue",
               "label": "eval_cueonly"}
# generic split -> (mode of every mechanism, content kept)
GENERIC_MODES = {"eval": ("trained", True), "eval_nocue": ("none", True),
                 "eval_randcue": ("random", True), "eval_cueonly": ("label", False)}


def cue_plan(labels: np.ndarray, split: str, cue_fraction: float, num_classes: int,
             seed: int, extra: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the class its cue shows (−1: no cue) and whether its content is kept.

    Args:
        labels: ``(N,)`` labels of the split's items.
        split: ``"train"`` or a key of :data:`EVAL_SPLITS`.
        cue_fraction: share of images whose cue shows the label (``train``, ``eval``).
        num_classes: number of classes, for random cues.
        seed: the dataset's ``cue_seed``.
        extra: appended to the random stream's key (a nested level's depth: two levels of
            the same seed draw independent random classes).

    Returns:
        ``(cue, keep)``: int64 ``(N,)`` and bool ``(N,)``.
    """
    rng = np.random.default_rng([seed, PLAN_STREAMS.index(split), *extra])
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
    (which source items it holds), so soft labels and further wrappers find their rows;
    eval splits also carry the :class:`CueLayer` that built them (``layer``), so a cue
    dataset built on this one can vary this cue too.
    """

    def __init__(self, content: Dataset, labels: np.ndarray, cue: np.ndarray, keep: np.ndarray,
                 compose: Compose, transform: Callable[[torch.Tensor], torch.Tensor],
                 layer: CueLayer | None = None):
        self.content, self.labels, self.cue, self.keep = content, labels, cue, keep
        self.compose, self.transform, self.layer = compose, transform, layer
        self.base = getattr(content, "base", None)
        self.indices = getattr(content, "indices", None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.content[i]
        image = self.compose(image if self.keep[i] else None, int(self.cue[i]), i)
        return self.transform(image), int(label)


class CueLayer:
    """One mechanism of a (possibly nested) cue dataset: builds its eval images under any
    combination of modes (:data:`MODE_SPLITS`) of itself and the mechanisms inside it.

    Args:
        mechanism: this cue's name (``box``, ``dominoes``, ``colour``).
        content: the base's ``eval`` split (the content, with inner cues as trained).
        compose_for: ``compose_for(split, cue)``, ``split`` the generic split of the mode.
        cue_fraction, seed, num_classes: see :func:`cue_plan`.
    """

    def __init__(self, mechanism: str, content: Dataset,
                 compose_for: Callable[[str, np.ndarray], Compose], *, cue_fraction: float,
                 seed: int, num_classes: int):
        self.mechanism, self.content, self.compose_for = mechanism, content, compose_for
        self.cue_fraction, self.seed, self.num_classes = cue_fraction, seed, num_classes
        self.inner: CueLayer | None = getattr(content, "layer", None)
        self.labels = labels_of(content)

    def chain(self) -> list[CueLayer]:
        """This layer and those inside it, outermost first."""
        return [self] + (self.inner.chain() if self.inner is not None else [])

    def images(self, modes: list[str], keep: bool, depth: int = 0) -> CueImages:
        """Eval images with ``modes[k]`` for the k-th mechanism of :meth:`chain`, the
        innermost content blanked unless ``keep``; ``depth``: this layer's place in the
        chain (0 outermost), which separates the random draws of the levels."""
        mode, inner_modes = modes[0], modes[1:]
        content, own_keep = self.content, keep
        if self.inner is not None:  # blanking is the innermost content's business
            own_keep = True
            if inner_modes != ["trained"] * len(inner_modes) or not keep:
                content = self.inner.images(inner_modes, keep, depth + 1)
        split = MODE_SPLITS[mode]
        cue, _ = cue_plan(self.labels, split, self.cue_fraction, self.num_classes, self.seed,
                          extra=(depth,) if depth and mode == "random" else ())
        return CueImages(content, self.labels, cue, np.full(len(cue), own_keep),
                         self.compose_for(split, cue), v2.Identity(), layer=self)


def split_modes(names: list[str]) -> dict[str, tuple[list[str], bool, str]]:
    """Every eval split of a chain of mechanisms ``names`` (outermost first):
    ``{split: (mode per mechanism, content kept, description)}``; the per-mechanism
    splits only when there are two or more mechanisms (module docstring)."""
    splits = {split: ([mode] * len(names), keep, EVAL_SPLITS[split])
              for split, (mode, keep) in GENERIC_MODES.items()}
    if len(names) < 2:
        return splits
    for k, name in enumerate(names):
        def modes(own: str, others: str) -> list[str]:
            return [own if j == k else others for j in range(len(names))]
        splits[f"eval_nocue_{name}"] = (modes("none", "trained"), True,
                                        f"{name} removed, other cues as trained")
        splits[f"eval_randcue_{name}"] = (modes("random", "trained"), True,
                                          f"{name} of a random class, other cues as trained")
        splits[f"eval_cueonly_{name}"] = (modes("label", "none"), False,
                                          f"only {name}, the label's; content blanked")
    return splits


def mechanism_names(chain: list[CueLayer]) -> list[str]:
    """Unique names of the chain's mechanisms: a repeated one gets its level (``box_2``)."""
    names = [layer.mechanism for layer in chain]
    return [name if names.count(name) == 1 else f"{name}_{k + 1}" for k, name in enumerate(names)]


def cue_bundle(name: str, mechanism: str, content: DataBundle,
               compose_for: Callable[[str, np.ndarray], Compose], *, cue_fraction: float,
               cue_seed: int, in_channels: int, resolution: int, augment: str,
               info: dict[str, Any]) -> DataBundle:
    """Assemble a cue dataset: the train split and every eval split of :func:`split_modes`.

    Args:
        name: the dataset's registry name (``info["name"]``).
        mechanism: the cue's name in split names (``box``).
        content: the base bundle (unaugmented) whose ``train_plain`` and ``evals["eval"]``
            give the content images; a cue dataset's eval split brings its own cues along.
        compose_for: ``compose_for(split, cue)`` returns the split's :data:`Compose`.
        cue_fraction, cue_seed: see :func:`cue_plan`.
        in_channels, resolution: shape of the composed images.
        augment: labkit augmentation preset, applied to the composed training images.
        info: extra entries of ``DataBundle.info``.
    """
    labels = labels_of(content.train_plain)
    cue, keep = cue_plan(labels, "train", cue_fraction, content.num_classes, cue_seed)
    compose = compose_for("train", cue)
    train_plain = CueImages(content.train_plain, labels, cue, keep, compose, v2.Identity())
    train = CueImages(content.train_plain, labels, cue, keep, compose,
                      augmenter(resolution, augment))
    layer = CueLayer(mechanism, content.evals["eval"], compose_for, cue_fraction=cue_fraction,
                     seed=cue_seed, num_classes=content.num_classes)
    chain = layer.chain()
    splits = split_modes(mechanism_names(chain))
    evals = {split: layer.images(modes, keep) for split, (modes, keep, _) in splits.items()}
    return DataBundle(
        train=train, evals=evals, train_plain=train_plain, num_classes=content.num_classes,
        in_channels=in_channels, resolution=resolution,
        info={"name": name, "base": content.info, "classes": content.info.get("classes"),
              "mean": content.info.get("mean"), "std": content.info.get("std"),
              "augment": augment, "mechanisms": mechanism_names(chain),
              "splits": {split: description for split, (_, _, description) in splits.items()},
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
            cue_fraction: float = 1.0, box_size: int | None = None, cue_seed: Seed = 0,
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
    return cue_bundle("box_cue", "box", content, lambda split, cue: box, cue_fraction=cue_fraction,
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
             resolution: int = 16, cue_fraction: float = 1.0, cue_seed: Seed = 0,
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

    return cue_bundle("dominoes", "dominoes", content, compose_for, cue_fraction=cue_fraction,
                      cue_seed=cue_seed, in_channels=channels, resolution=resolution,
                      augment=augment, info={"second": other.info})


def class_colours(num_classes: int) -> torch.Tensor:
    """``(C, 3, 1, 1)`` RGB colours in [0, 1]: class c is the fully saturated hue c/C."""
    hues = torch.arange(num_classes, dtype=torch.float64) / num_classes
    rgb = hsv_to_rgb(torch.stack([hues, torch.ones_like(hues), torch.ones_like(hues)], 1).numpy())
    return torch.from_numpy(rgb).float().view(num_classes, 3, 1, 1)


class Tint:
    """Blends the image towards its cue class's colour: x̃ = (1 − s)·x + s·colour_c.

    ``x`` is the content in [0, 1] (the base's pixels brought back from its normalisation,
    grayscale repeated to RGB; a blanked image is black), ``s`` the ``strength``; without
    a cue the image stays gray (x̃ = x).
    """

    def __init__(self, num_classes: int, strength: float, black: torch.Tensor,
                 white: torch.Tensor, resolution: int):
        self.colours, self.strength = class_colours(num_classes), strength
        self.black, self.scale = black, white - black
        self.blank = torch.zeros(3, resolution, resolution)

    def __call__(self, image: torch.Tensor | None, cue: int, i: int) -> torch.Tensor:
        if image is None:
            canvas = self.blank
        else:
            canvas = ((image - self.black) / self.scale).expand(3, -1, -1)
        if cue < 0:
            return canvas.clone()
        return (1 - self.strength) * canvas + self.strength * self.colours[cue]


def colour_cue(base: str | dict[str, Any] = "digits", resolution: int = 16,
               cue_fraction: float = 1.0, strength: float = 0.5, cue_seed: Seed = 0,
               augment: str = "none") -> DataBundle:
    """Any base dataset tinted with a colour that encodes the label (a coloured-MNIST cue).

    Args:
        base: the content dataset (a name or ``{"name": …, params}``), built at
            ``resolution`` without augmentation; grayscale or RGB.
        resolution: image side in pixels.
        cue_fraction: share of training images tinted with their label's colour (the rest
            stay gray).
        strength: s in (0, 1], how far each pixel moves towards the colour (see :class:`Tint`).
        cue_seed: seed of which image gets which colour.
        augment: augmentation preset applied after tinting.

    Returns:
        A :class:`DataBundle` of RGB images in [0, 1] (not normalised) with the splits of
        :func:`split_modes`; ``eval_cueonly`` images are the uniform colour s·colour_c.
    """
    check_cue_options(cue_fraction, augment)
    if not 0.0 < strength <= 1.0:
        raise UserError(f"colour_cue strength={strength}: give a share in (0, 1]")
    content = build_source(resolve_source(base), resolution)
    if content.in_channels not in (1, 3):
        raise UserError(f"colour_cue tints grayscale or RGB images; the base has "
                        f"{content.in_channels} channels")
    black, white = pixel_range(content)
    tint = Tint(content.num_classes, strength, black, white, resolution)
    return cue_bundle("colour_cue", "colour", content, lambda split, cue: tint,
                      cue_fraction=cue_fraction, cue_seed=cue_seed, in_channels=3,
                      resolution=resolution, augment=augment, info={"mean": None, "std": None})

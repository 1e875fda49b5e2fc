"""A procedural shapes dataset with known generative factors, some made label-predictive.

Each RGB image shows one shape on a background. The label is the shape (one of
:data:`SHAPES`); the other factors (:data:`FACTORS`) vary at random, except those named
in ``cues``, which show the label's class (hue c/C, the c-th of C scales, background hue
c/C, the c-th of C positions on a ring around the centre) on a ``cue_fraction`` of the
training images and take a neutral value on the rest (white shape, medium scale, black
background, centred). The eval splits follow :data:`labkit_distill.cues.EVAL_SPLITS`:
``eval_nocue`` sets the cue factors neutral, ``eval_randcue`` to a random class's values,
``eval_cueonly`` shows a random shape with the label's cue values. Images are rendered
once, in memory, from ``seed`` (like the 3D-shapes data set, without its 3D renderer).
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb

from labkit.api import DataBundle, Seed, SplitDataset, TensorImages, UserError
from labkit_distill.cues import EVAL_SPLITS, PLAN_STREAMS, check_cue_options, cue_plan
from labkit_distill.sources import augmenter

SHAPES = ("disk", "square", "triangle", "ring", "plus", "cross", "diamond", "frame", "hbar",
          "vbar")
FACTORS = ("hue", "scale", "background", "position")
SCALES = (0.5, 1.0)  # range of a shape's half-size, in units of 0.3 × resolution
BACKGROUND_VALUE = 0.35  # brightness of coloured backgrounds: dim, so shapes stand out


def _masks(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels inside shape ``kind``; u, v are coordinates in units of the half-size
    (v grows downwards)."""
    a, b = np.abs(u), np.abs(v)
    r = np.hypot(u, v)
    box = np.maximum(a, b)
    return {
        0: r <= 1.0,
        1: box <= 0.85,
        2: (v <= 0.8) & (v >= 2.0 * a - 1.0),
        3: (r <= 1.0) & (r >= 0.55),
        4: ((a <= 0.3) | (b <= 0.3)) & (box <= 1.0),
        5: (np.abs(a - b) <= 0.35) & (box <= 1.0),
        6: a + b <= 1.0,
        7: (box <= 0.95) & (box >= 0.6),
        8: (b <= 0.35) & (a <= 1.0),
        9: (a <= 0.35) & (b <= 1.0),
    }[kind]


def render(shape: np.ndarray, hue: np.ndarray, scale: np.ndarray, background: np.ndarray,
           position: np.ndarray, resolution: int) -> torch.Tensor:
    """Draw one image per row of factors.

    Args:
        shape: ``(N,)`` index into :data:`SHAPES`.
        hue: ``(N,)`` shape hue in [0, 1), NaN for white.
        scale: ``(N,)`` half-size in units of 0.3 × resolution.
        background: ``(N,)`` background hue in [0, 1), NaN for black.
        position: ``(N, 2)`` centre offset (x, y) in pixels from the image centre.
        resolution: image side in pixels.

    Returns:
        float32 ``(N, 3, resolution, resolution)`` in [0, 1].
    """
    n = len(shape)
    grid = np.arange(resolution) + 0.5 - resolution / 2  # pixel centres
    half = (scale * 0.3 * resolution)[:, None, None]
    u = (grid[None, None, :] - position[:, 0, None, None]) / half
    v = (grid[None, :, None] - position[:, 1, None, None]) / half
    inside = np.zeros((n, resolution, resolution), dtype=bool)
    for kind in np.unique(shape):
        rows = shape == kind
        inside[rows] = _masks(int(kind), u[rows], v[rows])
    white, black = np.isnan(hue), np.isnan(background)
    ink = hsv_to_rgb(np.stack([np.nan_to_num(hue), (~white).astype(float), np.ones(n)], axis=1))
    paper = hsv_to_rgb(np.stack([np.nan_to_num(background), np.ones(n),
                                 np.where(black, 0.0, BACKGROUND_VALUE)], axis=1))
    images = np.where(inside[:, None], ink[:, :, None, None], paper[:, :, None, None])
    return torch.from_numpy(images.astype(np.float32))


def _factors(labels: np.ndarray, split: str, cues: tuple[str, ...], cue_fraction: float,
             classes: int, resolution: int, seed: int) -> dict[str, np.ndarray]:
    """The factors of every image of a split (see the module docstring)."""
    n = len(labels)
    cue, keep = cue_plan(labels, split, cue_fraction, classes, seed)
    rng = np.random.default_rng([seed, PLAN_STREAMS.index(split), 1])
    radius = resolution / 6  # position offsets stay within the image at the largest scale
    angle = rng.uniform(0, 2 * np.pi, n)
    random = {
        "hue": rng.random(n),
        "scale": rng.uniform(*SCALES, n),
        "background": rng.random(n),
        "position": radius * np.sqrt(rng.random(n))[:, None] * np.stack([np.cos(angle),
                                                                          np.sin(angle)], 1),
    }
    c = np.maximum(cue, 0)
    cued = {
        "hue": c / classes,
        "scale": SCALES[0] + (SCALES[1] - SCALES[0]) * c / (classes - 1),
        "background": c / classes,
        "position": radius * np.stack([np.cos(2 * np.pi * c / classes),
                                       np.sin(2 * np.pi * c / classes)], 1),
    }
    neutral = {"hue": np.nan, "scale": sum(SCALES) / 2, "background": np.nan, "position": 0.0}
    factors = {"shape": np.where(keep, labels, rng.integers(0, classes, n))}
    for name in FACTORS:
        if name not in cues:
            factors[name] = random[name]
            continue
        has_cue = (cue >= 0)[:, None] if name == "position" else cue >= 0
        factors[name] = np.where(has_cue, cued[name], neutral[name])
    return factors


def shapes(resolution: int = 16, classes: int = 10, cues: tuple[str, ...] = (),
           cue_fraction: float = 1.0, train_size: int = 2000, eval_size: int = 500,
           seed: Seed = 0, augment: str = "none") -> DataBundle:
    """Procedural shapes, labelled by shape, with chosen factors made label-predictive.

    Args:
        resolution: image side in pixels.
        classes: number of shapes used (the first ``classes`` of :data:`SHAPES`), 2–10.
        cues: factors of :data:`FACTORS` that show the label (the rest vary at random).
        cue_fraction: share of training images whose cue factors show the label.
        train_size, eval_size: images in the training split and in each eval split.
        seed: seed of labels, factors and cues (not the run's seed).
        augment: labkit augmentation preset for the training images.

    Returns:
        A :class:`DataBundle` of RGB images in [0, 1] (not normalised), balanced classes,
        eval splits as in :data:`labkit_distill.cues.EVAL_SPLITS`; ``info["factors"]``
        holds every split's factors.
    """
    check_cue_options(cue_fraction, augment)
    unknown = set(cues) - set(FACTORS)
    if unknown:
        raise UserError(f"shapes cues {sorted(unknown)}: unknown factor; choose among "
                        f"{', '.join(FACTORS)}")
    if not 2 <= classes <= len(SHAPES):
        raise UserError(f"shapes classes={classes}: give 2 to {len(SHAPES)}")
    splits = {}
    for split, size in (("train", train_size), *((s, eval_size) for s in EVAL_SPLITS)):
        # stream 2: the plan uses [seed, split] and the factors [seed, split, 1]
        rng = np.random.default_rng([seed, PLAN_STREAMS.index(split), 2])
        labels = rng.permutation(np.arange(size) % classes)
        factors = _factors(labels, split, tuple(cues), cue_fraction, classes, resolution, seed)
        images = render(factors["shape"], factors["hue"], factors["scale"],
                        factors["background"], factors["position"], resolution)
        splits[split] = (TensorImages(images, torch.from_numpy(labels)), factors)
    plain = splits["train"][0]
    return DataBundle(
        train=SplitDataset(plain, np.arange(train_size), augmenter(resolution, augment)),
        evals={split: splits[split][0] for split in EVAL_SPLITS},
        train_plain=plain,
        num_classes=classes,
        in_channels=3,
        resolution=resolution,
        info={"name": "shapes", "classes": list(SHAPES[:classes]), "mean": None, "std": None,
              "augment": augment, "cues": list(cues), "splits": EVAL_SPLITS,
              "factors": {split: factors for split, (_, factors) in splits.items()},
              "sizes": {split: len(ds) for split, (ds, _) in splits.items()}},
    )

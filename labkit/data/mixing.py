"""Batch augmentations that mix samples: mixup and cutmix, for every training method.

The spec's ``batch_augment`` names one (``{"name": "mixup", "alpha": 0.2}``) or a list to
draw one from per batch; the engine applies it to every training batch
``(images, targets, …)`` on the device, before ``method.training_step``, which then
receives the mixed images and *soft targets*: ``(N, C)`` probability rows.

* mixup (Zhang et al. 2018): x̃ = λ·x + (1 − λ)·x[π], λ ~ Beta(α, α);
* cutmix (Yun et al. 2019): a box of x[π] of area ≈ (1 − λ)·H·W pasted into x (the box
  lies inside the image), λ then set to the exact share of pixels left from x;
* the targets mix alike: ỹ = λ·onehot(y) + (1 − λ)·onehot(y[π]), π a permutation of the
  batch. A batch left unmixed (``prob`` < 1) gets ỹ = onehot(y).

Every draw (the choice of augmentation, whether to mix, λ, π, the box) comes from
torch's global CPU generator, in that order, whose state every checkpoint holds
(mid-epoch ones too), so a resumed run mixes exactly as an uninterrupted one, and the
draws do not depend on the device. Further batch items (a sample index) pass unchanged:
they belong to the sample weighted λ. Mixing is per batch by nature: a micro-batch
(``accumulate``) or a process's shard (``nproc``) is mixed within itself, so such runs
differ from one large batch, unlike the per-sample augmentation before it.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from labkit.core.errors import UserError
from labkit.spec.batch_augment import CutMix, Mixup, check_soft_targets


def mix_images(images: torch.Tensor, kind: Literal["mixup", "cutmix"],
               alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each image with another image of the batch.

    Draws (torch's global CPU generator, in this order): λ ~ Beta(α, α), the permutation
    π, and for cutmix the box's top and left corner.

    Returns:
        ``(mixed images, π (N,) on the images' device, λ)``; for cutmix λ is the exact
        share of pixels taken from ``images`` (the box holds ``images[π]``).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(images)).to(images.device)
    if kind == "mixup":
        return lam * images + (1 - lam) * images[perm], perm, lam
    h, w = images.shape[-2:]
    cut_h, cut_w = round(h * (1 - lam) ** 0.5), round(w * (1 - lam) ** 0.5)
    top = int(torch.randint(0, h - cut_h + 1, ()))
    left = int(torch.randint(0, w - cut_w + 1, ()))
    mixed = images.clone()
    mixed[..., top:top + cut_h, left:left + cut_w] = images[perm][..., top:top + cut_h,
                                                                  left:left + cut_w]
    return mixed, perm, 1 - cut_h * cut_w / (h * w)


def mix_targets(targets: torch.Tensor, perm: torch.Tensor | None, lam: float,
                num_classes: int) -> torch.Tensor:
    """Soft targets ``(N, C)`` (float32): λ·onehot(y) + (1 − λ)·onehot(y[π]); one-hot rows
    when ``perm`` is ``None``. ``targets`` may already be soft ``(N, C)``."""
    soft = (targets.float() if targets.dim() == 2
            else F.one_hot(targets.long(), num_classes).float())
    if perm is None:
        return soft
    return lam * soft + (1 - lam) * soft[perm]


def hard_labels(targets: torch.Tensor | None) -> torch.Tensor | None:
    """Class labels ``(N,)`` for the metrics: soft targets ``(N, C)`` become their argmax
    (for a mixed pair, the label weighted most; ties go to the lower class); labels pass
    unchanged."""
    if targets is not None and targets.dim() == 2 and targets.is_floating_point():
        return targets.argmax(dim=1)
    return targets


class BatchMixer:
    """The spec's ``batch_augment`` applied to training batches.

    Args:
        spec: one augmentation's params (a dict with ``name``) or a list of them (one
            drawn uniformly per batch).
        num_classes: C, the width of the soft targets.
    """

    def __init__(self, spec: dict[str, Any] | list[dict[str, Any]], num_classes: int):
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise UserError("batch_augment is an empty list; give an augmentation such as "
                            "{\"name\": \"mixup\"} or null")
        self.choices = [(Mixup if s["name"] == "mixup" else CutMix).model_validate(s)
                        for s in specs]
        self.num_classes = num_classes

    def __call__(self, batch: Any) -> Any:
        """``(images, targets, *rest)`` → ``(mixed images, soft targets, *rest)``."""
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise UserError("batch_augment mixes batches of (images, labels), but the "
                            "method's training set yields something else; set "
                            "batch_augment to null for this method")
        images, targets, *rest = batch
        choice = self.choices[0]
        if len(self.choices) > 1:
            choice = self.choices[int(torch.randint(len(self.choices), ()))]
        perm, lam = None, 1.0
        if choice.prob >= 1 or float(torch.rand(())) < choice.prob:
            images, perm, lam = mix_images(images, choice.name, choice.alpha)
        return type(batch)([images, mix_targets(targets, perm, lam, self.num_classes), *rest])


def batch_mixer(spec: Any, num_classes: int, method: Any,
                method_name: str) -> BatchMixer | None:
    """The run's :class:`BatchMixer`, or ``None`` without ``batch_augment``.

    Raises:
        UserError: ``method`` does not accept soft targets
            (its ``accepts_soft_targets`` is false).
    """
    if spec is None:
        return None
    check_soft_targets(method, method_name)
    return BatchMixer(spec, num_classes)

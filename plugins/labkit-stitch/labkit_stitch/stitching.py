"""Model stitching (Bansal et al. 2021): the bottom of network A, a trainable stitch, the
top of network B.

A stitched network reads images with A up to layer i, maps A's activation there with a
small trainable :class:`Stitch` into the shape of B's activation at layer j, and
finishes with B from layer j on. Both halves are frozen: no gradient reaches their
weights, and their BatchNorm layers keep A's and B's own statistics.

In labkit the stitched network is an ordinary model, ``stitched``, built from two
referenced runs (see :mod:`labkit_stitch.refs`). So one stitch is one labkit run:
trained by the unchanged engine (the default method ``supervised`` trains the stitch
on the task, because it is the only part that needs gradients), checkpointed, resumed,
and logged. Its eval columns are the stitched network's accuracy, and grids over layers
are ordinary grid axes. The method ``autoencoder_stitch`` instead fits the stitch to
B's own activations at layer j.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from labkit.api import Method, StepResult, UserError
from labkit_stitch import cut
from labkit_stitch.refs import RunRef, random_network, trained_network


class Stitch(nn.Module):
    """Trainable map from A's activation at layer i to the shape of B's at layer j.

    Maps ``(N, C, H, W)``: BatchNorm, 1×1 convolution, BatchNorm (Bansal et al. 2021),
    after resampling A's map to B's height × width where they differ (bilinear,
    antialiased when shrinking). Vectors ``(N, F)``: BatchNorm, linear, BatchNorm; a map
    that feeds a vector layer is flattened first. ``depth`` > 1 puts ``depth - 1``
    hidden layers (1×1 convolution or linear of B's width, BatchNorm, ReLU) before the
    last 1×1 convolution or linear.

    Args:
        sender_shape: one sample of A's activation, ``(C, H, W)`` or ``(F,)``.
        receiver_shape: one sample of B's activation, ``(C', H', W')`` or ``(F',)``.
        depth: number of 1×1 convolutions (or linear layers).

    Raises:
        UserError: A gives a vector where B needs a map, or a shape is neither.
    """

    def __init__(self, sender_shape: tuple[int, ...], receiver_shape: tuple[int, ...],
                 depth: int = 1):
        super().__init__()
        if len(receiver_shape) == 3 and len(sender_shape) == 3:
            self.size: tuple[int, ...] | None = tuple(receiver_shape[1:])
            width = sender_shape[0]
            # no bias: the BatchNorm after each convolution has its own shift
            norm, linear = nn.BatchNorm2d, partial(nn.Conv2d, kernel_size=1, bias=False)
        elif len(receiver_shape) == 1 and len(sender_shape) in (1, 3):
            self.size = None
            width = math.prod(sender_shape)
            norm, linear = nn.BatchNorm1d, partial(nn.Linear, bias=False)
        else:
            raise UserError(f"cannot stitch an activation of shape {sender_shape} into one of "
                            f"shape {receiver_shape}: stitches join maps (C, H, W) to maps, and "
                            f"maps or vectors (F,) to vectors; pick other layers")
        out = receiver_shape[0]
        layers: list[nn.Module] = [norm(width)]
        for _ in range(depth - 1):
            layers += [linear(width, out), norm(out), nn.ReLU()]
            width = out
        layers += [linear(width, out), norm(out)]
        self.layers = nn.Sequential(*layers)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        """A's activation ``(N, C, H, W)`` or ``(N, F)`` → B's shape ``(N, …)``."""
        if self.size is None:
            activation = activation.flatten(1)
        elif tuple(activation.shape[2:]) != self.size:
            activation = F.interpolate(activation, size=self.size, mode="bilinear",
                                       antialias=True, align_corners=False)
        return self.layers(activation)


class StitchedNetwork(nn.Module):
    """images ``(N, C, H, W)`` → A up to layer i → stitch → B from layer j → logits ``(N, K)``.

    Attributes:
        sender: A from its input to layer i (frozen).
        stitch: the trainable :class:`Stitch`.
        receiver: B from layer j to its logits (frozen).
        receiver_bottom: B from its input to layer j (frozen, sharing B's weights): the
            activation the stitch stands in for, target of the autoencoder stitch.
    """

    def __init__(self, sender: nn.Module, stitch: Stitch, receiver: nn.Module,
                 receiver_bottom: nn.Module):
        super().__init__()
        self.sender, self.stitch = sender, stitch
        self.receiver, self.receiver_bottom = receiver, receiver_bottom
        for part in self.frozen():
            part.requires_grad_(False)
        self.train(True)

    def frozen(self) -> list[nn.Module]:
        """The parts taken from A and B, never trained."""
        return [self.sender, self.receiver, self.receiver_bottom]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.receiver(self.stitch(self.sender(images)))

    def train(self, mode: bool = True) -> "StitchedNetwork":
        """Switch the stitch only; A's and B's parts stay in eval mode, so their
        BatchNorm layers use the statistics A and B were trained with."""
        super().train(mode)
        for part in self.frozen():
            part.eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The stitch's weights only.

        The frozen halves are rebuilt from their own runs, so a checkpoint is as small
        as the stitch (a grid of stitches between large networks would otherwise hold
        a copy of both networks per cell).
        """
        return self.stitch.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load what :meth:`state_dict` returned into the stitch."""
        return self.stitch.load_state_dict(state_dict, strict=strict, assign=assign)


def stitch_networks(sender: nn.Module, sender_layer: str, receiver: nn.Module,
                    receiver_layer: str, example: torch.Tensor, depth: int = 1) -> StitchedNetwork:
    """Join ``sender`` up to ``sender_layer`` and ``receiver`` from ``receiver_layer``.

    Args:
        sender, receiver: traceable networks (their weights are shared, not copied).
        sender_layer, receiver_layer: layer names (see :mod:`labkit_stitch.cut`).
        example: a batch of at least two images ``(N, C, H, W)`` shaped like the data,
            used once to measure both activations' shapes.
        depth: the stitch's depth (see :class:`Stitch`).

    Raises:
        UserError: a layer is missing or not a cut point, or the shapes cannot be joined.
    """
    sender_part = cut.bottom(sender, sender_layer)
    receiver_bottom = cut.bottom(receiver, receiver_layer)
    stitch = Stitch(cut.output_shape(sender_part, example),
                    cut.output_shape(receiver_bottom, example), depth)
    return StitchedNetwork(sender_part, stitch, cut.top(receiver, receiver_layer),
                           receiver_bottom)


class StitchedParams(BaseModel):
    """Spec parameters of the model ``stitched``."""

    model_config = ConfigDict(extra="forbid")

    sender: RunRef = Field(description="run of network A, whose bottom feeds the stitch")
    receiver: RunRef = Field(description="run of network B, whose top takes the stitch's output")
    sender_layer: str = Field(description="layer of A whose output the stitch reads "
                                          "(module path, with '-' or '.')")
    receiver_layer: str = Field(description="layer of B whose output the stitch replaces; "
                                            "B runs on from there")
    sender_weights: Literal["trained", "random"] = Field(
        "trained", description="trained: A's final weights; random: A's architecture with "
                               "fresh weights from A's seed (the baseline of the debiased table)")
    depth: int = Field(1, ge=1, description="1×1 convolutions (linear layers) in the stitch: "
                                            "1 as in Bansal et al.; more adds hidden layers")

    @field_validator("sender_layer", "receiver_layer")
    @classmethod
    def _dash_form(cls, layer: str) -> str:
        # one spelling, so that 'layer2.0' and 'layer2-0' are the same run
        return cut.canonical(layer)


def stitched(num_classes: int, in_channels: int, resolution: int,
             **params: Any) -> StitchedNetwork:
    """Model factory of ``stitched`` (parameters: :class:`StitchedParams`).

    Builds A (trained, or freshly initialised for ``sender_weights: random``) and the
    trained B from their runs, training a run first when it has not finished, and joins
    them for images ``(N, in_channels, resolution, resolution)``.

    Raises:
        UserError: the data does not fit A's input or B's classes, or the layers do not
            join (see :func:`stitch_networks`).
    """
    p = StitchedParams.model_validate(params)
    sender_run = p.sender.run_config()
    sender = (trained_network(sender_run) if p.sender_weights == "trained"
              else random_network(sender_run))
    receiver = trained_network(p.receiver.run_config())
    example = torch.zeros(2, in_channels, resolution, resolution)
    try:
        network = stitch_networks(sender, p.sender_layer, receiver, p.receiver_layer, example,
                                  p.depth)
    except RuntimeError as exc:  # torch's shape errors, raised by a first layer
        raise UserError(f"the stitch run's images ({in_channels} channel(s), {resolution} px) "
                        f"do not fit network A or B: {exc}; stitch on their data set") from None
    classes = cut.output_shape(network, example)[0]
    if classes != num_classes:
        raise UserError(f"network B has {classes} outputs but the stitch run's data set has "
                        f"{num_classes} classes; stitch on B's data set")
    return network


class AutoencoderStitch(Method):
    """Fit the stitch to reproduce B's own activation at layer j: the "autoencoder" stitch.

    Loss: mean squared error, averaged over every element of the activation, between the
    stitch's output and B's own activation at layer j for the same (augmented) images.
    Labels play no part in the fit. The train and eval metrics still score the stitched
    network's logits, so its accuracy compares directly with the task-trained stitch
    (method ``supervised``).
    """

    def __init__(self, context: Any, params: BaseModel):
        super().__init__(context, params)
        if not isinstance(context.model, StitchedNetwork):
            raise UserError(f"method 'autoencoder_stitch' fits the stitch of the model "
                            f"'stitched'; this run's model is {context.config['model']['name']!r}")

    def parameters(self):
        """The stitch's parameters (the halves are frozen)."""
        return self.context.model.stitch.parameters()

    def training_step(self, batch: Any) -> StepResult:
        images, labels = batch
        model = self.context.model
        with torch.no_grad():
            sent = model.sender(images)
            target = model.receiver_bottom(images)
        stitched_activation = model.stitch(sent)
        with torch.no_grad():  # only for the train metrics
            logits = model.receiver(stitched_activation)
        loss = F.mse_loss(stitched_activation, target)
        return StepResult(loss=loss, batch_size=len(labels), logits=logits, targets=labels)

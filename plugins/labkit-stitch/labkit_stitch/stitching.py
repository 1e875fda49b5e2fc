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

import json
import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from labkit.api import Method, RunConfig, StepResult, UserError, build_component
from labkit.api import registries as labkit_registries
from labkit_stitch import cut
from labkit_stitch.refs import NetworkRef, random_network, trained_network


class Unstitchable(UserError):
    """One cell of a stitching grid cannot be built: A's activation at layer i cannot be
    mapped into B's at layer j (a vector into a map), or B cannot start at layer j (a
    skip connection crosses the cut). A property of the cell, not a typo: ``labkit
    stitch-table`` records it in its table and goes on."""


def stitch_problem(sender_shape: tuple[int, ...], receiver_shape: tuple[int, ...]) -> str | None:
    """Why a stitch cannot map one sample of A's activation ``sender_shape`` into B's
    ``receiver_shape``, or ``None`` when it can (maps into maps; maps or vectors into
    vectors)."""
    if len(receiver_shape) == 3 and len(sender_shape) == 3:
        return None
    if len(receiver_shape) == 1 and len(sender_shape) in (1, 3):
        return None
    return (f"cannot stitch an activation of shape {sender_shape} into one of shape "
            f"{receiver_shape}: stitches join maps (C, H, W) to maps, and maps or vectors "
            f"(F,) to vectors; pick other layers")


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
        Unstitchable: A gives a vector where B needs a map, or a shape is neither
            (:func:`stitch_problem`).
    """

    def __init__(self, sender_shape: tuple[int, ...], receiver_shape: tuple[int, ...],
                 depth: int = 1):
        super().__init__()
        problem = stitch_problem(sender_shape, receiver_shape)
        if problem:
            raise Unstitchable(problem)
        if len(receiver_shape) == 3:
            self.size: tuple[int, ...] | None = tuple(receiver_shape[1:])
            width = sender_shape[0]
            # no bias: the BatchNorm after each convolution has its own shift
            norm, linear = nn.BatchNorm2d, partial(nn.Conv2d, kernel_size=1, bias=False)
        else:
            self.size = None
            width = math.prod(sender_shape)
            norm, linear = nn.BatchNorm1d, partial(nn.Linear, bias=False)
        out = receiver_shape[0]
        layers: list[nn.Module] = [norm(width)]
        for _ in range(depth - 1):
            layers += [linear(width, out), norm(out), nn.ReLU()]
            width = out
        layers += [linear(width, out), norm(out)]
        self.layers = nn.Sequential(*layers)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        """A's activation ``(N, C, H, W)`` or ``(N, F)`` → B's shape ``(N, …)``."""
        return self.layers(to_receiver_grid(activation, self.size))


def to_receiver_grid(activation: torch.Tensor, size: tuple[int, ...] | None) -> torch.Tensor:
    """What a stitch's first layer reads: A's map ``(N, C, H, W)`` resampled to B's
    height × width ``size`` where they differ (bilinear, antialiased when shrinking), or,
    for ``size=None`` (B takes a vector), A's activation flattened to ``(N, F)``."""
    if size is None:
        return activation.flatten(1)
    if tuple(activation.shape[2:]) != size:
        return F.interpolate(activation, size=size, mode="bilinear", antialias=True,
                             align_corners=False)
    return activation


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
        UserError: a layer is missing.
        Unstitchable: B cannot start at ``receiver_layer`` (a skip connection crosses
            the cut), or the shapes cannot be joined.
    """
    sender_part = cut.bottom(sender, sender_layer)
    receiver_bottom = cut.bottom(receiver, receiver_layer)
    try:
        receiver_top = cut.top(receiver, receiver_layer)
    except cut.CrossedSkip as exc:
        raise Unstitchable(str(exc)) from None
    stitch = Stitch(cut.output_shape(sender_part, example),
                    cut.output_shape(receiver_bottom, example), depth)
    return StitchedNetwork(sender_part, stitch, receiver_top, receiver_bottom)


class StitchedParams(BaseModel):
    """Spec parameters of the model ``stitched``."""

    model_config = ConfigDict(extra="forbid")

    sender: NetworkRef = Field(description="run of network A, whose bottom feeds the stitch")
    receiver: NetworkRef = Field(description="run of network B, whose top takes the stitch's output")
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
    def _layer_exists(cls, layer: str, info: ValidationInfo) -> str:
        # one spelling, so that 'layer2.0' and 'layer2-0' are the same run
        layer = cut.canonical(layer)
        # checked at validation (labkit plan, run --dry-run, stitch-table), before any
        # training, on the referenced network's architecture
        ref = info.data.get("sender" if info.field_name == "sender_layer" else "receiver")
        if ref is not None:
            run = ref.run_config()
            names = _layer_names(json.dumps(run.config["model"], sort_keys=True),
                                 _resolution(run), id(labkit_registries()))
            if names is not None and layer not in names[1]:
                raise ValueError(cut.unknown_layer_message(names[0], layer, names[1]))
        return layer


def _resolution(run: RunConfig) -> int:
    resolution = run.config["dataset"].get("resolution")
    return resolution if isinstance(resolution, int) else 32


@lru_cache(maxsize=64)
def _layer_names(model_json: str, resolution: int,
                 registries_id: int) -> tuple[nn.Module, list[str]] | None:
    """A network's architecture, built on the ``meta`` device (no weights, no training),
    and its layer names; ``None`` when it cannot be built or traced without its data
    (such a network's layers are checked when the stitch is built)."""
    model = {k: v for k, v in json.loads(model_json).items() if k != "weights"}
    if model["name"] == "stitched":  # building it would load (even train) its networks
        return None
    try:
        with torch.device("meta"):
            network = build_component(labkit_registries(), "models", model, num_classes=10,
                                      in_channels=3, resolution=resolution)
        return network, cut.layer_names(network)
    except Exception:  # a shape this check guessed; the real build reports real problems
        return None


def join(sender: nn.Module, receiver: nn.Module, params: StitchedParams, num_classes: int,
         in_channels: int, resolution: int) -> StitchedNetwork:
    """:func:`stitch_networks` for the stitch run's images ``(N, in_channels, resolution,
    resolution)`` and ``num_classes`` classes.

    Raises:
        UserError: the data does not fit A's input or B's classes.
        Unstitchable: the cell cannot be built (see :func:`stitch_networks`).
    """
    example = torch.zeros(2, in_channels, resolution, resolution)
    try:
        network = stitch_networks(sender, params.sender_layer, receiver, params.receiver_layer,
                                  example, params.depth)
    except RuntimeError as exc:  # torch's shape errors, raised by a first layer
        raise UserError(f"the stitch run's images ({in_channels} channel(s), {resolution} px) "
                        f"do not fit network A or B: {exc}; stitch on their data set") from None
    classes = cut.output_shape(network, example)[0]
    if classes != num_classes:
        raise UserError(f"network B has {classes} outputs but the stitch run's data set has "
                        f"{num_classes} classes; stitch on B's data set")
    return network


def stitched(num_classes: int, in_channels: int, resolution: int,
             **params: Any) -> StitchedNetwork:
    """Model factory of ``stitched`` (parameters: :class:`StitchedParams`).

    Builds A (trained, or freshly initialised for ``sender_weights: random``) and the
    trained B from their runs, training a run first when it has not finished, and joins
    them for images ``(N, in_channels, resolution, resolution)``.

    Raises:
        UserError: the data does not fit A's input or B's classes.
        Unstitchable: the layers do not join (see :func:`stitch_networks`).
    """
    p = StitchedParams.model_validate(params)
    sender_run = p.sender.run_config()
    sender = (trained_network(sender_run) if p.sender_weights == "trained"
              else random_network(sender_run))
    receiver = trained_network(p.receiver.run_config())
    return join(sender, receiver, p, num_classes, in_channels, resolution)


@dataclass
class Cell:
    """What :class:`CellChecker` found for one stitch run, before anything trains.

    Attributes:
        problem: why the cell is unstitchable (:class:`Unstitchable`'s message), or
            ``None``.
        sender_depth, receiver_depth: the layers' positions in A's and B's forward pass
            (:func:`labkit_stitch.cut.depth`): a deeper layer has a larger number.
    """

    problem: str | None
    sender_depth: int
    receiver_depth: int


class CellChecker:
    """Checks stitch runs' cells on A's and B's architectures (fresh weights, untrained:
    shapes and cut points do not depend on the weights), so a grid's unstitchable cells
    are known before anything trains. Networks and data sets are built once each."""

    def __init__(self) -> None:
        self._networks: dict[str, nn.Module] = {}
        self._data: dict[str, Any] = {}

    def _network(self, run: RunConfig) -> nn.Module:
        key = str(run.directory)
        if key not in self._networks:
            self._networks[key] = random_network(run)
        return self._networks[key]

    def __call__(self, run: RunConfig) -> Cell:
        """Check one stitch run.

        Raises:
            UserError: a mistake that is no property of the cell (the stitch run's data
                does not fit A or B).
        """
        key = json.dumps(run.config["dataset"], sort_keys=True)
        if key not in self._data:
            self._data[key] = build_component(labkit_registries(), "datasets",
                                              run.config["dataset"])
        data = self._data[key]
        p = StitchedParams.model_validate(
            {k: v for k, v in run.config["model"].items() if k != "name"})
        sender, receiver = (self._network(ref.run_config()) for ref in (p.sender, p.receiver))
        try:
            join(sender, receiver, p, data.num_classes, data.in_channels, data.resolution)
            problem = None
        except Unstitchable as exc:
            problem = str(exc)
        return Cell(problem, cut.depth(sender, p.sender_layer),
                    cut.depth(receiver, p.receiver_layer))


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


def plan_notes(runs: list[RunConfig]) -> list[str | None]:
    """What ``labkit plan`` and ``labkit run`` say about stitch runs before training: the
    cells whose cut shapes cannot stitch, checked on the networks' architectures."""
    checker = CellChecker()
    return [None if (problem := checker(run).problem) is None
            else f"unstitchable: {problem}" for run in runs]


stitched.plan_notes = plan_notes  # type: ignore[attr-defined]  # read by labkit plan


def linked_runs(params: dict[str, Any], run: RunConfig, registries: Any) -> list[RunConfig]:
    """The networks A and B given by spec: trained first when not finished (a run
    directory names a trained run)."""
    p = StitchedParams.model_validate(params)
    return [ref.run_config() for ref in (p.sender, p.receiver) if ref.spec is not None]


stitched.linked_runs = linked_runs  # type: ignore[attr-defined]  # read by labkit plan

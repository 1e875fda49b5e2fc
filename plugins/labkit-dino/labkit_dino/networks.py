"""The networks of a DINO run: encoders from the model registry and the DINO head.

Encoder convention: an encoder is a registry model with a final classifier ``nn.Linear``
whose input is the embedding, of ``in_features`` dimensions. Its dotted module name is
the method's ``embedding_from`` (:data:`CLASSIFIER_NAMES` are tried when it is null:
``fc`` in every built-in labkit model and torchvision's ResNets, ``heads.head`` in
torchvision's ViTs, ``head``, ``classifier``). That layer is replaced by a
:class:`ProbeClassifier` of the same shape, which holds the linear probe fitted on the
embeddings. So the network keeps the registry model's layer names and state-dict keys
(a checkpoint's ``modules["model"]`` loads into the registry model, and layer analyses
run on a DINO run like on any other), its output are class logits of the linear probe,
and :func:`embed` reads the embeddings: the input the probe receives.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from labkit.api import UserError


class ProbeClassifier(nn.Linear):
    """The linear probe in place of a network's ``fc``: ``(N, D) -> (N, C)`` logits.

    Starts at zero (uniform logits until a probe is fitted); never trained by gradient.
    While :attr:`bypass` is set it returns its input, the network's embedding ``(N, D)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.requires_grad_(False)
        self.bypass = False

    def reset_parameters(self) -> None:
        # zeros, and no draw from the global RNG (nn.Linear.__init__ calls this)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bypass else super().forward(x)


# where registry models keep the classifier whose input is the embedding, in the order
# tried when ``embedding_from`` is not given
CLASSIFIER_NAMES = ("fc", "heads.head", "head", "classifier")


def _linear_at(model: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def with_probe_classifier(model: nn.Module, name: str, path: str | None = None) -> nn.Module:
    """Replace the classifier at ``path`` by a zero :class:`ProbeClassifier`, in place.

    ``path`` is the dotted module name of the ``nn.Linear`` whose input is the embedding
    (``"fc"``, ``"heads.head"``, ``"classifier.6"``); ``None``: the first of
    :data:`CLASSIFIER_NAMES` that is an ``nn.Linear``. The probe takes the layer's name,
    so the state-dict keys are the registry model's.

    Raises:
        UserError: no such ``nn.Linear`` in ``model`` (registry name ``name``).
    """
    paths = CLASSIFIER_NAMES if path is None else (path,)
    found = next((p for p in paths if _linear_at(model, p) is not None), None)
    if found is None:
        tried = " or ".join(f"`{p}`" for p in paths)
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        hint = (f"set method.embedding_from to the dotted name of its last classifier layer "
                f"(its nn.Linear layers: {', '.join(linears[-3:])})" if linears else
                "use a model that ends in an nn.Linear classifier (any built-in labkit "
                "model, `tv:resnet18`, `tv:vit_b_16`, `vit_tiny`)")
        raise UserError(f"model {name!r} cannot be a DINO encoder: it has no nn.Linear "
                        f"{tried} whose input is the embedding; {hint}")
    fc = _linear_at(model, found)
    probe = ProbeClassifier(fc.in_features, fc.out_features).to(fc.weight.device)
    parent, _, leaf = found.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, probe)
    return model


def probe_of(network: nn.Module) -> ProbeClassifier:
    """The :class:`ProbeClassifier` that :func:`with_probe_classifier` put into ``network``."""
    return next(m for m in network.modules() if isinstance(m, ProbeClassifier))


@contextmanager
def _bypassed(probe: ProbeClassifier) -> Iterator[None]:
    probe.bypass = True
    try:
        yield
    finally:
        probe.bypass = False


def embed(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings ``(N, D)`` of ``images`` ``(N, C, H, W)``: the input of the network's probe.

    The probe passes its input through, so the classifier must be the network's last
    operation (true of every classifier that :data:`CLASSIFIER_NAMES` finds).
    """
    with _bypassed(probe_of(network)):
        return network(images)


def embedding_dim(network: nn.Module) -> int:
    """``D``, the width of the network's embedding."""
    return probe_of(network).in_features


class NormalizedLinear(nn.Module):
    """Linear map without bias whose weight rows are L2-normalised at every call.

    DINO's weight-normalised last layer with the norm fixed to 1:
    ``y = x · (W / ||W||_rows)ᵀ``, ``(N, in) -> (N, out)``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class DinoHead(nn.Module):
    """DINO's projection head: ``(N, D)`` embeddings to ``(N, out_dim)`` projections.

    ``mlp``: one ``Linear → [BatchNorm1d] → activation`` block per hidden width;
    ``bottleneck``: ``Linear`` to ``bottleneck_dim`` followed by L2 normalisation of
    each row; ``last_layer``: :class:`NormalizedLinear` to ``out_dim``. With
    ``bottleneck_dim = 0`` there is no bottleneck and ``last_layer`` is a plain
    ``Linear``. ``center`` (buffer, ``(out_dim,)``) is the running mean of the
    projections that the method subtracts before the temperature (DINO's centering).

    Args:
        embed_dim: ``D``.
        hidden_dims: widths of the MLP's hidden layers (may be empty).
        bottleneck_dim: width of the L2 bottleneck; 0: none.
        out_dim: number of output units.
        activation: ``"gelu"`` or ``"relu"``.
        batch_norm: BatchNorm1d after each hidden Linear.
        init: ``"trunc_normal"`` (DINO's: weights N(0, 0.02²) truncated at ±2, biases 0)
            or ``"default"`` (PyTorch's).
    """

    def __init__(self, embed_dim: int, hidden_dims: list[int], bottleneck_dim: int,
                 out_dim: int, activation: str = "gelu", batch_norm: bool = False,
                 init: Literal["trunc_normal", "default"] = "trunc_normal"):
        super().__init__()
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        width = embed_dim
        for i, hidden in enumerate(hidden_dims):
            layers: OrderedDict[str, nn.Module] = OrderedDict(fc=nn.Linear(width, hidden))
            if batch_norm:
                layers["bn"] = nn.BatchNorm1d(hidden)
            layers["act"] = ACTIVATIONS[activation]()
            blocks[f"layer{i}"] = nn.Sequential(layers)
            width = hidden
        self.mlp = nn.Sequential(blocks)
        if bottleneck_dim > 0:
            self.bottleneck: nn.Module = nn.Linear(width, bottleneck_dim)
            self.last_layer: nn.Module = NormalizedLinear(bottleneck_dim, out_dim)
        else:
            self.bottleneck = nn.Identity()
            self.last_layer = nn.Linear(width, out_dim)
        self.normalize = bottleneck_dim > 0
        self.register_buffer("center", torch.zeros(out_dim))
        if init == "trunc_normal":
            for module in self.modules():
                if isinstance(module, (nn.Linear, NormalizedLinear)):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if getattr(module, "bias", None) is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(self.mlp(embeddings))
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return self.last_layer(x)


class DinoNet(nn.Module):
    """An encoder network (with its :class:`ProbeClassifier`) and a :class:`DinoHead`.

    Args:
        network: a registry model prepared by :func:`with_probe_classifier`.
        head: the DINO head on its embeddings.
    """

    def __init__(self, network: nn.Module, head: DinoHead):
        super().__init__()
        self.network = network
        self.head = head

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(V, N, D)`` and projections ``(V, N, out_dim)`` of ``V`` views.

        ``views``: ``V`` tensors ``(N, C, H_v, W_v)``. Consecutive views of the same size
        go through the encoder as one batch (DINO's grouping, so BatchNorm statistics
        are shared across them); the head sees all views as one batch.
        """
        embeddings = []
        start = 0
        while start < len(views):
            stop = start + 1
            while stop < len(views) and views[stop].shape[-2:] == views[start].shape[-2:]:
                stop += 1
            embeddings.append(embed(self.network, torch.cat(views[start:stop])))
            start = stop
        flat = torch.cat(embeddings)
        projections = self.head(flat)
        n = views[0].shape[0]
        return flat.view(len(views), n, -1), projections.view(len(views), n, -1)

    def dino_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of encoder and head: all but the probe classifier's."""
        probe = {id(p) for p in probe_of(self.network).parameters()}
        return [(name, p) for name, p in self.named_parameters() if id(p) not in probe]

    def batch_norms(self) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
        """Named BatchNorm layers of encoder and head, in module order."""
        return [(name, m) for name, m in self.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_same_architecture(a: DinoNet, b: DinoNet, why: str) -> None:
    """Raise :class:`UserError` unless ``a`` and ``b`` have the same parameter names and shapes."""
    shapes_a = [(n, tuple(p.shape)) for n, p in a.dino_parameters()]
    shapes_b = [(n, tuple(p.shape)) for n, p in b.dino_parameters()]
    if shapes_a != shapes_b:
        raise UserError(f"{why} needs teacher and student of the same architecture; "
                        f"drop `teacher_model` or choose student_init 'random' and "
                        f"teacher_mode 'no_update'")


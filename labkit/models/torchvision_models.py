"""torchvision classification models, adapted to the data's channels and resolution,
untrained or with pretrained weights.

Weights come from torchvision's weight enums (``"weights": "IMAGENET1K_V1"`` or
``"DEFAULT"``), read from the local torch hub cache (``$TORCH_HOME/hub/checkpoints``,
where torchvision keeps them) and downloaded only when the spec says
``"download_weights": true``; or from a file of one's own (``"weights": {"path": …}``,
a state dict, loaded with ``weights_only=True``). Layers whose shape differs from the
weights' (the classifier for another number of classes, the stem for other channels)
keep their fresh initialisation. The weights join the run's identity: an enum by its
URL, a file by its sha256. The URL names the content: a cached enum file is checked, at
every validation (``labkit plan``, ``--dry-run``, ``run``) and before it is loaded, the
way torch's hub checks a download (its sha256 must start with the hash in its name,
:func:`check_hub_file`), so other bytes under that name are refused, never trained from
under the URL's identity.
"""
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from labkit.core.errors import UserError
from labkit.store.file_digests import file_digests
from labkit.store.identity import note_outside


class WeightsFile(BaseModel):
    """A state-dict file of one's own."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file holding the state dict (torch.save of a dict of tensors)")


class TorchvisionParams(BaseModel):
    """Spec parameters of ``tv:<arch>`` models."""

    model_config = ConfigDict(extra="forbid")

    weights: str | WeightsFile | None = Field(
        None, description="null: untrained; a weight enum name of the architecture "
                          "(\"DEFAULT\", \"IMAGENET1K_V1\", …); or {\"path\": file}")
    download_weights: bool = Field(
        False, description="download enum weights missing from the torch hub cache")

# Models that bake the input size into their architecture (positional embeddings, attention
# windows) are told the data's resolution: arch prefix -> builder keyword and its value.
_SIZE_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "vit_": lambda resolution: {"image_size": resolution},
    "maxvit_": lambda resolution: {"input_size": (resolution, resolution)},
}

# These return a namedtuple with auxiliary logits in training mode unless told otherwise;
# the rest of labkit expects plain logits. ``init_weights`` silences their slow-init warning.
_EXTRA_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model_names() -> list[str]:
    """Sorted names of the torchvision classification architectures (e.g. ``"resnet18"``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_arch(arch: str) -> None:
    names = torchvision_model_names()
    if arch in names:
        return
    matches = difflib.get_close_matches(arch, names, n=3)
    hint = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    raise UserError(
        f"Unknown torchvision model {arch!r}.{hint} "
        "The valid names are listed by labkit.models.torchvision_model_names()."
    )


def _builder_kwargs(arch: str, resolution: int) -> dict[str, Any]:
    kwargs = dict(_EXTRA_KWARGS.get(arch, {}))
    for prefix, size_kwargs in _SIZE_KWARGS.items():
        if arch.startswith(prefix):
            kwargs.update(size_kwargs(resolution))
    return kwargs


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``Conv2d`` (in registration order, which is the input stem in every
    torchvision classifier) for a freshly initialised one reading ``in_channels`` channels."""
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, new)


def _enum_weights(arch: str, name: str) -> Any:
    try:
        return torchvision.models.get_model_weights(arch)[name]
    except (KeyError, ValueError):
        try:
            known = [w.name for w in torchvision.models.get_model_weights(arch)]
        except ValueError:
            known = []
        raise UserError(f"model.weights: {arch!r} has no weights {name!r}; give one of "
                        f"{', '.join(['DEFAULT', *known]) or '(none: it has no pretrained weights)'}, "
                        f"or {{\"path\": file}}") from None


def enum_weights_path(arch: str, name: str) -> Path:
    """Where torchvision keeps the weights ``name`` of ``arch`` in the torch hub cache."""
    url = _enum_weights(arch, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def weights_identity(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """What identifies the pretrained weights of a ``tv:`` spec (see the module
    docstring): ``{}`` when untrained.

    Raises:
        UserError: unknown weights, or a weights file that does not exist.
    """
    weights = params.get("weights")
    if weights is None:
        return {}
    if isinstance(weights, str):
        note_outside(f"the torch hub file of {arch}.{weights}", [enum_weights_path(arch, weights)])
        _check_cached(arch, weights, params.get("download_weights", False))
        return {"url": _enum_weights(arch, weights).url}
    path = Path(weights["path"]).expanduser().absolute()
    note_outside(f"weights file {path}", [path])
    if not path.is_file():
        raise UserError(f"model.weights.path: no file at {path}; give the path of a saved "
                        f"state dict")
    return {"file": str(path), "sha256": _sha256(path, "model.weights.path:",
                                                 "make it readable or give another file")}


def _sha256(path: Path, what: str, fix: str) -> str:
    """The cached content digest of the weights file ``path``
    (:func:`labkit.store.file_digests.file_digests`); one line naming it and ``fix`` when it
    cannot be read."""
    try:
        (digest,) = file_digests([path], path.parent, prune=False)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror}); {fix}") from None
    return digest


def _check_cached(arch: str, name: str, download: bool) -> None:
    """Refuse enum weights missing from the torch hub cache (unless they may be
    downloaded) and a cached file that is not the one its name promises."""
    path = enum_weights_path(arch, name)
    if not path.exists():
        if download:  # torch's hub checks the hash of what it downloads
            return
        raise UserError(
            f"pretrained weights {arch}.{name} are not in the torch hub cache: looked for "
            f"{path}. Put the file there (set TORCH_HOME to use another cache), or allow "
            f"the download with \"download_weights\": true in the model's spec")
    check_hub_file(path)


def check_hub_file(path: Path) -> None:
    """Check a file of the torch hub cache as torch's hub checks a download: the sha256
    of its content must start with the hash in its name (``<name>-<hash>.<ext>``,
    :data:`torch.hub.HASH_REGEX`); a name without one promises nothing. Digests are
    cached by the file's stat (:func:`labkit.store.file_digests.file_digests`), so a large
    file is read again only when it changed.

    Raises:
        UserError: the file cannot be read, or its content is not the one its name
            names (truncated, damaged, other weights).
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None:
        return
    again = ("delete it and download it again (\"download_weights\": true in the model's "
             "spec), or put the file torchvision publishes there")
    digest = _sha256(path, "the torch hub file", again)
    if not digest.startswith(match.group(1)):
        raise UserError(f"the torch hub file {path} is truncated, damaged or holds other "
                        f"weights: its sha256 starts {digest[:len(match.group(1))]}, not "
                        f"{match.group(1)} as its name says; {again}")


def _load_weights(model: nn.Module, arch: str, weights: Any, download: bool) -> None:
    if isinstance(weights, str):
        _check_cached(arch, weights, download)
        state = _enum_weights(arch, weights).get_state_dict(progress=False, check_hash=True)
    else:
        path = Path(weights["path"]).expanduser()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a state dict that loads without running code
            raise UserError(f"model.weights.path: {path} is not a state dict of tensors "
                            f"that loads without running code (damaged, or another kind "
                            f"of file); give the weights saved with torch.save(state_dict)") \
                from None
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise UserError(f"the weights hold parameters that {arch} has not: {', '.join(unknown[:5])}"
                        f"; give weights of this architecture")
    fitting = {k: v for k, v in state.items() if tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fitting, strict=False)


def create_torchvision_model(arch: str, num_classes: int, in_channels: int, resolution: int,
                             weights: Any = None, download_weights: bool = False) -> nn.Module:
    """Build torchvision's ``arch`` untrained, for input ``(N, in_channels, resolution, resolution)``
    and output logits ``(N, num_classes)``, untrained or with ``weights`` (see the
    module docstring; ``download_weights`` allows fetching enum weights).

    The stem conv is replaced when ``in_channels != 3``. Unlike labkit's own models, many
    ImageNet architectures downsample aggressively and need a resolution well above 8
    (e.g. ``inception_v3`` needs at least 75 pixels). Raises :class:`UserError` for an
    unknown ``arch`` or a resolution the architecture cannot be built for.
    """
    _check_arch(arch)
    try:
        model = torchvision.models.get_model(
            arch, weights=None, num_classes=num_classes, **_builder_kwargs(arch, resolution)
        )
    except (ValueError, AssertionError) as error:
        # Architectures with size-dependent structure (ViT patches, MaxViT windows) reject
        # some resolutions at construction time.
        raise UserError(
            f"torchvision model {arch!r} cannot be built for resolution {resolution}: {error} "
            "Choose a resolution this architecture supports, or another architecture."
        ) from error
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    if weights is not None:
        _load_weights(model, arch, weights, download_weights)
    return model


create_torchvision_model.weights_identity = weights_identity

"""Receptive fields: analytic (fx graph) against empirical (back-propagation), published
sizes of classic architectures, the border layer, the command."""
import re

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from labkit.cli import cli
from labkit.core.errors import UserError
from labkit.measures.layers import measured_layers
from labkit.measures.receptive_field import border_layer, receptive_fields
from labkit.measures.receptive_field_check import geometric_copy
from labkit.measures.receptive_field_geometry import Untraceable, layer_fields
from labkit.models import MODELS, create_torchvision_model

RESOLUTION = 24  # odd intermediate sizes (24 → 12 → 6 → 3 → 2) exercise the edges
NARROW = "_xxs"
WIDER = re.compile(r"((?:resnet|vgg)\d+)(_s|_xs)?")
# every built-in architecture; a ResNet's or VGG's wider variants (no suffix, _s, _xs)
# share the fields of its _xxs variant (test_width_variants_share_their_fields)
CHECKED = [name for name in MODELS if not WIDER.fullmatch(name)]


def assert_empirical_fields_match(model: nn.Module, in_channels: int, resolution: int) -> None:
    """For the first, centre and last unit of every layer: the input pixels with a
    non-zero gradient span exactly the analytic field, clipped to the image."""
    fields = layer_fields(model, in_channels, resolution)
    probe, runner = geometric_copy(model)  # every pixel of a field then gets gradient
    modules = dict(measured_layers(probe))
    targets = [(layer, unit) for layer, f in fields.items()
               for unit in sorted({(0, 0), (f.map[0] // 2, f.map[1] // 2),
                                   (f.map[0] - 1, f.map[1] - 1)})]
    outputs = {}
    for layer in fields:
        modules[layer].register_forward_hook(
            lambda m, i, out, layer=layer: outputs.__setitem__(layer, out))
    # one sample per (layer, unit): eval mode keeps the samples independent, so a single
    # backward pass gives every sample's gradient
    image = (torch.rand(len(targets), in_channels, resolution, resolution) + 0.5).requires_grad_()
    runner(image)
    total = sum(outputs[layer][b, :, y, x].sum() if outputs[layer].dim() == 4
                else outputs[layer][b].sum() for b, (layer, (y, x)) in enumerate(targets))
    (grad,) = torch.autograd.grad(total, image)
    for b, (layer, unit) in enumerate(targets):
        seen = grad[b].abs().sum(0) > 0
        for axis in range(2):
            pixels = seen.any(1 - axis).nonzero().flatten()
            lo, hi = fields[layer].bounds(axis, unit[axis])
            assert (pixels.min().item(), pixels.max().item()) == (
                max(0, lo), min(resolution - 1, hi)), (layer, unit, axis)


@pytest.mark.parametrize("name", CHECKED)
def test_analytic_fields_match_backpropagation_for_every_builtin_model(name):
    assert_empirical_fields_match(MODELS[name](10, 1, RESOLUTION), 1, RESOLUTION)


def architecture(model: nn.Module) -> tuple:
    """What a receptive field depends on: the traced graph and every module's type and
    window (kernel, stride, padding, dilation), widths left out."""
    windows = tuple((path, type(m).__name__, *(str(getattr(m, a, None)) for a in
                                               ("kernel_size", "stride", "padding", "dilation")))
                    for path, m in model.named_modules())
    return torch.fx.symbolic_trace(model).code, windows


def test_width_variants_share_their_fields():
    for name in MODELS:
        family = WIDER.fullmatch(name)
        if family and family.group(1) + NARROW in MODELS:  # families with width variants
            with torch.device("meta"):  # no weights allocated
                wide, narrow = MODELS[name](10, 3, 16), MODELS[family.group(1) + NARROW](10, 3, 16)
            assert architecture(wide) == architecture(narrow), name


class Branchy(nn.Module):
    """Residual branches of unequal reach, a concatenation, a squeeze-excitation scale
    and functional windows: the shapes fx must follow beyond plain stacks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.wide = nn.Conv2d(4, 4, 7, padding=3)  # the largest path: 3 + 6 = 9
        self.narrow = nn.Conv2d(4, 4, 1)
        self.squeeze = nn.Linear(8, 8)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3))
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x + self.wide(x), self.narrow(x)], dim=1)
        x = F.avg_pool2d(F.conv2d(x, self.weight, padding=1, stride=2), 2)
        scale = self.squeeze(x.mean((2, 3))).sigmoid()[:, :, None, None]
        x = self.head(x * scale)
        return self.fc(x.flatten(2).mean(2))


def test_merges_take_the_largest_path_and_follow_functional_windows():
    table = receptive_fields(Branchy(), 1, 16).set_index("layer")
    assert table.loc["wide", "size_h"] == 9 and table.loc["narrow", "size_h"] == 3
    assert table.loc["squeeze", "size_h"] >= 16  # after a global mean: the whole input
    assert table.loc["head", "size_h"] >= 16  # the excitation scale reaches every unit
    assert_empirical_fields_match(Branchy(), 1, 16)


@pytest.mark.parametrize("arch, layer, size, jump", [
    # Araujo et al., "Computing receptive fields of convolutional neural networks",
    # Distill 2019: AlexNet 195 and VGG-16 212 at the last pooling layer
    ("alexnet", "features-12", 195, 32),
    ("alexnet", "features-10", 163, 16),  # conv5
    ("vgg16", "features-30", 212, 32),  # pool5
    ("vgg16", "features-28", 196, 16),  # conv5_3
    # torchvision ResNets (stride in the 3x3 conv) at the end of each stage
    ("resnet18", "layer1-1-conv2", 43, 4),
    ("resnet18", "layer2-1-conv2", 99, 8),
    ("resnet18", "layer3-1-conv2", 211, 16),
    ("resnet18", "layer4-1-conv2", 435, 32),
    ("resnet34", "layer4-2-conv2", 899, 32),
    ("resnet50", "layer4-2-conv3", 427, 32),
])
def test_published_receptive_fields(arch, layer, size, jump):
    with torch.device("meta"):
        model = create_torchvision_model(arch, 1000, 3, 224)
    table = receptive_fields(model, 3, 224, types=(nn.Conv2d, nn.MaxPool2d)).set_index("layer")
    assert (table.loc[layer, "size_h"], table.loc[layer, "jump_h"]) == (size, jump)
    assert (table.loc[layer, "size_w"], table.loc[layer, "jump_w"]) == (size, jump)


def test_lenet_fields_and_border():
    table = receptive_fields(MODELS["lenet5"](10, 1, 32), 1, 32).set_index("layer")
    # LeCun et al. 1998: C1 sees 5x5, C3 14x14 (through a 2x2 subsampling)
    assert table.loc["conv1", ["size_h", "jump_h"]].tolist() == [5, 1]
    assert table.loc["conv2", ["size_h", "jump_h"]].tolist() == [14, 2]
    assert border_layer(table.reset_index()) == "fc1"  # the first to see all 32x32 pixels
    assert table["tail"].tolist() == [False, False, False, True, True]


def test_border_is_the_first_covering_layer_and_tail_follows():
    table = receptive_fields(MODELS["resnet18_xxs"](10, 1, 16), 1, 16)
    covers = (table["size_h"] >= 16) & (table["size_w"] >= 16)
    first = covers.idxmax()
    assert not covers[:first].any() and table["border"].tolist() == [
        i == first for i in range(len(table))]
    assert table["tail"].tolist() == [i > first for i in range(len(table))]


def test_untraceable_model_is_a_clear_error_or_unsupported_rows():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(Untraceable, match="cannot trace"):
        layer_fields(DataDependent(), 1, 8)
    # the table still has its rows, marked unsupported, without numbers
    table = receptive_fields(DataDependent(), 1, 8, check=True)
    assert table[["layer", "rf_status", "rf_check"]].values.tolist() == [
        ["conv", "unsupported", "skipped"]]
    assert table["size_h"].isna().all() and not table["border"].any()


def test_command_writes_the_csv_without_training(tmp_path, write_spec):
    spec = write_spec({"model": "lenet5", "dataset": {"name": "digits", "resolution": 16}})
    result = CliRunner().invoke(cli, ["receptive-field", str(spec), "--run-id", "R"])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "logs").rglob("receptive_field.csv")
    table = pd.read_csv(path)
    assert list(table.columns) == ["layer", "module", "size_h", "size_w", "jump_h", "jump_w",
                                   "start_h", "start_w", "map_h", "map_w", "border", "tail",
                                   "rf_status"]
    assert table["layer"].tolist() == ["conv1", "conv2", "fc1", "fc2", "fc"]
    assert "border layer: fc1" in result.stdout  # conv2 sees 14 of the 16 pixels


def test_input_too_small_for_the_network_is_a_user_error(capfd):
    alexnet = create_torchvision_model("alexnet", num_classes=10, in_channels=3,
                                       resolution=32)
    with pytest.raises(UserError, match="too small"):
        receptive_fields(alexnet, 3, 32)
    assert "Traceback" not in capfd.readouterr().err  # torch's own report is kept quiet
    assert len(receptive_fields(alexnet, 3, 64)) == 8  # large enough: the same network works


def call_order_by_hooks(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Layer names in the order a real forward pass calls them (first call)."""
    seen: list[str] = []
    handles = [m.register_forward_hook(lambda *_, name=name: seen.append(name))
               for name, m in measured_layers(model)]
    with torch.no_grad():
        model.eval()(image)
    for handle in handles:
        handle.remove()
    return list(dict.fromkeys(seen))


def test_network_order_is_the_order_of_the_forward_pass():
    class DeclaredOutOfOrder(nn.Module):
        """A residual block written as many are: the shortcut declared first, run last."""

        def __init__(self):
            super().__init__()
            self.shortcut = nn.Conv2d(1, 4, 1)
            self.head = nn.Linear(4, 3)
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            out = self.conv2(F.relu(self.conv1(x))) + self.shortcut(x)
            return self.head(out.mean(dim=(2, 3)))

    model = DeclaredOutOfOrder()
    expected = ["conv1", "conv2", "shortcut", "head"]
    assert [name for name, _ in measured_layers(model)] == expected
    assert call_order_by_hooks(model, torch.zeros(1, 1, 8, 8)) == expected
    assert receptive_fields(model, 1, 8)["layer"].tolist() == expected

    resnet = MODELS["resnet18_xxs"](num_classes=10, in_channels=1, resolution=16)
    names = [name for name, _ in measured_layers(resnet)]
    assert names == call_order_by_hooks(resnet, torch.zeros(2, 1, 16, 16))
    assert names.index("layer2-0-shortcut-conv") == names.index("layer2-0-conv2") + 1
    assert receptive_fields(resnet, 1, 16)["layer"].tolist() == names

"""How sure each receptive field is (``rf_status``) and the gradient check (``rf_check``):
every built-in model, one network per rule of docs/layers.md, and the command."""
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from labkit.cli import cli
from labkit.measures.receptive_field import receptive_fields
from labkit.measures.receptive_field_check import gradient_check
from labkit.measures.receptive_field_geometry import STATUSES, layer_fields
from labkit.models import MODELS

RESOLUTION = 8  # the smallest input every built-in model is made for (labkit.models)
FAMILY = re.compile(r"((?:resnet|vgg)\d+)(_s|_xs)?")


def narrow_twin(name: str) -> str | None:
    """The ``_xxs`` variant of a wider ResNet / VGG: the same graph and windows at an
    eighth of the width (tests/test_receptive_field.py::test_width_variants_share...)."""
    family = FAMILY.fullmatch(name)
    twin = family and family.group(1) + "_xxs"
    return twin if twin in MODELS else None


# a wider variant traces to its twin's graph with the same windows (asserted by
# test_width_variants_share_their_fields), so it has the same rows: checking it again
# would only cost time (a full-width ResNet-50 takes seconds)
CHECKED = [name for name in MODELS if narrow_twin(name) is None]


@pytest.mark.parametrize("name", CHECKED)
def test_every_row_of_every_builtin_model_passes_the_gradient_check(name):
    table = receptive_fields(MODELS[name](10, 1, RESOLUTION), 1, RESOLUTION, check=True)
    assert set(table["rf_status"]) <= set(STATUSES) - {"unsupported"}, table
    assert (table["rf_check"] == "passed").all(), table[table["rf_check"] != "passed"]


def check(model: nn.Module, resolution: int = 16, **forged: str) -> dict[str, tuple[str, str]]:
    """Layer → ``(rf_status, rf_check)``; ``forged`` claims another status for a layer
    (to see the check refuse a claim the geometry does not back)."""
    fields = layer_fields(model, 1, resolution)
    fields = {name: replace(f, status=forged.get(name, f.status)) for name, f in fields.items()}
    outcome = gradient_check(model, 1, resolution, fields)
    return {name: (f.row_status, outcome.get(name, "skipped")) for name, f in fields.items()}


class Stack(nn.Module):
    """``body`` (a function of ``self`` and the image) between named layers."""

    def __init__(self, body, **layers):
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.body = body

    def forward(self, x):
        return self.body(self, x)


def test_gapped_taps_are_an_upper_bound_and_the_check_refuses_exact():
    # dilation 3 on pixels: the taps' regions leave two pixels unseen between them
    dilated = Stack(lambda m, x: m.b(m.a(x)), a=nn.Conv2d(1, 2, 3, dilation=3, padding=3),
                    b=nn.Conv2d(2, 2, 3, padding=1))
    assert check(dilated) == {"a": ("upper_bound", "passed"), "b": ("upper_bound", "passed")}
    assert check(dilated, a="exact")["a"] == ("exact", "failed")
    # a stride larger than the kernel: the next window's taps see every third pixel
    strided = Stack(lambda m, x: m.b(m.a(x)), a=nn.Conv2d(1, 2, 1, stride=3),
                    b=nn.Conv2d(2, 2, 3))
    assert check(strided) == {"a": ("exact", "passed"), "b": ("upper_bound", "passed")}
    assert check(strided, b="exact")["b"] == ("exact", "failed")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_branches_of_offset_fields_are_an_upper_bound():
    # a 3x3 branch and a 1x4 one whose 'same' padding puts its centre half a pixel
    # right: neither region holds the other, their hull adds unseen corners
    offset = Stack(lambda m, x: m.c(m.a(x) + m.b(x)), a=nn.Conv2d(1, 2, 3, padding=1),
                   b=nn.Conv2d(1, 2, (1, 4), padding="same"), c=nn.Conv2d(2, 2, 1))
    assert check(offset)["c"] == ("upper_bound", "passed")
    assert check(offset, c="exact")["c"] == ("exact", "failed")
    concentric = Stack(lambda m, x: m.c(m.a(x) + m.b(x)), a=nn.Conv2d(1, 2, 3, padding=1),
                       b=nn.Conv2d(1, 2, 5, padding=2), c=nn.Conv2d(2, 2, 1))
    assert check(concentric)["c"] == ("exact", "passed")


def test_adaptive_pooling_is_exact_only_with_regular_bins():
    def pooled(side):
        return Stack(lambda m, x: m.b(F.adaptive_avg_pool2d(m.a(x), side)),
                     a=nn.Conv2d(1, 2, 1), b=nn.Conv2d(2, 2, 1))

    assert check(pooled(4))["b"] == ("exact", "passed")  # 16 → 4: bins of 4, stride 4
    assert check(pooled(5))["b"] == ("exact", "passed")  # 16 → 5: bins of 4, stride 3
    # 16 → 6: bins of 3 and 4 pixels; every unit's box holds its bin, some more
    assert check(pooled(6))["b"] == ("upper_bound", "passed")
    assert check(pooled(6), b="exact")["b"] == ("exact", "failed")
    # flattened, the bins together cover the map exactly again
    flat = Stack(lambda m, x: m.fc(F.adaptive_avg_pool2d(m.a(x), 6).flatten(1)),
                 a=nn.Conv2d(1, 2, 1), fc=nn.Linear(72, 3))
    assert check(flat)["fc"] == ("exact", "passed")


def test_normalising_over_the_map_lets_every_unit_see_the_whole_map():
    model = Stack(lambda m, x: m.b(m.norm(m.a(x))), a=nn.Conv2d(1, 4, 3, padding=1),
                  norm=nn.GroupNorm(2, 4), b=nn.Conv2d(4, 2, 3, padding=1))
    fields = layer_fields(model, 1, 16)
    assert fields["b"].bounds(0) == (-2, 16)  # not 5 pixels: the statistics span the map
    assert check(model) == {"a": ("exact", "passed"), "b": ("exact", "passed")}


def test_positions_flattened_apart_stay_an_upper_bound_until_mixed():
    def body(m, x):  # tokens (N, positions, channels): a Linear per token, then their mean
        tokens = m.token(m.a(x).flatten(2).transpose(1, 2))
        return m.head(tokens.mean(1))

    model = Stack(body, a=nn.Conv2d(1, 4, 3, padding=1), token=nn.Linear(4, 4),
                  head=nn.Linear(4, 3))
    assert check(model) == {"a": ("exact", "passed"), "token": ("upper_bound", "passed"),
                            "head": ("exact", "passed")}
    # a softmax along a spatial axis mixes positions along that axis only
    along = Stack(lambda m, x: m.b(m.a(x).softmax(3)), a=nn.Conv2d(1, 2, 3, padding=1),
                  b=nn.Conv2d(2, 2, 1))
    assert check(along)["b"] == ("upper_bound", "passed")


def test_routing_by_the_input_is_data_dependent():
    def attention(m, x):
        tokens = m.a(x).flatten(2).transpose(1, 2)
        weights = (tokens @ tokens.transpose(1, 2)).softmax(-1)
        return m.out(weights @ tokens)

    def gather(m, x):
        maps = m.a(x)
        index = maps.flatten(2).argmax(2, keepdim=True)  # each channel's strongest position
        return m.out(maps.flatten(2).gather(2, index).flatten(1))

    for body in (attention, gather):
        model = Stack(body, a=nn.Conv2d(1, 4, 3, padding=1), out=nn.Linear(4, 4))
        assert check(model)["out"] == ("data_dependent", "passed"), body.__name__


def test_operations_the_tracer_cannot_read_are_unsupported():
    rolled = Stack(lambda m, x: m.b(torch.roll(m.a(x), 2, 3)), a=nn.Conv2d(1, 2, 3, padding=1),
                   b=nn.Conv2d(2, 2, 1))
    assert check(rolled) == {"a": ("exact", "passed"), "b": ("unsupported", "skipped")}
    # same size in and out, yet each unit spreads over its neighbours (was an error)
    transposed = Stack(lambda m, x: m.b(m.t(x)), t=nn.ConvTranspose2d(1, 2, 3, padding=1),
                       b=nn.Conv2d(2, 2, 1))
    assert check(transposed)["b"] == ("unsupported", "skipped")


def test_the_check_fails_a_box_smaller_than_the_gradient_support():
    model = Stack(lambda m, x: m.b(m.a(x)), a=nn.Conv2d(1, 2, 3, padding=1),
                  b=nn.Conv2d(2, 2, 3, padding=1))
    fields = layer_fields(model, 1, 16)
    fields["b"] = replace(fields["b"], size=(3, 3))  # the truth is 5
    assert gradient_check(model, 1, 16, fields) == {"a": "passed", "b": "failed"}


def test_command_check_adds_the_column(tmp_path, write_spec):
    spec = write_spec({"model": "resnet8", "dataset": {"name": "digits", "resolution": 8}})
    result = CliRunner().invoke(cli, ["receptive-field", str(spec), "--run-id", "R", "--check"])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "logs").rglob("receptive_field.csv")
    table = pd.read_csv(path)
    assert set(table["rf_status"]) == {"exact"} and set(table["rf_check"]) == {"passed"}
    assert f"{len(table)} exact, check {len(table)} passed" in result.output
    # without --check the analysis runs again (its parameters changed) and drops the column
    result = CliRunner().invoke(cli, ["receptive-field", str(spec), "--run-id", "R"])
    assert result.exit_code == 0 and "rf_check" not in pd.read_csv(path)

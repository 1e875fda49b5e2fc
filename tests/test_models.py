"""Tests for the built-in model registry and the torchvision bridge."""
import inspect
import re

import pydantic
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from labkit.core.errors import UserError
from labkit.measures.layers import measured_layers
from labkit.models import MODELS, create_torchvision_model, torchvision_model_names

WIDTH_SUFFIXES = ["", "_s", "_xs", "_xxs"]
WIDTH_FAMILIES = ["resnet18", "resnet34", "resnet50", "vgg11", "vgg13", "vgg16", "vgg19"]
EXPECTED_NAMES = {f"{base}{suffix}" for base in WIDTH_FAMILIES for suffix in WIDTH_SUFFIXES} | {
    "wide_resnet",
    "lenet5",
    "cnn_xs",
    "cnn_s",
    "cnn_m",
    "mlp_s",
    "mlp_m",
}
CIFAR_RESNETS = {8: 1, 14: 2, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18}  # depth -> blocks per stage
PLAIN_CNN_DEPTHS = [2, 4, 6, 8, 10]
EXPECTED_NAMES |= {f"resnet{depth}" for depth in CIFAR_RESNETS} | {
    f"plain_cnn{depth}" for depth in PLAIN_CNN_DEPTHS} | {"resnet_blocks"}


def logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def num_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules()]


def test_registry_holds_exactly_the_documented_models():
    assert set(MODELS) == EXPECTED_NAMES


# (in_channels, resolution): the smallest supported input, CIFAR-sized, and an odd size.
@pytest.mark.parametrize("in_channels, resolution", [(1, 8), (3, 32), (3, 11)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_maps_images_to_logits_with_fc_classifier(name, in_channels, resolution):
    model = MODELS[name](10, in_channels, resolution)
    # Training mode: BatchNorm uses batch statistics, the path taken during training.
    out = logits(model.train(), torch.randn(2, in_channels, resolution, resolution))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    assert linears[-1] == "fc" and model.get_submodule("fc").out_features == 10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factory_params_can_be_derived_from_the_signature(name):
    parameters = list(inspect.signature(MODELS[name]).parameters.values())
    assert [p.name for p in parameters[:3]] == ["num_classes", "in_channels", "resolution"]
    extra = parameters[3:]
    for p in extra:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        assert p.annotation is not inspect.Parameter.empty, p.name
        assert p.default is not inspect.Parameter.empty, p.name
    fields = {p.name: (p.annotation, p.default) for p in extra}
    params_model = pydantic.create_model(f"{name}_params", **fields)
    assert params_model().model_dump() == {p.name: p.default for p in extra}


@pytest.mark.parametrize("base", WIDTH_FAMILIES)
def test_width_variants_are_strictly_narrower(base):
    models = [MODELS[base + suffix](10, 3, 32) for suffix in WIDTH_SUFFIXES]
    counts = [num_parameters(model) for model in models]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    first_convs = [next(m for m in model.modules() if isinstance(m, nn.Conv2d)) for model in models]
    assert [conv.out_channels for conv in first_convs] == [64, 32, 16, 8]
    # Layer names are CSV columns: a width variant must not rename anything.
    assert all(module_names(model) == module_names(models[0]) for model in models)


def test_resnet_module_names_are_readable():
    names = set(module_names(MODELS["resnet18"](10, 3, 32)))
    assert {"conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer4.1.conv2", "avgpool", "fc"} <= names
    assert {"layer2.0.shortcut.conv", "layer2.0.shortcut.bn"} <= names
    assert "layer1.0.shortcut" not in names  # identity where the shape is unchanged
    bottleneck_names = set(module_names(MODELS["resnet50"](10, 3, 32)))
    assert {"layer1.0.conv3", "layer1.0.shortcut.conv", "layer4.2.bn3"} <= bottleneck_names


def test_resnet_uses_cifar_stem():
    model = MODELS["resnet18"](10, 3, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18_xxs", "resnet50_xxs"])
def test_noskip_removes_shortcuts_but_keeps_the_residual_branches(name):
    torch.manual_seed(0)
    with_skip = MODELS[name](10, 3, 16).eval()
    without_skip = MODELS[name](10, 3, 16, noskip=True).eval()
    assert not any("shortcut" in n for n in module_names(without_skip))
    result = without_skip.load_state_dict(with_skip.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(".shortcut." in key for key in result.unexpected_keys)
    images = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(logits(with_skip, images), logits(without_skip, images))


@pytest.mark.parametrize("name", ["resnet18_xxs", "resnet50_xxs"])
def test_noskip_output_depends_only_on_the_residual_branches(name):
    """With every residual branch silenced, a plain network forgets its input; a ResNet does not."""
    images = torch.randn(2, 3, 16, 16)
    outputs = {}
    for noskip in (False, True):
        model = MODELS[name](10, 3, 16, noskip=noskip).eval()
        for module_name, module in model.named_modules():
            if re.fullmatch(r"layer\d\.\d+\.bn\d", module_name):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
        outputs[noskip] = logits(model, images)
    assert not torch.allclose(outputs[False][0], outputs[False][1])
    assert torch.allclose(outputs[True][0], outputs[True][1])


def test_vgg_skips_pools_that_would_shrink_the_map_below_one_pixel():
    def pooled_blocks(resolution):
        model = MODELS["vgg11_xxs"](10, 3, resolution)
        return [n.split(".")[0] for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]

    assert pooled_blocks(32) == ["block1", "block2", "block3", "block4", "block5"]
    assert pooled_blocks(8) == ["block1", "block2", "block3"]
    assert pooled_blocks(11) == ["block1", "block2", "block3"]  # 11 -> 5 -> 2 -> 1


@pytest.mark.parametrize("depth, convs_per_stage", [(11, [1, 1, 2, 2, 2]), (19, [2, 2, 4, 4, 4])])
def test_vgg_depth_and_names(depth, convs_per_stage):
    model = MODELS[f"vgg{depth}_xxs"](10, 3, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 3  # the other three VGG weight layers were the ImageNet MLP head
    assert [sum(n.startswith(f"block{s}.") for n in convs) for s in range(1, 6)] == convs_per_stage
    last_conv = f"block5.conv{convs_per_stage[-1]}"
    assert {"block1.conv1", "block1.bn1", "block1.pool", last_conv} <= set(module_names(model))


def test_wide_resnet_params_set_depth_width_and_dropout():
    model = MODELS["wide_resnet"](10, 3, 8, depth=22, widen_factor=1, dropout=0.5)
    assert [len(model.get_submodule(f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert model.fc.in_features == 64
    assert MODELS["wide_resnet"](10, 3, 8, depth=10, widen_factor=3).fc.in_features == 192
    images = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    assert not torch.allclose(logits(model.train(), images), logits(model, images))
    model.eval()
    assert torch.equal(logits(model, images), logits(model, images))
    no_dropout = MODELS["wide_resnet"](10, 3, 8, depth=10, widen_factor=1).train()
    assert torch.equal(logits(no_dropout, images), logits(no_dropout, images))


def test_wide_resnet_blocks_are_residual():
    """With every block's last conv zeroed, only the shortcuts carry the input to the head."""
    model = MODELS["wide_resnet"](10, 3, 8, depth=10, widen_factor=1).eval()
    for name, module in model.named_modules():
        if name.endswith(".conv2"):
            nn.init.zeros_(module.weight)
    out = logits(model, torch.randn(2, 3, 8, 8))
    assert not torch.allclose(out[0], out[1])


def test_wide_resnet_rejects_depth_not_6n_plus_4():
    with pytest.raises(UserError, match="6n\\+4"):
        MODELS["wide_resnet"](10, 3, 32, depth=18)


def test_lenet5_keeps_classic_head_at_any_resolution():
    for resolution in (8, 28, 32):
        model = MODELS["lenet5"](10, 1, resolution)
        assert [model.get_submodule(n).out_features for n in ("fc1", "fc2", "fc")] == [120, 84, 10]
        assert model.fc1.in_features == 16 * 5 * 5


def test_cnn_family_grows_in_width():
    counts = [num_parameters(MODELS[name](10, 3, 32)) for name in ("cnn_xs", "cnn_s", "cnn_m")]
    assert counts[0] < counts[1] < counts[2]


def digits_accuracy(build) -> float:
    """Eval accuracy on the last 597 digits after 3 Adam epochs on the first 1,200 of
    the network ``build()`` makes (seeded before it is built)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for start in range(0, 1200, 64):
            loss = F.cross_entropy(model(images[start : start + 64]), labels[start : start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float((logits(model.eval(), images[1200:]).argmax(1) == labels[1200:]).float().mean())


def test_cnn_xs_learns_8x8_digits_in_seconds():
    assert digits_accuracy(lambda: MODELS["cnn_xs"](10, 1, 8)) > 0.8


def test_mlp_params_set_hidden_layers():
    model = MODELS["mlp_s"](10, 3, 8, hidden=7, depth=4)
    linears = [
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    assert linears == [("fc1", 192, 7), ("fc2", 7, 7), ("fc3", 7, 7), ("fc4", 7, 7), ("fc", 7, 10)]
    linear_probe = MODELS["mlp_m"](10, 1, 8, depth=0)
    assert [m.in_features for m in linear_probe.modules() if isinstance(m, nn.Linear)] == [64]
    assert MODELS["mlp_m"](10, 1, 8).fc1.out_features > MODELS["mlp_s"](10, 1, 8).fc1.out_features


def test_mlp_rejects_nonsense_sizes():
    with pytest.raises(UserError, match="hidden"):
        MODELS["mlp_s"](10, 1, 8, hidden=0)


def test_torchvision_names_are_classifiers():
    names = torchvision_model_names()
    assert names == sorted(names)
    assert {"resnet18", "vgg11_bn", "vit_b_16"} <= set(names)
    assert not any(name.startswith(("fcn_", "raft_", "quantized_")) for name in names)


def test_torchvision_model_adapts_to_grayscale(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("labkit must never download weights")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = create_torchvision_model("resnet18", 5, 1, 32)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    assert logits(model.train(), torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert create_torchvision_model("resnet18", 5, 3, 32).conv1.in_channels == 3


def test_torchvision_stem_inside_a_sequential_is_adapted():
    model = create_torchvision_model("mobilenet_v3_small", 4, 1, 32)
    assert model.features[0][0].in_channels == 1
    assert logits(model.eval(), torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_torchvision_models_return_plain_logits_in_training_mode():
    model = create_torchvision_model("googlenet", 3, 3, 32).train()
    assert isinstance(model(torch.randn(2, 3, 32, 32)), torch.Tensor)


def test_torchvision_vit_is_built_for_the_data_resolution():
    model = create_torchvision_model("vit_b_32", 3, 3, 64)
    assert logits(model.eval(), torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(UserError, match="resolution 40"):
        create_torchvision_model("vit_b_32", 3, 3, 40)


def test_unknown_torchvision_arch_suggests_close_matches():
    with pytest.raises(UserError) as error:
        create_torchvision_model("resnet181", 5, 1, 32)
    message = str(error.value)
    assert "'resnet181'" in message and "'resnet18'" in message
    assert "torchvision_model_names()" in message


# CIFAR model zoo (labkit/models/cifar.py)

# He et al. (2016), Table 6: parameters of the CIFAR-10 ResNets
PUBLISHED_PARAMETERS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}


@pytest.mark.parametrize("depth", sorted(PUBLISHED_PARAMETERS))
def test_cifar_resnet_parameter_counts_match_the_published_ones(depth):
    count = num_parameters(MODELS[f"resnet{depth}"](10, 3, 32))
    # the published counts are rounded to two digits; 1x1 projections add ~2.7k (option B)
    assert count == pytest.approx(PUBLISHED_PARAMETERS[depth], rel=0.02)


@pytest.mark.parametrize("depth, per_stage", sorted(CIFAR_RESNETS.items()))
def test_cifar_resnet_has_three_stages_of_16_32_64_channels(depth, per_stage):
    model = MODELS[f"resnet{depth}"](10, 3, 32)
    assert [len(model.get_submodule(f"layer{k}")) for k in (1, 2, 3)] == [per_stage] * 3
    assert not hasattr(model, "layer4")
    assert [model.get_submodule(f"layer{k}.0.conv2").out_channels for k in (1, 2, 3)] == [16, 32, 64]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # depth = 3x3 convs + fc
    # the layer measures see every conv and fc, in network order, under readable names
    names = [name for name, _ in measured_layers(model)]
    assert names[0] == "conv1" and names[-1] == "fc"
    assert names.index("layer2-0-conv2") < names.index("layer2-0-shortcut-conv") < names.index(
        "layer2-1-conv1" if per_stage > 1 else "layer3-0-conv1")
    stage_outputs = {}
    for k in (1, 2, 3):
        model.get_submodule(f"layer{k}").register_forward_hook(
            lambda module, inputs, output, k=k: stage_outputs.__setitem__(k, output.shape))
    model(torch.randn(2, 3, 32, 32))
    assert stage_outputs == {1: (2, 16, 32, 32), 2: (2, 32, 16, 16), 3: (2, 64, 8, 8)}


def test_cifar_resnet_noskip_removes_the_shortcuts():
    model = MODELS["resnet20"](10, 3, 32, noskip=True)
    assert not any("shortcut" in name for name in module_names(model))
    assert num_parameters(model) < num_parameters(MODELS["resnet20"](10, 3, 32))


@pytest.mark.parametrize("depth", PLAIN_CNN_DEPTHS)
def test_plain_cnns_have_their_number_of_conv_layers(depth):
    model = MODELS[f"plain_cnn{depth}"](10, 3, 32)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth
    assert all(isinstance(model.get_submodule(f"block{s}.bn1"), nn.BatchNorm2d)
               for s in range(1, len([n for n in module_names(model) if re.fullmatch(r"block\d", n)]) + 1))
    # TAKD's head: the flattened 32-px map (then fc1 for the two deepest), whatever the input
    flattened = model.fc1.in_features if depth >= 8 else model.fc.in_features
    assert flattened == {2: 16 * 8 * 8, 4: 32 * 8 * 8, 6: 64 * 4 * 4, 8: 128 * 2 * 2,
                         10: 256 * 2 * 2}[depth]
    for resolution in (8, 11, 32):
        small = MODELS[f"plain_cnn{depth}"](10, 1, resolution)
        assert logits(small.train(), torch.randn(2, 1, resolution, resolution)).shape == (2, 10)


def test_plain_cnns_grow_with_depth():
    counts = [num_parameters(MODELS[f"plain_cnn{depth}"](10, 3, 32)) for depth in PLAIN_CNN_DEPTHS]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_resnet_blocks_2222_is_resnet18():
    torch.manual_seed(0)
    reference = MODELS["resnet18"](10, 3, 16).eval()
    model = MODELS["resnet_blocks"](10, 3, 16, blocks=(2, 2, 2, 2)).eval()
    assert module_names(model) == module_names(reference)
    model.load_state_dict(reference.state_dict())  # same names and shapes, strictly
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(logits(model, images), logits(reference, images))


@pytest.mark.parametrize("blocks", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 2), (2, 2, 2, 2)])
def test_resnet_blocks_follow_the_block_counts(blocks):
    model = MODELS["resnet_blocks"](10, 1, 8, blocks=blocks, width=8)
    assert [len(model.get_submodule(f"layer{k + 1}")) for k in range(4)] == list(blocks)
    assert model.fc.in_features == 64
    assert logits(model.train(), torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_blocks_rejects_empty_stages():
    with pytest.raises(UserError, match="blocks"):
        MODELS["resnet_blocks"](10, 3, 32, blocks=(1, 0, 1))
    with pytest.raises(UserError, match="blocks"):
        MODELS["resnet_blocks"](10, 3, 32, blocks=())


@pytest.mark.parametrize("name", ["resnet8", "plain_cnn4", "resnet_blocks"])
def test_cifar_zoo_learns_8x8_digits(name):
    params = {"blocks": (1, 1), "width": 8} if name == "resnet_blocks" else {}
    assert digits_accuracy(lambda: MODELS[name](10, 1, 8, **params)) > 0.8

"""Cutting networks with torch.fx: the two halves compose to the network, on plain and
residual architectures; cuts a skip connection crosses are refused."""
import pytest
import torch

from labkit.api import MODELS, UserError
from labkit_stitch import cut


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=10, in_channels=1, resolution=16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name, layers", [
    ("cnn_s", ["block1", "block2-relu1", "block3", "avgpool", "flatten"]),
    ("resnet18_xxs", ["relu", "layer1", "layer2-0", "layer2.1", "layer3", "layer4", "avgpool"]),
    ("mlp_s", ["fc1", "relu2"]),
])
def test_bottom_then_top_is_the_whole_network(name, layers):
    model = build(name)
    images = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        expected = model(images)
        for layer in layers:
            activation = cut.bottom(model, layer)(images)
            assert torch.equal(cut.top(model, layer)(activation), expected), layer


def test_a_layer_is_its_modules_output_and_the_halves_share_the_weights():
    model = build("resnet18_xxs")
    layers = ["layer1-1", "layer2", "layer3-0-conv2", "fc"]
    seen = {}
    hooks = [model.get_submodule(cut.module_path(layer)).register_forward_hook(
        lambda module, args, output, layer=layer: seen.__setitem__(layer, output))
        for layer in layers]
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        model(images)
        for hook in hooks:
            hook.remove()
        outputs = cut.bottom(model, layers)(images)
    assert list(outputs) == layers
    for layer in layers:
        assert torch.equal(outputs[layer], seen[layer]), layer
    top = cut.top(model, "layer3")
    assert top.get_submodule("layer4.0.conv1").weight is model.layer4[0].conv1.weight


@pytest.mark.parametrize("layer", ["layer2-0-conv1", "layer2-0-bn2", "layer3-1-conv2"])
def test_a_cut_inside_a_residual_block_is_refused(layer):
    model = build("resnet18_xxs")
    cut.bottom(model, layer)  # reading an inner layer is fine
    with pytest.raises(UserError, match="skip connection"):
        cut.top(model, layer)


def test_an_unknown_layer_names_close_matches_and_the_layers_there_are():
    with pytest.raises(UserError, match=r"'blok2' is not in PlainConvNet; did you mean "
                                        r"'block2'.* top-level layers are: block1, block2, "
                                        r"block3, avgpool, flatten, fc"):
        cut.bottom(build("cnn_s"), "blok2")
    names = cut.layer_names(build("resnet18_xxs"))
    assert {"relu", "layer2", "layer2-0", "layer2-0-conv1", "layer2-0-add"} <= set(names)
    assert names.index("layer1") < names.index("layer2") < names.index("fc")

"""Encoders from the registry (fc convention) and the DINO head."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.api import MODELS, UserError
from labkit_dino.networks import (DinoHead, NormalizedLinear, ProbeClassifier, embed,
                                  with_probe_classifier)


def test_encoder_is_the_model_up_to_fc_and_keeps_its_state_dict_keys():
    torch.manual_seed(0)
    model = MODELS["cnn_xs"](10, 1, 8)
    keys = list(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    expected = nn.Sequential(*list(model.children())[:-1])(x)  # everything before fc
    with_probe_classifier(model, "cnn_xs")
    assert isinstance(model.fc, ProbeClassifier) and list(model.state_dict()) == keys
    assert torch.equal(embed(model, x), expected)
    assert torch.equal(model(x), torch.zeros(4, 10))  # an unfitted probe: zero logits
    assert not any(p.requires_grad for p in model.fc.parameters())
    # a checkpointed DINO network loads into the plain registry model
    MODELS["cnn_xs"](10, 1, 8).load_state_dict(model.state_dict())


def test_a_model_without_fc_is_refused_with_the_convention():
    with pytest.raises(UserError, match="fc"):
        with_probe_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "plain")


def test_weight_normalised_last_layer_ignores_row_scale():
    layer = NormalizedLinear(8, 5)
    x = torch.randn(3, 8)
    out = layer(x)
    assert torch.allclose(out, x @ F.normalize(layer.weight, dim=1).T)
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([[2.0], [3.0], [0.5], [7.0], [1.0]]))
    assert torch.allclose(layer(x), out, atol=1e-6)


def test_head_structure_follows_its_parameters():
    head = DinoHead(32, [64, 48], bottleneck_dim=16, out_dim=100, activation="relu",
                    batch_norm=True)
    blocks = list(head.mlp)
    assert [b.fc.out_features for b in blocks] == [64, 48]
    assert all(isinstance(b.bn, nn.BatchNorm1d) and isinstance(b.act, nn.ReLU) for b in blocks)
    assert isinstance(head.last_layer, NormalizedLinear)
    x = torch.randn(6, 32)
    # the bottleneck's output is L2-normalised before the last layer
    z = F.normalize(head.bottleneck(head.mlp(x)), dim=-1)
    assert torch.allclose(head(x), head.last_layer(z))
    assert head(x).shape == (6, 100) and head.center.shape == (100,)
    # DINO's init: weights N(0, 0.02²), biases 0
    assert head.mlp[0].fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(head.mlp[0].fc.bias, torch.zeros(64))

    plain = DinoHead(32, [], bottleneck_dim=0, out_dim=10, init="default")
    assert len(plain.mlp) == 0 and isinstance(plain.last_layer, nn.Linear)
    assert torch.allclose(plain(x), plain.last_layer(x))
    gelu = DinoHead(32, [16], bottleneck_dim=8, out_dim=10)
    assert isinstance(gelu.mlp[0].act, nn.GELU) and not hasattr(gelu.mlp[0], "bn")

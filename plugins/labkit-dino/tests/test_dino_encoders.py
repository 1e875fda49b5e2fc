"""Encoders beyond ``fc``: torchvision ViTs' ``heads.head``, ``embedding_from``, and the
random-teacher paper's ``convnet_<w>_<k>`` / ``vit_tiny`` / ``vit_small``."""
import pandas as pd
import pytest
import torch
from torch import nn

from labkit.api import MODELS, UserError, checkpoint, runinfo, train
from labkit_dino.encoders import ENCODERS
from labkit_dino.networks import ProbeClassifier, embed, embedding_dim, with_probe_classifier


def vit_class_token(model, x):
    """torchvision's ViT forward up to the classifier, from its own parts."""
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(len(x), -1, -1), tokens], dim=1)
    return model.encoder(tokens)[:, 0]


def test_torchvision_vit_embedding_is_its_class_token_and_keys_are_kept(dino_registries):
    torch.manual_seed(0)
    model = dino_registries.models.create("tv:vit_b_16", 10, 3, 32)
    keys = list(model.state_dict())
    with_probe_classifier(model, "tv:vit_b_16")  # found as heads.head
    assert isinstance(model.heads.head, ProbeClassifier) and list(model.state_dict()) == keys
    assert embedding_dim(model) == 768
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(embed(model, x), vit_class_token(model, x))


def test_vit_tiny_is_a_patch_4_vision_transformer_for_32_px(dino_registries):
    torch.manual_seed(0)
    model = ENCODERS["vit_tiny"](10, 1, 32, num_layers=2)
    assert model.patch_size == 4 and model.seq_length == 64 + 1 and model.hidden_dim == 192
    assert model.conv_proj.in_channels == 1
    with_probe_classifier(model, "vit_tiny")
    model.eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(embed(model, x), vit_class_token(model, x))
    assert ENCODERS["vit_small"](10, 3, 32, num_layers=1).hidden_dim == 384
    with pytest.raises(UserError, match="multiple of it; choose a model patch_size"):
        ENCODERS["vit_tiny"](10, 3, 30)


def test_convnet_k_blocks_halve_the_image_and_embed_the_flattened_map():
    model = ENCODERS["convnet_32_2"](10, 1, 8)
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc"]
    assert model.fc.in_features == 32 * 2 * 2
    x = torch.randn(4, 1, 8, 8)
    with_probe_classifier(model, "convnet_32_2")
    assert torch.equal(embed(model, x), nn.Sequential(*list(model.children())[:-1])(x))
    assert "bn3" in dict(ENCODERS["convnet_16_3"](10, 3, 32, batch_norm=True).named_children())
    with pytest.raises(UserError, match="needs at least 16 px.*depth of at most 3"):
        ENCODERS["convnet_16_4"](10, 1, 8)


def test_embedding_from_names_any_final_linear_and_errors_list_the_candidates():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(UserError, match=r"set method.embedding_from.*: 1, 3"):
        with_probe_classifier(model, "plain")
    with_probe_classifier(model, "plain", "3")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(embed(model, x), model[2](model[1](model[0](x))))
    with pytest.raises(UserError, match="no nn.Linear `2`"):
        with_probe_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "plain", "2")


@pytest.mark.parametrize("model", ["convnet_16_2", {"name": "vit_tiny", "num_layers": 1,
                                                    "patch_size": 2}])
def test_dino_trains_the_papers_encoders_end_to_end(dino_run, dino_registries, model):
    run = dino_run(epochs=1, subset=200, batch_size=100, model=model,
                   student_init="random")
    assert train(run, dino_registries, "cpu", progress=False) == "finished"
    log = pd.read_csv(run.directory / "log.csv")
    assert 0.1 < log["probe-eval-student-knn"].iloc[-1] <= 1.0
    # the checkpointed student is the registry model with its probe as classifier
    modules = checkpoint.read(runinfo.final_checkpoint(run))["modules"]
    name = model if isinstance(model, str) else model["name"]
    params = {} if isinstance(model, str) else {k: v for k, v in model.items() if k != "name"}
    dino_registries.models.create(name, 10, 1, 8, **params).load_state_dict(modules["model"])


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_cifar_resnets_of_the_model_zoo_are_encoders(name):
    if name not in MODELS:
        pytest.skip(f"{name} is not in this labkit's model zoo")
    model = MODELS[name](10, 3, 32)
    with_probe_classifier(model, name)
    assert embedding_dim(model) == 64
    assert embed(model.eval(), torch.randn(2, 3, 32, 32)).shape == (2, 64)

import pytest
from pydantic import ValidationError

import labkit
from labkit.cli import plugins
from labkit.core.errors import UserError
from labkit.core.registry import Registry


def factory(num_classes: int, in_channels: int, resolution: int, width: int = 4,
            act: str = "relu"):
    return ("built", num_classes, width, act)


def test_params_model_from_signature_injects_defaults_and_forbids_unknown_keys():
    reg = Registry("models", ("num_classes", "in_channels", "resolution"))
    reg.register("net", factory)
    params = reg.get("net").params
    assert params.model_validate({}).model_dump() == {"width": 4, "act": "relu"}
    with pytest.raises(ValidationError):
        params.model_validate({"widht": 3})
    with pytest.raises(ValidationError):
        params.model_validate({"width": "wide"})


def test_unknown_name_suggests_close_names_and_how_to_list():
    reg = Registry("models", ("num_classes", "in_channels", "resolution"))
    reg.register("resnet18", factory)
    reg.register("resnet34", factory)
    with pytest.raises(UserError) as err:
        reg.get("resnet81")
    assert "'resnet18'" in str(err.value) and "labkit list models" in str(err.value)


def test_wildcard_listing(registries):
    assert registries.models.names("resnet18*") == [
        "resnet18", "resnet18_s", "resnet18_xs", "resnet18_xxs"]
    assert "sgd" in registries.optimizers.names()
    assert registries.optimizers.names("zzz*") == []


def test_prefix_entry_passes_rest_of_name(registries):
    net = registries.models.create("tv:resnet18", num_classes=3, in_channels=1, resolution=32)
    assert net.fc.out_features == 3
    assert "tv:nonexistent_arch" in registries.models  # the prefix matches; the build fails
    with pytest.raises(UserError):
        registries.models.create("tv:resnet81", num_classes=3, in_channels=1, resolution=32)


class DuplicatePlugin:
    @staticmethod
    @labkit.hookimpl
    def labkit_register(registries):
        registries.models.register("resnet18", factory)


def test_duplicate_name_names_both_plugins():
    with pytest.raises(UserError) as err:
        plugins.use(DuplicatePlugin)
    assert "'labkit'" in str(err.value) and "'DuplicatePlugin'" in str(err.value)
    plugins.use()


class TypoPlugin:
    @staticmethod
    @labkit.hookimpl
    def labkit_regster(registries):  # misspelt hook name
        pass


def test_hook_name_typo_is_caught():
    with pytest.raises(UserError) as err:
        plugins.use(TypoPlugin)
    assert "labkit_regster" in str(err.value) and "TypoPlugin" in str(err.value)
    plugins.use()


class ModelPlugin:
    @staticmethod
    @labkit.hookimpl
    def labkit_register(registries):
        registries.models.register("my_net", factory)


def test_plugin_registered_around_a_test_and_removed_after():
    regs = plugins.use(ModelPlugin)
    assert regs.models.get("my_net").plugin == "ModelPlugin"
    assert "my_net" not in plugins.use().models


def test_allow_list_naming_a_missing_plugin_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LABKIT_PLUGINS", "no_such_plugin")
    with pytest.raises(UserError) as err:
        plugins.use()
    assert "no_such_plugin" in str(err.value)
    monkeypatch.delenv("LABKIT_PLUGINS")
    plugins.use()

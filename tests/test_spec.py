import json

import pytest

from labkit.core.errors import UserError
from labkit.spec import expand, load_spec_file
from labkit.store.identity import RunConfig, varying_keys

BASE = {"model": "cnn_xs", "dataset": {"name": "digits"}, "epochs": 1}


def runs(registries, spec, run_id="A"):
    return [RunConfig(c, run_id) for c in expand(spec, registries)]


def test_nested_optimizer_value_is_a_grid_axis_with_distinct_identities(registries):
    grid = runs(registries, {**BASE, "optimizer": {"name": "sgd", "lr": [0.1, 0.01]}})
    assert [r.config["optimizer"]["lr"] for r in grid] == [0.1, 0.01]
    assert grid[0].hash != grid[1].hash and grid[0].directory != grid[1].directory
    assert varying_keys([r.config for r in grid]) == ["optimizer.lr"]


def test_list_of_objects_where_one_object_is_expected_is_an_axis(registries):
    grid = runs(registries, {**BASE, "optimizer": [{"name": "sgd", "lr": 0.05},
                                                   {"name": "adam"}]})
    assert [r.config["optimizer"]["name"] for r in grid] == ["sgd", "adam"]
    assert grid[1].config["optimizer"]["lr"] == 1e-3  # adam's default injected


def test_axes_multiply_at_every_depth(registries):
    grid = runs(registries, {**BASE, "model": ["cnn_xs", "mlp_s"], "seed": [0, 1, 2],
                             "dataset": {"name": "digits", "resolution": [8, 16]}})
    assert len(grid) == 12 and len({r.hash for r in grid}) == 12


def test_list_typed_fields_are_not_axes_but_lists_of_lists_are(registries):
    one = runs(registries, {**BASE, "metrics": ["accuracy", "mcc"]})
    assert len(one) == 1 and one[0].config["metrics"] == ["accuracy", "mcc"]
    two = runs(registries, {**BASE, "metrics": [["accuracy"], ["accuracy", "mcc"]]})
    assert [r.config["metrics"] for r in two] == [["accuracy"], ["accuracy", "mcc"]]


def test_defaults_are_injected_everywhere(registries):
    (run,) = runs(registries, BASE)
    c = run.config
    assert c["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                              "weight_decay": 5e-4, "nesterov": False}
    assert c["method"] == {"name": "supervised", "label_smoothing": 0.0}
    assert c["dataset"]["resolution"] == 8 and c["batch_size"] == 128


def test_identity_ignores_device_and_output_folder_but_not_results(registries):
    (a,) = runs(registries, BASE)
    (b,) = runs(registries, {**BASE, "device": "cuda:0", "logs_dir": "elsewhere",
                             "num_workers": 2})
    (c,) = runs(registries, {**BASE, "seed": 1})
    assert a.hash == b.hash and a.hash != c.hash


def test_grid_position_is_not_part_of_identity(registries):
    forward = runs(registries, {**BASE, "seed": [0, 1], "batch_size": [32, 64]})
    backward = runs(registries, {**BASE, "batch_size": [64, 32], "seed": [1, 0]})
    assert {r.hash for r in forward} == {r.hash for r in backward}


def test_run_directory_layout(registries):
    (run,) = runs(registries, {**BASE, "logs_dir": "L"}, run_id="R1")
    parts = run.directory.parts
    assert parts[:4] == ("L", "cnn_xs", "digits_8", "R1")
    assert parts[4].endswith(run.hash)


@pytest.mark.parametrize("spec, expected", [
    ({**BASE, "epochz": 3}, ["epochz", "did you mean 'epochs'"]),
    ({**BASE, "optimizer": {"name": "sgd", "lrr": 0.1}}, ["optimizer", "'lrr'", "'lr'"]),
    ({**BASE, "epochs": "ten"}, ["epochs", "integer"]),
    ({**BASE, "model": "resnet81"}, ["model.name", "'resnet18'", "labkit list models"]),
    ({**BASE, "dataset": {"name": "digits", "augment": 3}}, ["dataset.augment"]),
    ({**BASE, "metrics": ["acuracy"]}, ["metrics.0", "'accuracy'"]),
    ({**BASE, "seed": []}, ["seed", "empty list"]),
    ({**BASE, "optimizer": {"name": "sgd", "lr": [0.1, "x"]}}, ["grid point 2 of 2", "optimizer.lr"]),
])
def test_user_mistakes_name_the_json_path_and_the_fix(registries, spec, expected):
    with pytest.raises(UserError) as err:
        expand(spec, registries)
    message = str(err.value)
    for fragment in expected:
        assert fragment.lower() in message.lower(), message


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "cnn_xs",}')
    with pytest.raises(UserError, match="line 1, column"):
        load_spec_file(bad)
    with pytest.raises(UserError, match="not found"):
        load_spec_file(tmp_path / "nope.json")


# specs that need a first-party plugin are validated by that plugin's tests
PLUGIN_SPEC_PREFIXES = ("distill", "dino", "random_teacher", "stitch")


def test_example_specs_are_valid(registries):
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].joinpath("specs").glob("*.json")):
        if not path.name.startswith(PLUGIN_SPEC_PREFIXES):
            assert expand(json.loads(path.read_text()), registries), path

"""How a stitch spec names networks A and B (run directories, spec files, inline specs),
and the example spec specs/stitch_table.json."""
import json

import pytest
from click.testing import CliRunner
from stitch_helpers import REPO, example_runs, net_spec

from labkit.api import LabkitGroup, RunConfig, UserError, build_component, expand
from labkit_stitch import cut
from labkit_stitch.commands import stitch_table_command
from labkit_stitch.stitching import StitchedParams


def stitch(sender: dict, receiver: dict | None = None) -> dict:
    return {"model": {"name": "stitched", "sender": sender, "receiver": receiver or sender,
                      "sender_layer": "block1", "receiver_layer": "block2"}}


def test_a_spec_file_is_recorded_by_content_so_editing_it_gives_new_stitch_runs(registries,
                                                                               tmp_path):
    nets = tmp_path / "nets.json"
    nets.write_text(json.dumps({**net_spec("cnn_xs", tmp_path), "seed": [0, 1]}))
    ref = {"spec": str(nets), "run_id": "A", "where": {"seed": 1}}
    (config,) = expand(stitch(ref), registries)
    recorded = config["model"]["sender"]
    assert recorded["spec"] == json.loads(nets.read_text())
    before = RunConfig(config, "S").hash

    nets.write_text(json.dumps({**net_spec("cnn_xs", tmp_path), "seed": [0, 1], "epochs": 7}))
    (edited,) = expand(stitch(ref), registries)
    assert RunConfig(edited, "S").hash != before
    inline = {"spec": json.loads(nets.read_text()), "run_id": "A", "where": {"seed": 1}}
    assert expand(stitch(inline), registries) == [edited]


@pytest.mark.parametrize("ref, message", [
    ({"spec": "SPEC", "run_id": "A"}, r"picks 2 of the spec's 2 runs, not one; add keys that "
                                      r"vary across its runs: seed"),
    ({"spec": "SPEC", "run_id": "A", "where": {"sed": 1}}, r"sed is not a config key"),
    ({"spec": "SPEC"}, r"model.sender: .*needs \"run_id\""),
    ({"spec": "SPEC", "run_id": "A", "dir": "x"}, r"either \"dir\""),
    ({"dir": "DIR"}, r"model.sender: .*holds no config\.json"),
    ({"spec": "missing.json", "run_id": "A"}, r"model.sender.spec: .*spec file .missing.json. not found"),
])
def test_a_wrong_reference_is_an_error_at_validation(registries, tmp_path, ref, message):
    nets = tmp_path / "nets.json"
    nets.write_text(json.dumps({**net_spec("cnn_xs", tmp_path), "seed": [0, 1]}))
    ref = {k: {"SPEC": str(nets), "DIR": str(tmp_path)}.get(v, v) if isinstance(v, str) else v
           for k, v in ref.items()}
    with pytest.raises(UserError, match=message):
        expand(stitch(ref), registries)


def test_stitch_table_refuses_a_spec_of_other_models(registries, write_spec):
    group = LabkitGroup(commands={"stitch-table": stitch_table_command})
    result = CliRunner().invoke(group, ["stitch-table", str(write_spec({"model": "cnn_xs"})),
                                        "--run-id", "T"])
    assert result.exit_code == 2
    assert "needs a spec whose model is 'stitched'" in result.output


def test_the_example_spec_is_valid_and_its_layers_are_cut_points(registries, monkeypatch):
    # the spec names specs/quickstart.json relative to the repository
    configs = [run.config for run in example_runs("stitch_table.json", registries,
                                                  monkeypatch, REPO)]
    assert len(configs) == 3 * 4 * 2
    params = [StitchedParams.model_validate({k: v for k, v in c["model"].items() if k != "name"})
              for c in configs]
    a, b = params[0].sender.run_config(), params[0].receiver.run_config()
    assert (a.config["model"]["name"], b.config["model"]["name"]) == ("cnn_s", "resnet18_xxs")
    networks = {}
    for run in (a, b):
        data = build_component(registries, "datasets", run.config["dataset"])
        networks[run.config["model"]["name"]] = build_component(
            registries, "models", run.config["model"], num_classes=data.num_classes,
            in_channels=data.in_channels, resolution=data.resolution)
    for p in params:
        cut.bottom(networks["cnn_s"], p.sender_layer)
        cut.top(networks["resnet18_xxs"], p.receiver_layer)

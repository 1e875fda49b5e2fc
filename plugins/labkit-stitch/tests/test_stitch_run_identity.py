"""A stitch run's identity follows the weights of a network named by run directory (its
identity hash and final checkpoint digest are recorded); an untrained directory is
refused; "trained" is decided by the final checkpoint, never by status.json."""
import pytest
from stitch_helpers import net_spec, one_run

from labkit.api import RunConfig, UserError, checkpoint, ensure_trained, expand, runinfo, train
from labkit_stitch.stitching import StitchedParams
from labkit_stitch.tables import final_value


def stitch_config(sender: dict, logs, registries) -> dict:
    (config,) = expand({"model": {"name": "stitched", "sender": sender, "receiver": sender,
                                  "sender_layer": "block1", "receiver_layer": "block2"},
                        "dataset": "digits", "epochs": 1, "logs_dir": str(logs)}, registries)
    return config


def forget_final_checkpoint(run: RunConfig) -> None:
    final = runinfo.final_checkpoint(run)
    final.unlink()
    final.with_name(final.name + ".sha256").unlink()


def test_a_retrained_network_directory_gives_new_stitch_runs(registries, tmp_path):
    net = one_run(net_spec("cnn_xs", tmp_path / "nets", epochs=2), registries)
    assert train(net, registries, progress=False) == "finished"
    ref = {"dir": str(net.directory)}
    before = stitch_config(ref, tmp_path / "logs", registries)
    final = runinfo.final_checkpoint(net)
    assert before["model"]["sender"]["run"] == {
        "hash": runinfo.read_config(net.directory)["hash"],
        "checkpoint": checkpoint.digest(final)}
    assert stitch_config(ref, tmp_path / "logs", registries) == before

    # interrupted in its last epoch (no final checkpoint): not trained, so refused
    forget_final_checkpoint(net)
    with pytest.raises(UserError, match=r"model\.sender: .*is not trained .*train it first"):
        stitch_config(ref, tmp_path / "logs", registries)

    # trained again (from its previous checkpoint): another weights file, new stitch runs
    assert train(net, registries, progress=False) == "finished"
    assert checkpoint.digest(final) != before["model"]["sender"]["run"]["checkpoint"]
    after = stitch_config(ref, tmp_path / "logs", registries)
    assert after["model"]["receiver"]["run"]["checkpoint"] == checkpoint.digest(final)
    assert RunConfig(after, "S").hash != RunConfig(before, "S").hash

    # the stale resolved config no longer validates (as when the engine builds the stitch)
    params = {k: v for k, v in before["model"].items() if k != "name"}
    with pytest.raises(ValueError, match=r"retrained since"):
        StitchedParams.model_validate(params)
    with pytest.raises(UserError, match=r"model\.sender: .*leave it out"):
        stitch_config({**ref, "run": before["model"]["sender"]["run"]}, tmp_path / "logs",
                      registries)
    spec_ref = {"spec": net_spec("cnn_xs", tmp_path / "nets", epochs=2), "run_id": "nets"}
    assert "run" not in stitch_config(spec_ref, tmp_path / "logs", registries)["model"]["sender"]
    with pytest.raises(UserError, match=r"\"run\" is derived from \"dir\""):
        stitch_config({**spec_ref, "run": after["model"]["sender"]["run"]}, tmp_path / "logs",
                      registries)


def test_a_status_file_saying_finished_without_the_final_checkpoint_is_not_trained(
        registries, tmp_path):
    net = one_run(net_spec("cnn_xs", tmp_path, epochs=1), registries)
    ensure_trained(net, registries)
    forget_final_checkpoint(net)
    assert runinfo.read_status(net.directory)["state"] == "finished"  # a stale report
    ensure_trained(net, registries)
    assert checkpoint.is_intact(runinfo.final_checkpoint(net))
    assert final_value(net, "eval-accuracy") > 0.5
    forget_final_checkpoint(net)  # and the tables leave it empty
    assert final_value(net, "eval-accuracy") != final_value(net, "eval-accuracy")  # NaN

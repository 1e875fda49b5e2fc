"""Stitched networks trained by the unchanged engine: self-stitching recovers a network's
accuracy, a random sender scores below a trained one, residual networks cut at block
outputs, the autoencoder stitch, exact resume, and runs trained on demand."""
import pandas as pd
import pytest
import torch
from stitch_helpers import net_spec, one_run

from labkit.api import FinishedRun, UserError, checkpoint, ensure_trained, runinfo
from labkit.api import train as labkit_train
from labkit_stitch.stitching import Stitch, StitchedNetwork


def stitch_spec(sender, receiver, sender_layer, receiver_layer, logs, **overrides) -> dict:
    """A stitch of two runs (RunConfigs or reference dicts) on digits at 8×8."""
    def ref(run):
        return run if isinstance(run, dict) else {"dir": str(run.directory)}

    model = {"name": "stitched", "sender": ref(sender), "receiver": ref(receiver),
             "sender_layer": sender_layer, "receiver_layer": receiver_layer,
             **overrides.pop("model", {})}
    return {"model": model, "dataset": "digits", "optimizer": {"name": "adam", "lr": 0.01},
            "epochs": 4, "batch_size": 64, "logs_dir": str(logs), **overrides}


def train(spec: dict, registries):
    run = one_run(spec, registries, run_id="stitch")
    assert labkit_train(run, registries, progress=False) == "finished", \
        runinfo.read_status(run.directory)
    return run


def final(run, column: str = "eval-accuracy") -> float:
    return float(pd.read_csv(run.directory / runinfo.LOG_CSV)[column].iloc[-1])


def test_self_stitching_at_the_same_layer_recovers_the_accuracy(registries, trained, tmp_path):
    net = trained("cnn_xs")
    own = final(net)
    assert own > 0.9
    run = train(stitch_spec(net, net, "block1", "block1", tmp_path), registries)
    assert final(run) == pytest.approx(own, abs=0.02)

    # only the stitch was trained, and only the stitch is checkpointed
    state = checkpoint.load_latest(run.directory / "checkpoints")
    assert all(key.startswith("layers.") for key in state["modules"]["model"])
    stitched = FinishedRun(run, registries).model
    original = FinishedRun(net, registries).model
    assert torch.equal(stitched.receiver.get_submodule("block2.conv1").weight,
                       original.block2.conv1.weight)
    assert torch.equal(stitched.sender.get_submodule("block1.bn1").running_mean,
                       original.block1.bn1.running_mean)
    images = torch.stack([FinishedRun(net, registries).data.evals["eval"][i][0]
                          for i in range(64)])
    with torch.no_grad():
        agree = (stitched(images).argmax(1) == original(images).argmax(1)).float().mean()
    assert agree > 0.9


def test_a_random_sender_scores_below_the_trained_one(registries, trained, tmp_path):
    net = trained("cnn_xs")
    accuracy = {}
    for weights in ("trained", "random"):
        spec = stitch_spec(net, net, "block2", "block2", tmp_path,
                           model={"sender_weights": weights})
        accuracy[weights] = final(train(spec, registries))
    # digits are easy: a stitch reads a fair amount even from random features (0.86 here)
    assert accuracy["trained"] > accuracy["random"] + 0.05, accuracy


def test_a_residual_network_stitches_at_a_block_output(registries, trained, tmp_path):
    net = trained("resnet18_xxs")
    run = train(stitch_spec(net, net, "layer2-0", "layer2.0", tmp_path, epochs=3), registries)
    assert run.config["model"]["receiver_layer"] == "layer2-0"  # one spelling, one identity
    assert final(run) == pytest.approx(final(net), abs=0.03)
    with pytest.raises(UserError, match="skip connection"):
        labkit_train(one_run(stitch_spec(net, net, "layer2", "layer3-0-conv1", tmp_path),
                             registries, run_id="bad"), registries, progress=False)


def test_stitches_between_different_networks_resample_and_flatten(registries, trained, tmp_path):
    sender, receiver = trained("cnn_xs"), trained("resnet18_xxs")
    for sender_layer, receiver_layer in (("block1", "layer3"), ("block2", "avgpool"),
                                         ("block1", "flatten")):
        spec = stitch_spec(sender, receiver, sender_layer, receiver_layer, tmp_path, epochs=2)
        assert final(train(spec, registries)) > 0.3, (sender_layer, receiver_layer)
    stitch = Stitch((16, 4, 4), (64,), depth=2)
    assert stitch(torch.randn(3, 16, 4, 4)).shape == (3, 64)
    assert Stitch((16, 4, 4), (8, 8, 8))(torch.randn(3, 16, 4, 4)).shape == (3, 8, 8, 8)
    with pytest.raises(UserError, match="cannot stitch"):
        Stitch((64,), (8, 8, 8))


def test_the_autoencoder_stitch_fits_the_receivers_activations(registries, trained, tmp_path):
    net = trained("cnn_xs")
    run = train(stitch_spec(net, net, "block1", "block1", tmp_path, method="autoencoder_stitch",
                            optimizer={"name": "adam", "lr": 0.03}), registries)
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert log["train-loss"].iloc[-1] < 0.1 * log["train-loss"].iloc[0]  # mean squared error
    assert final(run) == pytest.approx(final(net), abs=0.02)
    with pytest.raises(UserError, match="fits the stitch of the model 'stitched'"):
        labkit_train(one_run(net_spec("cnn_xs", tmp_path, method="autoencoder_stitch"),
                             registries), registries, progress=False)


def test_a_stitch_run_resumes_bit_for_bit(registries, trained, tmp_path):
    net = trained("cnn_xs")
    run = train(stitch_spec(net, net, "block1", "block2", tmp_path, epochs=3), registries)
    last = checkpoint.checkpoint_path(run.directory / "checkpoints", 3)
    state = checkpoint.read(last)
    last.unlink()
    last.with_name(last.name + ".sha256").unlink()
    (run.directory / runinfo.STATUS_JSON).unlink()
    assert labkit_train(run, registries, progress=False) == "finished"
    again = checkpoint.read(last)["modules"]["model"]
    for key, tensor in state["modules"]["model"].items():
        assert torch.equal(tensor, again[key]), key


def test_runs_given_by_spec_train_on_demand_without_changing_the_stitch(registries, tmp_path):
    weights = []
    for case in ("on_demand", "beforehand"):
        sender = {"spec": net_spec("cnn_xs", tmp_path / case, epochs=2), "run_id": "nets"}
        spec = stitch_spec(sender, sender, "block1", "block1", tmp_path / case, epochs=1)
        if case == "beforehand":
            ensure_trained(one_run(sender["spec"], registries), registries)
        run = train(spec, registries)
        assert runinfo.read_status(
            one_run(sender["spec"], registries).directory)["state"] == "finished"
        weights.append(checkpoint.load_latest(run.directory / "checkpoints")["modules"]["model"])
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


def test_stitched_network_keeps_its_frozen_halves_in_eval_mode():
    halves = [torch.nn.Sequential(torch.nn.BatchNorm2d(4)) for _ in range(3)]
    network = StitchedNetwork(halves[0], Stitch((4, 2, 2), (4, 2, 2)), halves[1], halves[2])
    network.train()
    assert network.stitch.training
    assert not any(part.training for part in halves)
    assert [name for name, p in network.named_parameters() if p.requires_grad] == \
        [f"stitch.{name}" for name, _ in network.stitch.named_parameters()]

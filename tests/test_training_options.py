"""Gradient accumulation, clipping and mixed precision in the engine (issue 15, part 2)."""
import pytest
import torch

from labkit import checkpoint, engine, runinfo
from labkit.identity import RunConfig
from labkit.spec import expand
from labkit.testing import forget_last_epoch

TINY = {"model": "mlp_s", "dataset": {"name": "digits"}, "epochs": 1,
        "optimizer": {"name": "sgd", "lr": 0.05}}


def trained(registries, tmp_path, name, **overrides):
    (config,) = expand({**TINY, "logs_dir": str(tmp_path / name), **overrides}, registries)
    run = RunConfig(config, "O")
    assert engine.train(run, registries, progress=False) == "finished"
    return run, checkpoint.read(runinfo.final_checkpoint(run))


def initial_weights(registries, run):
    """The run's weights before training (same seed, same construction)."""
    from labkit.build import build_component, seed_everything

    seed_everything(run.config["seed"])
    data = build_component(registries, "datasets", run.config["dataset"])
    return build_component(registries, "models", run.config["model"],
                           num_classes=data.num_classes, in_channels=data.in_channels,
                           resolution=data.resolution).state_dict()


def max_change(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_accumulated_micro_batches_step_like_one_large_batch(registries, tmp_path):
    # an MLP has no batch statistics: 2 x 32 must step as 64 (the same samples, in the
    # same order: 1437 digits leave a last step of 29 either way)
    large, large_state = trained(registries, tmp_path, "large", batch_size=64)
    micro, micro_state = trained(registries, tmp_path, "micro", batch_size=32, accumulate=2)
    assert large.hash != micro.hash
    assert max_change(large_state["modules"]["model"], micro_state["modules"]["model"]) < 1e-5
    row_large, row_micro = large_state["history"][-1], micro_state["history"][-1]
    assert row_micro["train-loss"] == pytest.approx(row_large["train-loss"], rel=1e-5)
    assert row_micro["eval-accuracy"] == row_large["eval-accuracy"]
    # and it is not the same as stepping on every micro-batch
    _, plain = trained(registries, tmp_path, "plain", batch_size=32)
    assert max_change(plain["modules"]["model"], micro_state["modules"]["model"]) > 1e-3


def test_clipping_bounds_every_step(registries, tmp_path):
    sgd = {"name": "sgd", "lr": 0.05, "weight_decay": 0.0}  # decay is no gradient: unclipped
    run, clipped = trained(registries, tmp_path, "clip", clip_grad_norm=1e-6, optimizer=sgd)
    _, free = trained(registries, tmp_path, "free", optimizer=sgd)
    start = initial_weights(registries, run)
    # 23 steps of lr 0.05 with momentum 0.9 move a weight by at most 23 * 0.05 * 1e-6 * 10
    assert max_change(start, clipped["modules"]["model"]) < 2e-5
    assert max_change(start, free["modules"]["model"]) > 1e-2


@pytest.mark.parametrize("precision", ["bf16", "16-mixed"])
def test_mixed_precision_trains_and_resumes_exactly(registries, tmp_path, precision):
    run, state = trained(registries, tmp_path, precision, epochs=3, precision=precision,
                         model="cnn_xs")
    assert state["history"][-1]["eval-accuracy"] > 0.6
    if precision == "16-mixed":
        assert state["scaler"]["scale"] > 0  # the loss scaler is checkpointed
    forget_last_epoch(run.directory)
    assert engine.train(run, registries, progress=False) == "finished"
    again = checkpoint.read(runinfo.final_checkpoint(run))
    for key, tensor in state["modules"]["model"].items():
        assert torch.equal(tensor, again["modules"]["model"][key]), key
    (full,) = expand({**TINY, "model": "cnn_xs", "epochs": 3, "logs_dir": str(tmp_path)},
                     registries)
    assert run.hash != RunConfig(full, "O").hash  # precision is identity

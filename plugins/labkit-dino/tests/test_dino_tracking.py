"""Opt-in trackers: gradient and parameter statistics, saved outputs and histograms.

One real 2-epoch engine run on digits; the gradients the optimizer applies are read by
torch's global optimizer step pre-hook (nothing of labkit's is replaced) and the saved
files are checked against the final checkpoint's networks.
"""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_HEAD
from torch.optim.optimizer import register_optimizer_step_pre_hook

import labkit_dino
from labkit.api import FinishedRun, RunConfig, checkpoint, expand, runinfo, train, use
from labkit_dino.networks import DinoHead
from labkit_dino.tracking import replace_epoch_rows

PARAM = "network.block1.conv1.weight"  # a student parameter with a gradient at every step


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """(run, finished run, gradients of ``PARAM`` per step and epoch) of a tracked run."""
    environment = pytest.MonkeyPatch()  # the dino_registries fixture, for a module
    environment.setenv("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    environment.delenv("LABKIT_PLUGINS", raising=False)
    registries = use(labkit_dino.plugin_module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = {"model": "cnn_xs", "dataset": {"name": "digits", "subset": 300}, "epochs": 2,
            "batch_size": 100, "optimizer": {"name": "adamw", "lr": 1e-3},
            "logs_dir": str(tmp_path_factory.mktemp("logs")),
            "method": {"name": "dino", **TINY_HEAD, "student_init": "random",
                       "track_params": True, "track_grads": True,
                       "save_outputs": ["embeddings", "projections", "logits"],
                       "histogram_bins": 7, "features_every": 1}}
    (config,) = expand(spec, registries)
    run = RunConfig(config, "T")
    grads: list[torch.Tensor] = []

    def hook(optimizer, args, kwargs):
        # the first parameter of the first group is the encoder's first conv weight
        grads.append(optimizer.param_groups[0]["params"][0].grad.detach().double().clone())

    handle = register_optimizer_step_pre_hook(hook)
    try:
        assert train(run, registries, "cpu", progress=False) == "finished"
    finally:
        handle.remove()
        torch.set_num_threads(threads)
        environment.undo()
        use()
    return run, FinishedRun(run, registries), grads


def test_gradient_statistics_are_the_moments_of_the_applied_gradients(tracked):
    run, _, grads = tracked
    table = pd.read_csv(run.directory / "dino_grad_stats.csv")
    assert sorted(table.epoch.unique()) == [1, 2]
    steps = 3  # 300 images in batches of 100
    assert len(grads) == 2 * steps
    for epoch in (1, 2):
        g = torch.stack(grads[(epoch - 1) * steps: epoch * steps]).flatten(1)
        row = table[(table.epoch == epoch) & (table.parameter == PARAM)].iloc[0]
        mean_grad = g.mean(0)
        assert row.steps == steps and row.numel == g.shape[1]
        assert row.grad_norm == pytest.approx(g.norm(dim=1).mean().item(), rel=1e-9)
        assert row.grad_mean == pytest.approx(g.mean().item(), rel=1e-9)
        assert row.grad_std == pytest.approx(g.std(correction=0).item(), rel=1e-6)
        variance = ((g - mean_grad) ** 2).sum(1).mean().item()
        assert row.grad_var == pytest.approx(variance, rel=1e-6) and variance > 0
        assert row.grad_mean_norm == pytest.approx(mean_grad.norm().item(), rel=1e-9)
    # the frozen last layer (first epoch) has no gradient, hence no row; in epoch 2 it has
    last = "head.last_layer.weight"
    assert last not in set(table[table.epoch == 1].parameter)
    assert last in set(table[table.epoch == 2].parameter)


def test_parameter_statistics_describe_the_final_networks(tracked):
    run, _, _ = tracked
    table = pd.read_csv(run.directory / "dino_param_stats.csv")
    modules = checkpoint.read(runinfo.final_checkpoint(run))["modules"]
    final = table[table.epoch == 2]
    assert set(final.network) == {"student", "teacher"}
    assert not final.parameter.str.startswith("network.fc.").any()  # probes are left out
    weights = {("student", "network." + k): v for k, v in modules["model"].items()}
    weights.update({("student", "head." + k): v for k, v in modules["head"].items()})
    weights.update({("teacher", k): v for k, v in modules["teacher"].items()})
    for row in final.itertuples():
        x = weights[(row.network, row.parameter)].double()
        assert row.numel == x.numel()
        assert row.norm == pytest.approx(x.norm().item(), rel=1e-9)
        assert row.mean == pytest.approx(x.mean().item(), rel=1e-9, abs=1e-12)
        assert row.std == pytest.approx(x.std(correction=0).item(), rel=1e-9)
    # epoch 1's statistics differ: they were taken then, not copied from the end
    first = table[(table.epoch == 1) & (table.parameter == PARAM) & (table.network == "student")]
    assert first.norm.item() != final[(final.parameter == PARAM)
                                      & (final.network == "student")].norm.item()


def test_saved_outputs_are_the_final_networks_outputs_of_the_eval_split(tracked):
    run, finished, _ = tracked
    out = run.directory / "dino_outputs"
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 2 * 2 * 3  # epochs x networks x kinds (one eval split)
    labels = pd.read_csv(out / "labels.csv")
    images, targets = zip(*finished.data.evals["eval"])
    assert labels.label.tolist() == [int(t) for t in targets]
    # the student at the end: its encoder is the run's model, its embedding fc's input
    model, captured = finished.model, []
    model.fc.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        model(torch.stack(images))
    modules = checkpoint.read(runinfo.final_checkpoint(run))["modules"]
    head = DinoHead(captured[0].shape[1], TINY_HEAD["hidden_dims"], TINY_HEAD["bottleneck_dim"],
                    TINY_HEAD["out_dim"])
    head.load_state_dict(modules["head"])
    head.eval()
    with torch.no_grad():
        projections = head(captured[0])
    expected = {"embeddings": captured[0], "projections": projections,
                "logits": (projections - head.center) / 0.1}  # student_temp
    for kind, value in expected.items():
        (file,) = index[(index.epoch == 2) & (index.network == "student")
                        & (index.kind == kind)].file
        saved = np.load(out / file)
        assert saved.shape == tuple(value.shape) == (len(targets), saved.shape[1])
        np.testing.assert_allclose(saved, value.numpy(), rtol=1e-5, atol=1e-6)


def test_histograms_count_every_saved_value(tracked):
    run, _, _ = tracked
    table = pd.read_csv(run.directory / "dino_histograms.csv")
    index = pd.read_csv(run.directory / "dino_outputs" / "index.csv")
    for entry in index.itertuples():
        rows = table[(table.epoch == entry.epoch) & (table.network == entry.network)
                     & (table.kind == entry.kind) & (table.split == entry.split)]
        values = np.load(run.directory / "dino_outputs" / entry.file)
        counts, edges = np.histogram(values, bins=7)
        assert rows["count"].tolist() == counts.tolist()
        np.testing.assert_allclose(rows.left, edges[:-1], rtol=1e-6)


def test_an_epoch_written_again_replaces_its_rows(tmp_path):
    path = tmp_path / "stats.csv"
    replace_epoch_rows(path, [{"epoch": 1, "v": 1.0}], 1)
    replace_epoch_rows(path, [{"epoch": 2, "v": 2.0}], 2)
    replace_epoch_rows(path, [{"epoch": 2, "v": 3.0}], 2)  # a resumed epoch 2
    assert pd.read_csv(path).to_dict("list") == {"epoch": [1, 2], "v": [1.0, 3.0]}


def test_gradient_sums_survive_a_mid_epoch_checkpoint(dino_method):
    method = dino_method(track_grads=True, freeze_last_layer_epochs=0)
    method.context.steps_per_epoch, method.context.total_steps = 10, 20
    method.train(True)
    batch = next(iter(torch.utils.data.DataLoader(
        method.train_dataset(method.context.data.train), batch_size=64)))
    method.training_step(batch).loss.backward()
    method.before_optimizer_step()
    state = method.state_dict()
    resumed = dino_method(track_grads=True, freeze_last_layer_epochs=0)
    resumed.load_state_dict(state)
    assert resumed._grads.rows(1) == method._grads.rows(1) != []

"""Saturation tracking, checked against independent numpy computations; no mocks."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from labkit import engine
from labkit.cli.commands.common import load_runs
from labkit.core.errors import UserError
from labkit.measures import saturation
from labkit.measures.layers import measured_layers
from labkit.measures.saturation import _ieee_float32, intrinsic_dimensionality, spectrum
from labkit.measures.saturation_tracker import SaturationTracker
from labkit.measures.spectra import load_spectra, spectra_path
from labkit.outputs.results import collect
from labkit.outputs.saturation_plot import plot_saturation
from labkit.spec import expand
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.testing import forget_last_epoch
from labkit.training.build import build_component

TINY = {"model": "cnn_xs", "dataset": {"name": "digits"}, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05}}
# products are float32 (summed in float64): values agree with numpy's float64 to this
# relative tolerance, with absolute slack of the same share of the largest entry
TOL = 1e-5
STATMAP = {"lsat": "saturation", "idim": "intrinsic-dimensionality",
           "det": "covariance-determinant", "trc": "covariance-trace", "dtrc": "diagonal-trace"}


def test_log_columns_are_named_by_delves_statmap():
    # labkit names them without importing delve (its import loads pyplot)
    from delve.writers import STATMAP as DELVE

    from labkit.measures.pca_dimension import STAT_COLUMNS
    assert STAT_COLUMNS == {stat: DELVE[stat] for stat in STAT_COLUMNS} == STATMAP


# ---------------------------------------------------------------- independent reference

def numpy_rows(output: np.ndarray, conv_method="channelwise", downsampling=None,
               timeseries_method="last_timestep") -> np.ndarray:
    """delve's data matrix, written from its documentation with numpy (float64)."""
    a = output.astype(np.float64)
    if a.ndim == 4:
        if downsampling is not None and a.shape[2] > downsampling:
            step = a.shape[2] // downsampling  # nearest neighbour at an integer factor
            a = a[:, :, ::step, ::step]
        if conv_method == "channelwise":
            return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
        if conv_method == "mean":
            return a.mean(axis=(2, 3))
        if conv_method == "max":
            return a.max(axis=(2, 3))
        return a.reshape(len(a), -1)
    if a.ndim == 3:
        return a[:, -1] if timeseries_method == "last_timestep" else a.reshape(len(a), -1)
    return a


def numpy_cov(rows: np.ndarray) -> np.ndarray:
    return np.cov(rows, rowvar=False, bias=True)


def assert_moments_match(mean, cov, rows: np.ndarray):
    """The tracker's (mean, covariance) against numpy's float64 ones, to :data:`TOL`."""
    want = numpy_cov(rows)
    scale = np.abs(want).max()
    np.testing.assert_allclose(cov, want, rtol=TOL, atol=TOL * scale)
    np.testing.assert_allclose(mean, rows.mean(0), rtol=TOL, atol=TOL * np.sqrt(scale))


def numpy_idim(cov: np.ndarray, delta: float, rule: str = "delve") -> int:
    """delve: what delve 0.1.50's compute_intrinsic_dimensionality returns, the number of
    leading eigenvalues whose cumulative share of the variance is below delta. reach: the
    smallest number of leading eigenvalues whose cumulative share reaches delta (all of
    them at delta 1), found by walking the shares one by one."""
    eig = np.clip(np.linalg.eigvalsh(cov)[::-1], 0, None)
    shares = np.cumsum(eig) / eig.sum()
    if rule == "delve":
        return int((shares < delta).sum())
    if delta >= 1:
        return len(eig)
    return next(k + 1 for k, share in enumerate(shares) if share >= delta)


def numpy_stats(cov: np.ndarray, delta: float, rule: str = "delve") -> dict[str, float]:
    idim = numpy_idim(cov, delta, rule)
    return {"lsat": idim / len(cov), "idim": idim, "det": np.linalg.det(cov),
            "trc": np.trace(cov), "dtrc": np.clip(np.linalg.eigvalsh(cov), 0, None).sum()}


def assert_columns_match(columns, split, layer, cov, delta, stats, rule="delve"):
    expected = numpy_stats(cov, delta, rule)
    for stat in stats:
        got = columns[f"{split}-{STATMAP[stat]}_{layer}"]
        if stat in ("lsat", "idim"):
            assert got == expected[stat], f"{stat} of {layer}"
        else:
            assert got == pytest.approx(expected[stat], rel=TOL), f"{stat} of {layer}"


def capture(model: nn.Module, types=(nn.Conv2d, nn.Linear, nn.LSTM)):
    """Record every matching layer's outputs (numpy, samples first) on each forward."""
    store: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in measured_layers(model, types=types):
        def hook(m, i, out, name=name):
            if isinstance(m, nn.LSTM):
                out = out[0] if m.batch_first else out[0].transpose(0, 1)
            store.setdefault(name, []).append(out.detach().numpy().copy())
        handles.append(module.register_forward_hook(hook))
    return store, handles


def shifting_batches(shape, n_batches=4, seed=0):
    """Batches whose scale and offset change, so one batch does not stand for the pass."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + b) + 2 * b for b in range(n_batches)]


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


# ---------------------------------------------------------------- the tracker itself

@pytest.mark.parametrize("conv_method", ["channelwise", "mean", "max", "flatten"])
@pytest.mark.parametrize("downsampling", [None, 4])
def test_covariance_accumulates_every_batch_of_the_pass(conv_method, downsampling):
    model = small_cnn().eval()
    config = {"stats": ["lsat", "idim", "trc", "dtrc"], "delta": 0.95,
              "conv_method": conv_method, "downsampling": downsampling}
    tracker = SaturationTracker(config, model, ["train", "eval"])
    batches = shifting_batches((32, 1, 8, 8))
    store, handles = capture(model)
    with tracker.track("eval", model), torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    columns = tracker.columns("eval")
    assert tracker.columns("train") == {}  # not run, nothing to report
    assert list(columns)[:3] == ["eval-saturation_0", "eval-saturation_2", "eval-saturation_6"]

    moments = tracker.moments("eval")
    for layer, outputs in store.items():
        rows = [numpy_rows(o, conv_method, downsampling) for o in outputs]
        everything = np.concatenate(rows)
        mean, cov = (t.numpy() for t in moments[layer])
        assert_moments_match(mean, cov, everything)
        # the data really tells the two apart: last-batch-only accumulation would fail here
        assert np.linalg.norm(numpy_cov(rows[-1]) - cov) > 0.1 * np.linalg.norm(cov)
        assert_columns_match(columns, "eval", layer, numpy_cov(everything), 0.95, config["stats"])


def test_max_samples_keeps_the_first_samples_across_batches():
    model = small_cnn().eval()
    tracker = SaturationTracker({"max_samples": 50}, model, ["eval"])
    store, handles = capture(model)
    with tracker.track("eval", model), torch.no_grad():
        for x in shifting_batches((32, 1, 8, 8)):
            model(x)
    for h in handles:
        h.remove()
    for layer, (mean, cov) in tracker.moments("eval").items():
        first = numpy_rows(np.concatenate(store[layer])[:50])
        assert_moments_match(mean.numpy(), cov.numpy(), first)


@pytest.mark.parametrize("timeseries_method", ["last_timestep", "timestepwise"])
def test_lstm_outputs_are_tracked_samples_first(timeseries_method):
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(input_size=3, hidden_size=4)  # (T, N, features)

        def forward(self, x):
            return self.lstm(x)

    torch.manual_seed(0)
    model = Recurrent()
    tracker = SaturationTracker({"timeseries_method": timeseries_method, "stats": ["idim", "trc"]},
                                model, ["eval"])
    store, handles = capture(model)
    with tracker.track("eval", model), torch.no_grad():
        for x in shifting_batches((5, 16, 3)):
            model(x)
    for h in handles:
        h.remove()
    everything = np.concatenate([numpy_rows(o, timeseries_method=timeseries_method)
                                 for o in store["lstm"]])
    assert everything.shape == (64, 4 if timeseries_method == "last_timestep" else 20)
    assert_columns_match(tracker.columns("eval"), "eval", "lstm", numpy_cov(everything), 0.99,
                         ["idim", "trc"])


def test_a_spec_mistake_is_a_user_error_naming_the_key(registries, tmp_path):
    with pytest.raises(UserError, match=r"saturation\.conv_methd: unknown key.*conv_method"):
        expand({**TINY, "saturation": {"conv_methd": "mean"}}, registries)
    with pytest.raises(UserError, match=r"saturation\.delta"):
        expand({**TINY, "saturation": {"delta": 1.5}}, registries)
    model = small_cnn()
    with pytest.raises(UserError, match="match no layer"):
        SaturationTracker({"layers": ["block9-*"]}, model, ["train", "eval"])
    with pytest.raises(UserError, match=r"unknown pass.*'test'"):
        SaturationTracker({"splits": ["test"]}, model, ["train", "eval"])


# ---------------------------------------------------------------- wired into training

def make_run(registries, tmp_path, run_id="S", **overrides):
    (config,) = expand({**TINY, "logs_dir": str(tmp_path / "logs"), **overrides}, registries)
    return RunConfig(config, run_id)


def final_model(registries, run):
    data = build_component(registries, "datasets", run.config["dataset"])
    model = build_component(registries, "models", run.config["model"],
                                   num_classes=data.num_classes, in_channels=data.in_channels,
                                   resolution=data.resolution)
    epoch = checkpoint.epochs_on_disk(run.directory / "checkpoints")[-1]
    state = checkpoint.read(checkpoint.checkpoint_path(run.directory / "checkpoints", epoch))
    model.load_state_dict(state["modules"]["model"])
    return model.eval(), data


def test_final_epoch_eval_saturation_matches_recomputation_from_the_final_model(
        registries, tmp_path, run_figures):
    stats = ["lsat", "idim", "det", "trc", "dtrc"]
    # eval batches of 64: the 360 eval images arrive in 6 batches, the last one of 40
    run = make_run(registries, tmp_path, epochs=2, eval_batch_size=64,
                   saturation={"stats": stats, "delta": 0.98})
    assert engine.train(run, registries, progress=False) == "finished"
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    last = log.iloc[-1].to_dict()

    model, data = final_model(registries, run)
    layers = [name for name, _ in measured_layers(model)]
    store, _ = capture(model)
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.evals["eval"]]))
    for layer in layers:
        cov = numpy_cov(numpy_rows(store[layer][0]))
        expected = numpy_stats(cov, 0.98)
        for stat in ("lsat", "idim", "trc", "dtrc"):
            assert last[f"eval-{STATMAP[stat]}_{layer}"] == pytest.approx(expected[stat], rel=TOL)
    # the determinant is only meaningful for a full-rank covariance: the logits'
    assert last["eval-covariance-determinant_fc"] == pytest.approx(
        numpy_stats(numpy_cov(store["fc"][0]), 0.98)["det"], rel=1e-6)
    for split in ("train", "eval"):  # PHD-LAB's names, stat-major, layers in network order
        for stat in stats:
            names = [c for c in log.columns if c.startswith(f"{split}-{STATMAP[stat]}_")]
            assert names == [f"{split}-{STATMAP[stat]}_{layer}" for layer in layers]

    for epoch in (1, 2):
        png = run.directory / "plots" / f"saturation_epoch_{epoch:04d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = plot_saturation(log.iloc[-1], tmp_path / "again.png")
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == layers
    assert f"eval accuracy {last['eval-accuracy']:.4f}" in axes.get_title()
    assert [p.get_height() for p in axes.containers[1]] == [
        last[f"eval-saturation_{layer}"] for layer in layers]

    table = collect([tmp_path / "logs"])  # what `labkit results` prints
    assert table[f"eval-saturation_{layers[0]}"].tolist() == log[f"eval-saturation_{layers[0]}"].tolist()


def test_train_pass_covers_every_batch_of_the_epoch(registries, tmp_path):
    # lr 0 freezes the weights, and an MLP has no batch statistics, so the training pass
    # sees exactly the final model's activations on the whole (shuffled) training split;
    # 1437 images in batches of 64 leave a last batch of 29
    run = make_run(registries, tmp_path, model="mlp_s", epochs=1,
                   optimizer={"name": "sgd", "lr": 0.0},
                   saturation={"stats": ["lsat", "idim", "trc"], "splits": ["train"]})
    engine.train(run, registries, progress=False)
    last = pd.read_csv(run.directory / runinfo.LOG_CSV).iloc[-1].to_dict()
    assert not any(key.startswith("eval-saturation") for key in last)  # eval not tracked

    model, data = final_model(registries, run)
    store, _ = capture(model)
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.train]))
    for layer in ("fc1", "fc2", "fc"):
        assert_columns_match(last, "train", layer, numpy_cov(numpy_rows(store[layer][0])), 0.99,
                             ["lsat", "idim", "trc"])


def test_grid_over_conv_method_gives_distinct_runs_and_values(registries, tmp_path):
    spec = {**TINY, "epochs": 1, "logs_dir": str(tmp_path / "logs"),
            "saturation": {"conv_method": ["channelwise", "mean"]}}
    runs = [RunConfig(c, "G") for c in expand(spec, registries)]
    assert len({r.directory for r in runs}) == 2
    logs = {}
    for run in runs:
        engine.train(run, registries, progress=False)
        logs[run.config["saturation"]["conv_method"]] = pd.read_csv(
            run.directory / runinfo.LOG_CSV).iloc[-1]
    conv = "eval-intrinsic-dimensionality_block2-conv1"
    fc = "eval-intrinsic-dimensionality_fc"
    assert logs["channelwise"][conv] != logs["mean"][conv]
    assert logs["channelwise"][fc] == logs["mean"][fc]  # not a conv layer
    # tracking never changes training: every grid point learned the same
    assert len({log["eval-loss"] for log in logs.values()}) == 1


# ---------------------------------------------------------------- counting rules, spectra

@pytest.mark.parametrize("shares, delta, delve, reach", [
    ([0.5, 0.3, 0.15, 0.05], 0.9, 2, 3),   # delve stops at 80 %, reach keeps 95 %
    ([0.95, 0.03, 0.02], 0.9, 0, 1),       # delve: the layer would become its mean
    ([0.4, 0.3, 0.2, 0.1], 1.0, 3, 4),     # delve at delta 1: width - 1
    ([0.7, 0.2, 0.1, 0.0], 1.0, 2, 4),     # reach at delta 1: every direction, not the rank
    ([0.5, 0.5], 0.5, 0, 1),               # a share equal to delta reaches it
])
def test_both_counts_on_hand_made_spectra(shares, delta, delve, reach):
    eigenvalues = np.array(shares) * 7.0
    assert intrinsic_dimensionality(eigenvalues, delta, "delve") == delve
    assert intrinsic_dimensionality(eigenvalues, delta, "reach") == reach
    # the same through a covariance with that spectrum in a random orthonormal basis
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(len(shares),) * 2))
    cov = torch.from_numpy(q @ np.diag(eigenvalues) @ q.T)
    assert np.allclose(spectrum(cov), eigenvalues, atol=1e-12)


def test_delve_rule_is_delves_own_count_and_reach_is_one_more_below_full_width():
    from delve.metrics import compute_intrinsic_dimensionality

    g = torch.Generator().manual_seed(3)
    for width in (3, 10, 40):
        rows = torch.randn(500, width, generator=g, dtype=torch.float64) @ torch.randn(
            width, width, generator=g, dtype=torch.float64)
        cov = torch.cov(rows.T, correction=0)
        values = spectrum(cov)
        for delta in (0.5, 0.9, 0.99, 0.999):
            delve = intrinsic_dimensionality(values, delta, "delve")
            assert delve == compute_intrinsic_dimensionality(cov, delta)
            assert delve == numpy_idim(cov.numpy(), delta, "delve")
            assert intrinsic_dimensionality(values, delta, "reach") == numpy_idim(
                cov.numpy(), delta, "reach") == min(delve + 1, width)


def test_reach_rule_in_the_log_matches_numpy(registries, tmp_path):
    run = make_run(registries, tmp_path, epochs=1,
                   saturation={"idim_rule": "reach", "delta": 0.95, "splits": ["eval"]})
    engine.train(run, registries, progress=False)
    last = pd.read_csv(run.directory / runinfo.LOG_CSV).iloc[-1].to_dict()
    model, data = final_model(registries, run)
    store, _ = capture(model)
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.evals["eval"]]))
    for layer, (output,) in store.items():
        cov = numpy_cov(numpy_rows(output))
        assert_columns_match(last, "eval", layer, cov, 0.95, ["lsat", "idim"], rule="reach")
        # the two rules really differ on this layer, so the test tells them apart
        assert numpy_idim(cov, 0.95, "reach") == numpy_idim(cov, 0.95, "delve") + 1


def test_delta_is_read_from_stored_spectra_not_trained_for(registries, tmp_path, write_spec):
    spec = {**TINY, "epochs": 2, "logs_dir": str(tmp_path / "logs"),
            "saturation": {"delta": [0.9, 0.99], "idim_rule": ["delve", "reach"]}}
    runs = load_runs(str(write_spec(spec)), "D")
    (run,) = runs  # four grid points, one training
    table = {"name": "saturation", "deltas": [0.9, 0.99], "rules": ["delve", "reach"]}
    assert table in run.config["analyses"]
    assert engine.train(run, registries, progress=False) == "finished"

    # spectra per epoch and pass, float64, one per tracked layer
    spectra = load_spectra(spectra_path(run.directory, 2))
    model, data = final_model(registries, run)
    layers = [name for name, _ in measured_layers(model)]
    assert set(spectra) == {"train", "eval"} and list(spectra["eval"]) == layers
    assert all(v.dtype == np.float64 for v in spectra["eval"].values())

    # saturation-<digest>.csv (not the default params): every delta and rule, checked
    # against numpy on the final model
    (table_file,) = run.directory.glob("saturation*.csv")
    assert table_file.name.startswith("saturation-")
    views = pd.read_csv(table_file)
    assert len(views) == 2 * 2 * len(layers) * 2 * 2  # epochs, passes, layers, deltas, rules
    store, _ = capture(model)
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.evals["eval"]]))
    last = views[(views["epoch"] == 2) & (views["pass"] == "eval")]
    for layer in layers:
        cov = numpy_cov(numpy_rows(store[layer][0]))
        for delta in (0.9, 0.99):
            for rule in ("delve", "reach"):
                (value,) = last[(last["layer"] == layer) & (last["delta"] == delta)
                                & (last["rule"] == rule)]["intrinsic_dimensionality"]
                assert value == numpy_idim(cov, delta, rule), (layer, delta, rule)

    # asking for the run at another delta reads the spectra again: the same training,
    # log.csv rewritten at the new delta, the weights untouched
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    weights = (run.directory / "checkpoints").glob("*.pt")
    before = {p.name: p.read_bytes() for p in weights}
    other = RunConfig({**run.config, "saturation": {**run.config["saturation"], "delta": 0.5}},
                      "D")
    assert other.directory == run.directory
    assert engine.train(other, registries, progress=False) == "skipped"
    relog = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert {p.name: p.read_bytes() for p in (run.directory / "checkpoints").glob("*.pt")} == before
    column = f"eval-intrinsic-dimensionality_{layers[1]}"
    assert relog[column].iloc[-1] == numpy_idim(numpy_cov(numpy_rows(store[layers[1]][0])), 0.5)
    assert relog[column].iloc[-1] < log[column].iloc[-1]
    pd.testing.assert_series_equal(relog["eval-loss"], log["eval-loss"])


def test_resume_with_tracking_is_exact_and_tracking_does_not_change_training(
        registries, tmp_path):
    sat = {"conv_method": "channelwise", "downsampling": 2}
    reference = make_run(registries, tmp_path / "ref", epochs=3, saturation=sat)
    untracked = make_run(registries, tmp_path / "off", epochs=3)
    resumed = make_run(registries, tmp_path / "res", epochs=3, saturation=sat)
    for run in (reference, untracked, resumed):
        engine.train(run, registries, progress=False)
    # as if killed after epoch 2's checkpoint
    forget_last_epoch(resumed.directory)
    assert engine.train(resumed, registries, progress=False) == "finished"

    def weights(run):
        epoch = checkpoint.epochs_on_disk(run.directory / "checkpoints")[-1]
        path = checkpoint.checkpoint_path(run.directory / "checkpoints", epoch)
        return checkpoint.read(path)["modules"]["model"]

    for key, tensor in weights(reference).items():
        assert torch.equal(tensor, weights(resumed)[key]), key
        assert torch.equal(tensor, weights(untracked)[key]), key
    ref_log = pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    res_log = pd.read_csv(resumed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds")
    pd.testing.assert_frame_equal(ref_log, res_log)


# ---------------------------------------------------------------- float32 products, pass state

def offset_conv(in_channels=3, channels=8, offset=1000.0) -> nn.Sequential:
    """A conv (layer "0") whose outputs sit near ``offset`` with a spread near 1, every
    channel at a different mean, as after a layer without normalisation."""
    torch.manual_seed(1)
    conv = nn.Conv2d(in_channels, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.5)
        conv.bias.copy_(offset * (1 + torch.arange(channels) / channels))
    return nn.Sequential(conv)


@pytest.mark.parametrize("size, layout, block_rows, chunk_values, chunked", [
    (32, torch.contiguous_format, 4096, 1 << 20, {"cpu"}),  # per-sample products, 8 flushes
    (4, torch.contiguous_format, 4096, 1 << 20, {"cpu"}),   # small maps: transposed blocks
    (32, torch.channels_last, 4096, 1 << 20, {"cpu"}),      # channels_last network: blocks
    (4, torch.contiguous_format, 40, 384, {"cpu"}),         # 11 chunks, padded blocks
    (6, torch.contiguous_format, 40, 384, set()),           # accelerator: one batched product
])
def test_float32_products_keep_a_covariance_far_below_its_mean(
        monkeypatch, size, layout, block_rows, chunk_values, chunked):
    # means near 1000 and spreads near 1: E[xx^T] - mu mu^T summed in float32 without
    # the shift would lose every digit (float32 resolves 1e6 to about 0.06)
    monkeypatch.setattr(saturation, "BLOCK_ROWS", block_rows)
    monkeypatch.setattr(saturation, "CHUNK_VALUES", chunk_values)
    monkeypatch.setattr(saturation, "CHUNKED_DEVICE_TYPES", chunked)
    model = offset_conv().to(memory_format=layout)
    tracker = SaturationTracker({"stats": ["idim", "trc"]}, model, ["eval"])
    store, handles = capture(model)
    with tracker.track("eval", model), torch.no_grad():
        for x in shifting_batches((32, 3, size, size), n_batches=3):
            model(x.contiguous(memory_format=layout))
    for h in handles:
        h.remove()
    everything = np.concatenate([numpy_rows(o) for o in store["0"]])
    assert everything.mean() > 900 and numpy_cov(everything).max() < 100
    mean, cov = (t.numpy() for t in tracker.moments("eval")["0"])
    assert_moments_match(mean, cov, everything)
    assert_columns_match(tracker.columns("eval"), "eval", "0", numpy_cov(everything), 0.99,
                         ["idim", "trc"])


@pytest.mark.parametrize("max_samples", [None, 100])
def test_a_pass_resumed_from_its_state_is_bit_identical(tmp_path, max_samples):
    model = small_cnn().train()
    config = {"max_samples": max_samples, "conv_method": "channelwise"}
    batches = shifting_batches((32, 1, 8, 8), n_batches=6)
    whole = SaturationTracker(config, model, ["train", "eval"])
    with whole.track("train", model), torch.no_grad():
        for x in batches:
            model(x)

    first = SaturationTracker(config, model, ["train", "eval"])
    assert first.pass_state() == {}  # no pass running
    with first.track("train", model), torch.no_grad():
        for x in batches[:3]:
            model(x)
        torch.save(first.pass_state(), tmp_path / "partial.pt")
    state = torch.load(tmp_path / "partial.pt", weights_only=True)
    assert set(state) == {"train"}
    second = SaturationTracker(config, model, ["train", "eval"])
    with second.track("train", model), torch.no_grad():
        second.load_pass_state(state)
        for x in batches[3:]:
            model(x)

    expected, got = whole.moments("train"), second.moments("train")
    assert list(got) == list(expected) == ["0", "2", "6"]
    for layer, (mean, cov) in expected.items():
        assert torch.equal(got[layer][0], mean) and torch.equal(got[layer][1], cov), layer
    assert second.columns("train") == whole.columns("train")
    # the state really carried the first half: the second half alone differs
    alone = SaturationTracker(config, model, ["train", "eval"])
    with alone.track("train", model), torch.no_grad():
        for x in batches[3:]:
            model(x)
    assert not torch.allclose(alone.moments("train")["2"][1], expected["2"][1])


def test_pass_state_is_loaded_inside_its_pass_only():
    model = small_cnn()
    tracker = SaturationTracker({}, model, ["train", "eval"])
    with tracker.track("train", model), torch.no_grad():
        model(torch.randn(4, 1, 8, 8))
        state = tracker.pass_state()
    with pytest.raises(ValueError, match=r"inside 'with tracker\.track\('train'"):
        tracker.load_pass_state(state)
    with tracker.track("eval", model), pytest.raises(ValueError, match="inside"):
        tracker.load_pass_state(state)
    off = SaturationTracker(None, model, ["train"])
    with off.track("train", model):
        assert off.pass_state() == {}
        off.load_pass_state({})
    off.all_reduce()  # no process group: nothing to do


def test_products_on_cuda_ignore_a_tf32_setting():
    # the flag lives in torch, not on a device: checkable without a GPU
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # what a plugin chasing speed might set
        with _ieee_float32(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        with _ieee_float32(torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before

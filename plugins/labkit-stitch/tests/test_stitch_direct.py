"""Stitching sanity: the direct-matching stitch (a closed-form least-squares fit) and the
flag on cells rated more similar than a matching-layer cell of the diagonal."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from stitch_helpers import example_runs

from labkit.api import RunConfig, build_component, expand
from labkit.api import train as labkit_train
from labkit_stitch import cut
from labkit_stitch.commands import write_stitch_tables
from labkit_stitch.direct import DirectMatch, DirectStitch, LeastSquares, as_rows
from labkit_stitch.refs import trained_network
from labkit_stitch.stitching import CellChecker
from labkit_stitch.tables import COLUMNS, beats_diagonal, stitched_params


def fitted(x: np.ndarray, y: np.ndarray, ridge: float = 0.0, batch: int = 17):
    """LeastSquares fed in batches of ``batch`` rows, solved; float64 numpy."""
    fit = LeastSquares()
    for start in range(0, len(x), batch):
        fit.update(torch.from_numpy(x[start:start + batch]),
                   torch.from_numpy(y[start:start + batch]))
    return [t.numpy() for t in fit.solve(ridge)]


def test_the_fit_is_numpys_least_squares_with_an_intercept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7)) * rng.uniform(0.1, 5, 7) + 100.0  # large means: no cancellation
    y = x @ rng.normal(size=(7, 3)) + rng.normal(size=(60, 3)) + 3.0
    weight, bias = fitted(x, y)
    expected, *_ = np.linalg.lstsq(np.c_[x, np.ones(60)], y, rcond=None)
    np.testing.assert_allclose(weight, expected[:7], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bias, expected[7], rtol=1e-8, atol=1e-8)


def test_a_rank_deficient_fit_is_the_minimum_norm_solution():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 4))
    x = np.c_[z @ rng.normal(size=(4, 6)), z[:, :1], np.zeros(50)] + 2.0  # rank 4 of 8
    y = rng.normal(size=(50, 3))
    weight, bias = fitted(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected, *_ = np.linalg.lstsq(xc, yc, rcond=None)  # minimum norm
    np.testing.assert_allclose(weight, expected, atol=1e-9)
    np.testing.assert_allclose(bias, y.mean(0) - x.mean(0) @ expected, atol=1e-9)
    np.testing.assert_allclose(x @ weight + bias, xc @ expected + y.mean(0), atol=1e-9)


def test_the_ridge_is_relative_to_the_features_mean_variance():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)) * [1, 2, 3, 4, 5], rng.normal(size=(40, 2))
    weight, bias = fitted(x, y, ridge=0.3)
    xc = x - x.mean(0)
    reference = Ridge(alpha=0.3 * np.trace(xc.T @ xc) / 5).fit(x, y)
    np.testing.assert_allclose(weight, reference.coef_.T, atol=1e-10)
    np.testing.assert_allclose(bias, reference.intercept_, atol=1e-10)


@pytest.mark.parametrize("sender, receiver", [((6, 4, 4), (3, 4, 4)),   # 1 × 1 conv
                                              ((6, 8, 8), (3, 4, 4)),   # resampled first
                                              ((6, 4, 4), (5,))])       # map into a vector
def test_a_direct_stitch_applies_the_least_squares_map(sender, receiver):
    torch.manual_seed(0)
    x = torch.randn(120, *sender, dtype=torch.float64)  # more images than A has features
    y = torch.randn(120, *receiver, dtype=torch.float64)
    size = receiver[1:] or None
    grid = (F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            if size and size != sender[1:] else x)
    rows_x = (grid.permute(0, 2, 3, 1).reshape(-1, 6) if size else x.flatten(1)).numpy()
    rows_y = (y.permute(0, 2, 3, 1).reshape(-1, 3) if size else y).numpy()
    np.testing.assert_array_equal(as_rows(grid if size else x.flatten(1)).numpy(), rows_x)
    weight, bias = fitted(rows_x, rows_y, batch=len(rows_x) // 3)
    expected, *_ = np.linalg.lstsq(np.c_[rows_x, np.ones(len(rows_x))], rows_y, rcond=None)
    np.testing.assert_allclose(weight, expected[:-1], atol=1e-9)
    np.testing.assert_allclose(bias, expected[-1], atol=1e-9)
    stitch = DirectStitch(torch.from_numpy(weight), torch.from_numpy(bias), size)
    out = stitch(x).numpy()
    prediction = rows_x @ expected[:-1] + expected[-1]
    if size:
        prediction = prediction.reshape(120, *size, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, prediction, atol=1e-9)


def hand_made(values: dict[tuple[str, str], float], matching: bool = True,
              group: str = "g") -> pd.DataFrame:
    return pd.DataFrame([{"group": group, "sender_layer": i, "receiver_layer": j,
                          "matching_layers": matching, "v": v} for (i, j), v in values.items()])


def test_a_cell_is_flagged_when_it_beats_its_row_or_column_diagonal():
    table = hand_made({("a", "a"): 0.90, ("a", "b"): 0.95, ("a", "c"): 0.905,
                       ("b", "a"): 0.85, ("b", "b"): 0.80, ("b", "c"): 0.70,
                       ("c", "a"): 0.60, ("c", "b"): 0.75, ("c", "c"): np.nan,
                       ("d", "a"): 0.99})  # no diagonal cell (d, d): only its column counts
    flags = dict(zip(zip(table["sender_layer"], table["receiver_layer"]),
                     beats_diagonal(table, "v")))
    assert flags == {("a", "a"): False, ("a", "b"): True,   # row: 0.95 > (a, a) 0.90
                     ("a", "c"): True,                      # row: 0.905 > 0.90; (c, c) empty
                     ("b", "a"): True,                      # row: 0.85 > (b, b) 0.80
                     ("b", "b"): False, ("b", "c"): False,  # 0.70 < 0.80, (c, c) empty
                     ("c", "a"): False,                     # no row diagonal; 0.60 < (a, a)
                     ("c", "b"): False,                     # column: 0.75 < (b, b) 0.80
                     ("c", "c"): False, ("d", "a"): True}   # column: 0.99 > (a, a) 0.90
    column_only = hand_made({("a", "a"): 0.9, ("b", "b"): 0.5, ("b", "a"): 0.7})
    assert list(beats_diagonal(column_only, "v")) == [False, False, True]  # 0.7 > 0.5 (row b)
    # the tolerance: beaten by more than 0.01 only
    assert list(beats_diagonal(table, "v", tolerance=0.01)[table["sender_layer"] == "a"]) == \
        [False, True, False]
    # a loss: smaller is better
    lower = beats_diagonal(table, "v", lower_is_better=True)
    assert lower[(table["sender_layer"] == "b") & (table["receiver_layer"] == "c")].item()
    assert not lower[(table["sender_layer"] == "a") & (table["receiver_layer"] == "b")].item()
    # layers that do not match (another architecture): no diagonal, no flag
    assert not beats_diagonal(hand_made({("a", "a"): 0.1, ("a", "b"): 0.9}, False), "v").any()
    # diagonals are per group
    both = pd.concat([hand_made({("a", "a"): 0.9, ("a", "b"): 0.8}),
                      hand_made({("a", "a"): 0.5, ("a", "b"): 0.6}, group="h")],
                     ignore_index=True)
    assert list(beats_diagonal(both, "v")) == [False, False, False, True]


def test_two_copies_of_one_run_never_beat_the_diagonal_without_a_flag(registries, trained,
                                                                       tmp_path, capsys):
    net = trained("cnn_xs")
    copy = tmp_path / "copy"  # the same run in another folder: B
    shutil.copytree(net.directory, copy)
    spec = {"model": {"name": "stitched", "sender": {"dir": str(net.directory)},
                      "receiver": {"dir": str(copy)},
                      "sender_layer": ["block1", "block2", "flatten"],  # flatten: unstitchable
                      "receiver_layer": ["block1", "block2"]},
            "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 1, "batch_size": 64,
            "logs_dir": str(tmp_path / "logs")}
    runs = [RunConfig(config, "T") for config in expand(spec, registries)]
    for run in runs:
        if run.config["model"]["sender_layer"] != "flatten":
            assert labkit_train(run, registries, progress=False) == "finished"
    out = tmp_path / "tables"
    write_stitch_tables(runs, "eval", "accuracy", out, direct=DirectMatch(ridge=0.0))
    echoed = capsys.readouterr().out

    table = pd.read_csv(out / "stitch_table.csv")
    assert list(table.columns) == COLUMNS and table["matching_layers"].all()
    valued = table[table["unstitchable"].isna()]
    assert len(valued) == 4 and valued["direct_match"].notna().all()
    assert table.loc[table["unstitchable"].notna(), "direct_match"].isna().all()
    own = table["receiver"].iloc[0]
    diagonal = valued[valued["sender_layer"] == valued["receiver_layer"]].set_index("sender_layer")
    # at the same layer of the same network the least-squares map is the identity
    np.testing.assert_allclose(diagonal["direct_match"], own, atol=0.01)
    for column in ("stitched", "direct_match"):
        for _, cell in valued[valued["sender_layer"] != valued["receiver_layer"]].iterrows():
            beats = (cell[column] > diagonal.loc[cell["sender_layer"], column]
                     or cell[column] > diagonal.loc[cell["receiver_layer"], column])
            assert cell[f"{column}_beats_diagonal"] == beats, (column, cell)
    assert (table["beats_diagonal"] == table["stitched_beats_diagonal"]
            | table["direct_match_beats_diagonal"]).all()
    assert (out / f"stitch_{table['group'].iloc[0]}.png").stat().st_size > 0
    assert "direct_match (rows: sender_layer, columns: receiver_layer)" in echoed
    flagged = int(table["stitched_beats_diagonal"].sum() + table["direct_match_beats_diagonal"].sum())
    assert f"beats the diagonal (a matching-layer cell of its row or column): {flagged} cell(s)" \
        in echoed

    # one cell recomputed independently: numpy's least squares on the activations,
    # then B's top on the eval images
    a, b = trained_network(net), trained_network(stitched_params(runs[0]).receiver.run_config())
    bundle = build_component(registries, "datasets", runs[0].config["dataset"])
    train_images = torch.stack([bundle.train_plain[k][0] for k in range(len(bundle.train_plain))])
    with torch.no_grad():
        x = cut.bottom(a, "block1")(train_images)  # (N, 16, 4, 4) into block2's (32, 2, 2)
        x = F.interpolate(x, size=(2, 2), mode="bilinear", antialias=True, align_corners=False)
        y = cut.bottom(b, "block2")(train_images)
    rows_x = x.permute(0, 2, 3, 1).reshape(-1, 16).double().numpy()
    rows_y = y.permute(0, 2, 3, 1).reshape(-1, 32).double().numpy()
    xc = rows_x - rows_x.mean(0)
    w, *_ = np.linalg.lstsq(xc, rows_y - rows_y.mean(0), rcond=None)
    bias = rows_y.mean(0) - rows_x.mean(0) @ w
    images, labels = map(torch.stack, zip(*[(img, torch.tensor(lab)) for img, lab
                                            in bundle.evals["eval"]]))
    with torch.no_grad():
        sent = F.interpolate(cut.bottom(a, "block1")(images), size=(2, 2), mode="bilinear",
                             antialias=True, align_corners=False)
        mapped = (sent.permute(0, 2, 3, 1).double().numpy() @ w + bias).transpose(0, 3, 1, 2)
        logits = cut.top(b, "block2")(torch.from_numpy(mapped).float())
    accuracy = (logits.argmax(1) == labels).double().mean().item()
    cell = valued[(valued["sender_layer"] == "block1") & (valued["receiver_layer"] == "block2")]
    # float32 logits: at most one image may fall the other way
    assert cell["direct_match"].item() == pytest.approx(accuracy, abs=1 / len(labels) + 1e-12)


def test_the_example_spec_stitches_a_network_into_itself_at_three_layers(registries, tmp_path,
                                                                         monkeypatch):
    runs = example_runs("stitch_diagonal.json", registries, monkeypatch, tmp_path)
    checker = CellChecker()
    problems = [checker(run).problem for run in runs]
    assert len(runs) == 9 and sum(p is not None for p in problems) == 2  # flatten into maps
    a, b = (ref.run_config() for ref in (stitched_params(runs[0]).sender,
                                         stitched_params(runs[0]).receiver))
    assert a.directory == b.directory  # one run: every layer has its matching layer
    assert not (tmp_path / "logs").exists()

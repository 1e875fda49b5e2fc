"""Soft labels as an extra evaluation target (issue 15, part 5): CIFAR-10H-style label
probabilities scored against a finished run's logits, mapped onto its classes by name."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from labkit.analyses import FinishedRun
from labkit.cli import cli
from labkit.spec import expand
from labkit.store.identity import RunConfig

COLOURS = {"ant": (220, 30, 30), "bee": (30, 220, 30), "cat": (30, 30, 220)}


def colour_folder(root, classes, per_class, folder):
    """Noisy single-colour images, so that a tiny network is sure of some, not all."""
    rng = np.random.default_rng(len(folder))
    for name in classes:
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 70, (8, 8, 3)), 0, 255)
            path = root / folder / "train" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cnn_xs trained on ant / bee / cat, and a shifted folder listing only cat and bee
    (labels bee 0, cat 1 there; 1, 2 in the run)."""
    root = tmp_path_factory.mktemp("soft")
    colour_folder(root / "data", ["ant", "bee", "cat"], 12, "imagefolder")
    colour_folder(root / "data", ["cat", "bee"], 10, "shifted")
    dataset = {"name": "imagefolder", "root": str(root / "data"), "resolution": 8,
               "eval_fraction": 0.25}
    spec = {"model": "cnn_xs", "dataset": dataset, "epochs": 3, "batch_size": 8,
            "optimizer": {"name": "adam", "lr": 0.01}, "logs_dir": str(root / "logs")}
    path = root / "spec.json"
    path.write_text(json.dumps(spec))
    result = CliRunner().invoke(cli, ["run", str(path), "--run-id", "S", "--quiet"])
    assert result.exit_code == 0, result.output
    return root, path, {**dataset, "folder": "shifted"}


def evaluate(spec, shifted, *extra):
    return CliRunner().invoke(cli, ["evaluate", str(spec), "--run-id", "S", "--on",
                                    json.dumps(shifted), "--split", "train", *extra])


def logits_and_names(registries, spec, shifted):
    """The run's logits on the shifted split, in its order; the run's and the split's
    class names."""
    (config,) = expand(json.loads(spec.read_text()), registries)
    run = FinishedRun(RunConfig(config, "S"), registries)
    data = registries.datasets.create("imagefolder", **{k: v for k, v in shifted.items()
                                                        if k != "name"})
    images = torch.stack([data.train_plain[i][0] for i in range(len(data.train_plain))])
    with torch.no_grad():
        logits = run.model(images).double().numpy()
    return logits, run.data.info["classes"], data.info["classes"]


def expected_scores(logits, run_classes, their_classes, soft):
    """The three soft scores in numpy, columns looked up by class name."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    full = np.zeros_like(log_q)
    for j, name in enumerate(their_classes):
        full[:, run_classes.index(name)] = soft[:, j]
    predicted = logits.argmax(axis=1)
    on_predicted = full[np.arange(len(full)), predicted]
    return {"soft-cross-entropy": -(full * log_q).sum(axis=1).mean(),
            "soft-accuracy": on_predicted.mean(),
            "soft-top1-agreement": (on_predicted == full.max(axis=1)).mean()}


def rows(root):
    (csv,) = (root / "logs").rglob("evaluations.csv")
    return pd.read_csv(csv)


def test_soft_label_scores_match_numpy_and_follow_the_file(registries, trained):
    root, spec, shifted = trained
    logits, run_classes, their_classes = logits_and_names(registries, spec, shifted)
    assert their_classes == ["bee", "cat"] and run_classes == ["ant", "bee", "cat"]
    n = len(logits)
    soft = np.random.default_rng(0).dirichlet([0.7, 0.7], n).astype(np.float32)
    path = root / "human.npy"
    np.save(path, soft)

    result = evaluate(spec, shifted, "--soft-labels", str(path))
    assert result.exit_code == 0, result.output
    assert "soft-cross-entropy" in result.output
    (row,) = rows(root).to_dict("records")
    assert row["images"] == n and row["soft_labels"] == str(path.resolve())
    for name, value in expected_scores(logits, run_classes, their_classes, soft).items():
        assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert 0 < row["soft-accuracy"] < 1 and row["soft-cross-entropy"] > 0

    # without soft labels: a row of its own, the soft one kept
    assert evaluate(spec, shifted).exit_code == 0
    table = rows(root)
    assert len(table) == 2 and table["soft-accuracy"].isna().sum() == 1
    plain = table[table["soft-accuracy"].isna()].iloc[0]
    assert plain["loss"] == pytest.approx(row["loss"])

    # an edited file is scored again; one-hot true labels make soft accuracy the accuracy
    data = registries.datasets.create("imagefolder", **{k: v for k, v in shifted.items()
                                                        if k != "name"})
    truth = np.array([data.train_plain[i][1] for i in range(n)])
    np.save(path, np.eye(2)[truth])
    assert evaluate(spec, shifted, "--soft-labels", str(path)).exit_code == 0
    table = rows(root)
    assert len(table) == 2
    again = table[table["soft-accuracy"].notna()].iloc[0]
    assert again["soft-accuracy"] == pytest.approx(again["accuracy"])
    assert again["soft-top1-agreement"] == pytest.approx(again["accuracy"])
    assert again["soft-cross-entropy"] == pytest.approx(again["loss"], rel=1e-5)
    assert again["soft_labels_sha256"] != row["soft_labels_sha256"]


def test_soft_label_mistakes_are_one_line_errors(trained):
    root, spec, shifted = trained
    n = 15  # 10 cats and 10 bees, a quarter held out
    good = np.full((n, 2), 0.5)

    def refused(values, *match):
        path = root / "bad.npy"
        if values is None:
            path.unlink(missing_ok=True)
        else:
            np.save(path, values)
        result = evaluate(spec, shifted, "--soft-labels", str(path))
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert "Traceback" not in message and len(message.splitlines()) == 1
        for text in match:
            assert text in message, message

    refused(None, "does not exist", "shape (images, classes)")
    refused(good[:-1], "has shape (14, 2)", "shape (15, 2)", "bee, cat")
    refused(np.full((n, 3), 1 / 3), "has shape (15, 3)", "shape (15, 2)")
    refused(np.where(np.arange(n)[:, None] == 4, [0.7, 0.2], good), "row 4", "sums to 0.9",
            "divide each row by its sum")
    refused(np.where(np.arange(n)[:, None] == 6, [1.5, -0.5], good), "negative", "row 6")
    refused(np.where(np.arange(n)[:, None] == 2, [np.nan, 1.0], good), "NaN", "row 2")
    (root / "bad.npy").write_text("not numpy")
    result = evaluate(spec, shifted, "--soft-labels", str(root / "bad.npy"))
    assert result.exit_code == 2 and "not a NumPy .npy file" in result.output
    # within 1e-3 of 1 is accepted
    np.save(root / "close.npy", good + np.array([4e-4, 0]))
    assert evaluate(spec, shifted, "--soft-labels", str(root / "close.npy")).exit_code == 0

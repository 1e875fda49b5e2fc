"""Nested cues (a cue dataset on a cue dataset) get counterfactual splits per mechanism;
the colour cue tints any base."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from distill_helpers import train_runs
from matplotlib.colors import hsv_to_rgb

from labkit.api import UserError, build_component, expand, runinfo

MECHANISM_SPLITS = [f"eval_{kind}_{m}" for m in ("box", "dominoes")
                    for kind in ("nocue", "randcue", "cueonly")]
DIGITS_BLACK = -0.3053 / 0.3760


def build(registries, **dataset):
    (config,) = expand({"model": "cnn_xs", "dataset": dataset}, registries)
    return build_component(registries, "datasets", config["dataset"])


@pytest.fixture
def nested(registries):
    """A box (outer mechanism) on dominoes (inner: digit on top, a shape below)."""
    return build(registries, name="box_cue", resolution=16, base={"name": "dominoes"})


def plans(dataset):
    """(box cue, dominoes cue, digit kept) per item of one eval split."""
    inner = dataset.content
    return dataset.cue, inner.cue, inner.keep


def test_nested_cues_get_a_split_per_mechanism(nested):
    assert list(nested.evals) == ["eval", "eval_nocue", "eval_randcue", "eval_cueonly",
                                  *MECHANISM_SPLITS]
    assert nested.info["mechanisms"] == ["box", "dominoes"]
    labels = nested.evals["eval"].labels
    none = np.full(len(labels), -1)
    expected = {  # split: (box shows, dominoes shows, digit kept); "rand": a random class
        "eval": (labels, labels, True),
        "eval_nocue": (none, none, True),
        "eval_randcue": ("rand", "rand", True),
        "eval_cueonly": (labels, labels, False),
        "eval_nocue_box": (none, labels, True),
        "eval_randcue_box": ("rand", labels, True),
        "eval_cueonly_box": (labels, none, False),
        "eval_nocue_dominoes": (labels, none, True),
        "eval_randcue_dominoes": (labels, "rand", True),
        "eval_cueonly_dominoes": (none, labels, False),
    }
    for split, (box, dominoes, kept) in expected.items():
        got_box, got_dominoes, got_kept = plans(nested.evals[split])
        for want, got in ((box, got_box), (dominoes, got_dominoes)):
            if isinstance(want, str):  # random: every class, rarely the label
                assert (got == labels).mean() < 0.2 and len(set(got)) == 10, split
            else:
                assert (got == want).all(), split
        assert (got_kept == kept).all(), split
    box, dominoes, _ = plans(nested.evals["eval_randcue"])
    assert (box == dominoes).mean() < 0.2  # the two levels draw independent classes
    # one mechanism randomised draws what it draws in the generic split
    assert (plans(nested.evals["eval_randcue_box"])[0] == box).all()


def test_nested_split_pixels(registries, nested):
    alone = build(registries, name="dominoes", resolution=16)  # the inner dataset by itself
    white = (1 - 0.3053) / 0.3760
    for i in range(0, len(nested.evals["eval"]), 13):
        label = int(nested.evals["eval"].labels[i])
        # without the box: exactly the dominoes image as trained
        torch.testing.assert_close(nested.evals["eval_nocue_box"][i][0], alone.evals["eval"][i][0])
        # dominoes removed, box kept: the dominoes' no-cue image with the label's box
        no_dominoes, _ = nested.evals["eval_nocue_dominoes"][i]
        base, _ = alone.evals["eval_nocue"][i]
        changed = (no_dominoes != base).any(dim=0)
        assert changed.any() and (no_dominoes[:, changed] == white).all()
        # only the dominoes: black digit half, the label's shape below, no box
        only, _ = nested.evals["eval_cueonly_dominoes"][i]
        torch.testing.assert_close(only, alone.evals["eval_cueonly"][i][0])
        assert (only[:, :8, 4:12] == DIGITS_BLACK).all()
        assert nested.evals["eval_cueonly_dominoes"].content.cue[i] == label


def test_a_single_cue_keeps_the_four_generic_splits(registries):
    data = build(registries, name="box_cue", resolution=16)
    assert list(data.evals) == ["eval", "eval_nocue", "eval_randcue", "eval_cueonly"]
    assert data.info["mechanisms"] == ["box"]


def test_the_same_mechanism_twice_is_told_apart_by_level(registries):
    data = build(registries, name="box_cue", resolution=16, box_size=1,
                 base={"name": "box_cue", "box_size": 2, "cue_seed": 1})
    assert data.info["mechanisms"] == ["box_1", "box_2"]
    assert {"eval_randcue_box_1", "eval_cueonly_box_2"} <= set(data.evals)


def test_colour_cue_tints_any_base(registries):
    data = build(registries, name="colour_cue", resolution=8, strength=0.4)
    base = build(registries, name="digits", resolution=8)
    assert data.in_channels == 3 and data.info["mechanisms"] == ["colour"]
    for split, dataset in data.evals.items():
        for i in range(0, len(dataset), 17):
            image, label = dataset[i]
            gray = (base.evals["eval"][i][0] * 0.3760 + 0.3053).expand(3, -1, -1)
            if split == "eval_cueonly":
                gray = torch.zeros_like(gray)
            cue = int(dataset.cue[i])
            if cue < 0:
                torch.testing.assert_close(image, gray)
            else:
                colour = torch.tensor(hsv_to_rgb([cue / 10, 1.0, 1.0]), dtype=torch.float32)
                torch.testing.assert_close(image, 0.6 * gray + 0.4 * colour.view(3, 1, 1))
            if split in ("eval", "eval_cueonly"):
                assert cue == label
    # an RGB base, and the colour inside a nest
    shapes = build(registries, name="colour_cue", base={"name": "shapes"}, resolution=8)
    assert shapes.evals["eval"][0][0].shape == (3, 8, 8)
    nest = build(registries, name="box_cue", resolution=8, base={"name": "colour_cue"})
    assert nest.info["mechanisms"] == ["box", "colour"] and "eval_cueonly_colour" in nest.evals
    with pytest.raises(UserError, match="strength"):
        build(registries, name="colour_cue", strength=0.0)


def test_a_teacher_on_nested_cues_logs_every_mechanism(registries, tmp_path):
    spec = {"model": "mlp_s", "epochs": 1, "batch_size": 64, "metrics": ["accuracy"],
            "optimizer": {"name": "sgd", "lr": 0.05}, "logs_dir": str(tmp_path / "logs"),
            "dataset": {"name": "box_cue", "resolution": 16, "base": "dominoes"}}
    (run,) = train_runs(spec, registries)
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    assert {f"{split}-accuracy" for split in MECHANISM_SPLITS} <= set(log.columns)

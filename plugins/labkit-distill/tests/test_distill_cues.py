"""Cue datasets: pixels and plans of every counterfactual split, source validation, and a
teacher that relies on a cue losing accuracy when the cue is randomised."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from distill_helpers import train_runs
from matplotlib.colors import hsv_to_rgb

from labkit.api import UserError, build_component, expand, runinfo

SPLITS = ["eval", "eval_nocue", "eval_randcue", "eval_cueonly"]


def build(registries, **dataset):
    (config,) = expand({"model": "cnn_xs", "dataset": dataset}, registries)
    return build_component(registries, "datasets", config["dataset"])


def digits(registries, resolution):
    return build(registries, name="digits", resolution=resolution)


def test_box_cue_splits_pixel_by_pixel(registries):
    data = build(registries, name="box_cue", resolution=16, cue_fraction=0.5)
    base = digits(registries, 16)
    assert list(data.evals) == SPLITS and data.num_classes == 10
    mean, std = 0.3053, 0.3760  # digits' normalisation: the box is white, the blank black
    white, black = (1 - mean) / std, -mean / std
    k = math.ceil(math.sqrt(10))  # 4 x 4 grid of 4-pixel cells; a 2-pixel box in the centre
    corner = {c: (c // k * 4 + 1, c % k * 4 + 1) for c in range(10)}

    def expected(content: torch.Tensor, cue: int) -> torch.Tensor:
        image = content.clone()
        if cue >= 0:
            top, left = corner[cue]
            image[:, top:top + 2, left:left + 2] = white
        return image

    for split, dataset in data.evals.items():
        labels = np.array([base.evals["eval"][i][1] for i in range(len(dataset))])
        assert (dataset.labels == labels).all()
        for i in range(0, len(dataset), 7):
            image, label = dataset[i]
            content = base.evals["eval"][i][0]
            if split == "eval_cueonly":
                content = torch.full_like(content, black)
            torch.testing.assert_close(image, expected(content, int(dataset.cue[i])))
        cue = dataset.cue
        if split == "eval":  # as trained: the label's box on about half the images
            assert 0.4 < (cue == labels).mean() < 0.6 and ((cue == labels) | (cue == -1)).all()
        if split == "eval_nocue":
            assert (cue == -1).all()
        if split == "eval_randcue":  # independent of the label, every class used
            assert (cue == labels).mean() < 0.2 and len(set(cue)) == 10
        if split == "eval_cueonly":
            assert (cue == labels).all()
    assert 0.45 < (data.train.cue >= 0).mean() < 0.55
    # the same plan with and without augmentation, drawn from cue_seed only
    assert (data.train.cue == data.train_plain.cue).all()
    again = build(registries, name="box_cue", resolution=16, cue_fraction=0.5)
    assert (again.evals["eval_randcue"].cue == data.evals["eval_randcue"].cue).all()


def test_dominoes_stack_a_class_matched_second_image(registries):
    data = build(registries, name="dominoes", resolution=16)
    top_source = digits(registries, 8)
    second = build(registries, name="shapes", resolution=8)
    assert (data.in_channels, data.resolution) == (3, 16)
    black_top = -0.3053 / 0.3760
    for split, dataset in data.evals.items():
        stack = dataset.compose
        for i in range(0, len(dataset), 11):
            image, label = dataset[i]
            top, bottom = image[:, :8, 4:12], image[:, 8:, 4:12]
            if split == "eval_cueonly":
                assert (top == black_top).all()
            else:  # grayscale digit repeated over the three channels
                torch.testing.assert_close(top, top_source.evals["eval"][i][0].expand(3, -1, -1))
            if split == "eval_nocue":
                assert (bottom == 0).all()  # shapes' black
                continue
            partner, partner_label = second.evals["eval"][int(stack.pairs[i])]
            torch.testing.assert_close(bottom, partner)
            assert partner_label == dataset.cue[i]
            if split in ("eval", "eval_cueonly"):
                assert partner_label == label
        # margins left and right stay black
        assert (image[:, :8, :4] == black_top).all() and (image[:, 8:, 12:] == 0).all()


def test_shapes_factors_follow_the_cues(registries):
    data = build(registries, name="shapes", cues=["hue", "position"], cue_fraction=1.0,
                 train_size=400, eval_size=300)
    factors = data.info["factors"]
    for split, dataset in data.evals.items():
        labels, f = dataset.labels.numpy(), factors[split]
        assert np.bincount(labels).tolist() == [30] * 10  # balanced
        if split == "eval_nocue":
            assert np.isnan(f["hue"]).all() and (f["position"] == 0).all()
        elif split == "eval_randcue":
            assert (np.round(f["hue"] * 10) == labels).mean() < 0.2
        else:  # eval, eval_cueonly: the label's hue
            np.testing.assert_allclose(f["hue"], labels / 10)
        if split == "eval_cueonly":
            assert (f["shape"] == labels).mean() < 0.2  # the shape no longer tells the label
        else:
            assert (f["shape"] == labels).all()
        assert not np.isnan(f["background"]).any()  # not a cue: random
    # a rendered image: shape pixels in the shape's hue, the rest in the background's
    f, (image, label) = factors["eval"], data.evals["eval"][0]
    centre = (np.array([7.5, 7.5]) + f["position"][0]).round().astype(int)
    ink = hsv_to_rgb([f["hue"][0], 1.0, 1.0])
    if label in (0, 1, 6):  # disk, square, diamond: the centre is inside
        np.testing.assert_allclose(image[:, centre[1], centre[0]], ink, atol=1e-6)
    paper = hsv_to_rgb([f["background"][0], 1.0, 0.35])
    np.testing.assert_allclose(image[:, 0, 0], paper, atol=1e-6)


def test_source_datasets_are_validated_with_the_spec(registries):
    with pytest.raises(UserError, match="unknown dataset 'digts'. Did you mean 'digits'"):
        build(registries, name="box_cue", base="digts")
    with pytest.raises(UserError, match="resolution: set by the dataset built on 'digits'"):
        build(registries, name="dominoes", base={"name": "digits", "resolution": 8})
    with pytest.raises(UserError, match="subset"):
        build(registries, name="box_cue", base={"name": "digits", "subset": "many"})
    (config,) = expand({"model": "cnn_xs", "dataset": "box_cue"}, registries)
    (explicit,) = expand({"model": "cnn_xs", "dataset": {"name": "box_cue", "base": "digits"}},
                         registries)
    assert config["dataset"]["base"] == explicit["dataset"]["base"]  # resolved alike
    assert config["dataset"]["base"]["eval_fraction"] == 0.2


def test_train_on_eval_swaps_the_splits(registries):
    data = build(registries, name="train_on_eval", base="digits", resolution=8)
    base = digits(registries, 8)
    assert len(data.train) == len(base.evals["eval"]) == 359
    assert len(data.evals["eval"]) == len(base.train) == 1438
    torch.testing.assert_close(data.train[5][0], base.evals["eval"][5][0])


def accuracies(run) -> pd.Series:
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    return log[[f"{split}-accuracy" for split in SPLITS]].iloc[-1]


def test_a_teacher_relying_on_the_cue_loses_accuracy_when_it_is_randomised(registries,
                                                                            tmp_path):
    spec = {"model": "mlp_s", "epochs": 3, "batch_size": 64, "metrics": ["accuracy"],
            "optimizer": {"name": "sgd", "lr": 0.05}, "logs_dir": str(tmp_path / "logs"),
            "dataset": {"name": "box_cue", "resolution": 16, "cue_fraction": [1.0, 0.0]}}
    cued, control = (accuracies(run) for run in train_runs(spec, registries))
    # trained with the cue: right with it, often wrong when it points elsewhere, right
    # from the cue alone
    assert cued["eval-accuracy"] > 0.9
    assert cued["eval_randcue-accuracy"] < cued["eval-accuracy"] - 0.2
    assert cued["eval_cueonly-accuracy"] > 0.5
    # trained without it (cue_fraction 0): the box changes little, and alone it says nothing
    assert control["eval_randcue-accuracy"] > control["eval-accuracy"] - 0.1
    assert control["eval_cueonly-accuracy"] < 0.3

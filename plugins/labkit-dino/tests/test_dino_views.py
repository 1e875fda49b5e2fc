"""Multi-crop views: spec parsing, view shapes through the loader, augmentation in [0, 1]."""
import pytest
import torch
from torch.utils.data import DataLoader

from labkit.api import build_component
from labkit_dino.views import MultiViewDataset, crop_transforms, parse_crops


def test_crop_spec_parsing_and_default_scales():
    crops = parse_crops("2x32+4x16")
    assert [(c.size, c.teacher) for c in crops] == [(32, True)] * 2 + [(16, False)] * 4
    assert crops[0].scale == (0.4, 1.0) and crops[2].scale == (0.05, 0.4)
    assert parse_crops("2x32")[0].scale == (0.14, 1.0)
    assert parse_crops("1x28")[0].scale == (1.0, 1.0)
    assert parse_crops("2x8+2x4+2x2", global_scale=(0.5, 0.9))[0].scale == (0.5, 0.9)
    for bad in ("2x", "x32", "2x32+", "0x32", "2*32", "2x32+4x0"):
        with pytest.raises(ValueError):
            parse_crops(bad)


def test_views_have_the_crop_shapes_in_a_batch(dino_method):
    method = dino_method(crops="2x8+3x4", model="cnn_xs")
    dataset = method.train_dataset(method.context.data.train)
    views, labels = next(iter(DataLoader(dataset, batch_size=16)))
    assert [tuple(v.shape) for v in views] == [(16, 1, 8, 8)] * 2 + [(16, 1, 4, 4)] * 3
    assert labels.shape == (16,)
    embeddings, projections = method.student(views)
    assert embeddings.shape == (5, 16, 32) and projections.shape == (5, 16, 64)
    step = method.training_step((views, labels))
    assert step.batch_size == 16 and torch.isfinite(step.loss)


def test_single_view_is_the_training_image_unchanged(dino_method):
    method = dino_method()
    data = method.context.data
    views, label = method.train_dataset(data.train)[5]
    image, true_label = data.train[5]
    assert len(views) == 1 and torch.equal(views[0], image) and label == true_label


def test_whole_image_crop_without_augmentation_round_trips_the_normalisation(dino_registries):
    data = build_component(dino_registries, "datasets", {"name": "digits"})
    crops = parse_crops("1x8")
    (transform,) = crop_transforms(crops, "none", data.info["mean"], data.info["std"])
    image, _ = data.train[0]
    assert torch.allclose(transform(image), image, atol=1e-6)


def test_dino_augmentation_works_in_unit_range_and_keeps_shapes(dino_registries):
    data = build_component(dino_registries, "datasets", {"name": "digits", "resolution": 16})
    crops = parse_crops("2x16+2x8")
    transforms = crop_transforms(crops, "dino", data.info["mean"], data.info["std"])
    dataset = MultiViewDataset(data.train, transforms)
    torch.manual_seed(0)
    views, _ = dataset[0]
    assert [tuple(v.shape) for v in views] == [(1, 16, 16)] * 2 + [(1, 8, 8)] * 2
    mean, std = data.info["mean"][0], data.info["std"][0]
    lo, hi = (0 - mean) / std, (1 - mean) / std  # [0, 1] after the dataset's normalisation
    for view in views:
        assert lo - 1e-5 <= view.min() and view.max() <= hi + 1e-5
    torch.manual_seed(0)
    again, _ = dataset[0]
    assert all(torch.equal(a, b) for a, b in zip(views, again))  # drawn from torch's RNG

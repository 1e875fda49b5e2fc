"""Similarity (CKA) tables between the layers of two trained runs: from the networks, and from
labkit's stored latents when they exist, with the same values."""
import numpy as np
import pytest

from labkit.api import FinishedRun, Latents, UserError, latents
from labkit_stitch.similarity import SimilarityOptions, layer_similarity

MEASURES = ["linear_cka", "rbf_cka", "minibatch_cka"]


def test_layer_cka_reads_stored_latents_and_agrees_with_the_networks(registries, trained,
                                                                      tmp_path):
    a, b = trained("cnn_xs"), trained("resnet18_xxs")
    layers_a = ["block1-conv1", "block2.conv1", "fc"]
    layers_b = ["layer1-0-conv1", "layer3-1-conv2", "fc"]
    options = SimilarityOptions(batch_size=100)
    direct = layer_similarity(a, layers_a, b, layers_b, a.config["dataset"], options)
    assert list(direct["layer_a"].unique()) == ["block1-conv1", "block2-conv1", "fc"]
    assert set(direct["source_a"]) == set(direct["source_b"]) == {"network"}
    eval_images = len(FinishedRun(a, registries).data.evals["eval"])
    assert (direct["samples"] == eval_images).all()  # fewer than max_samples: all of them
    assert ((direct[MEASURES] > 0) & (direct[MEASURES] <= 1)).all().all()

    params = Latents.Params(downsampling="none", dtype="float32",
                            latents_dir=str(tmp_path / "latents"))
    try:
        for run in (a, b):
            Latents(FinishedRun(run, registries), params).compute(progress=False)
        stored = layer_similarity(a, layers_a, b, layers_b, a.config["dataset"], options)
    finally:  # the networks are shared with other tests: forget their latents
        for run in (a, b):
            latents.pointer_path(run.directory, "none").unlink(missing_ok=True)
    assert set(stored["source_a"]) == set(stored["source_b"]) == {"latents"}
    np.testing.assert_allclose(stored[MEASURES], direct[MEASURES], atol=1e-6)

    # latents of another reduction are not used, and the reduction matters
    pooled = layer_similarity(a, layers_a, b, layers_b, a.config["dataset"],
                              SimilarityOptions(batch_size=100, reduction=1))
    assert set(pooled["source_a"]) == {"network"}
    assert not np.allclose(pooled["linear_cka"], direct["linear_cka"])


def test_a_network_is_its_own_best_match(registries, trained):
    a = trained("cnn_xs")
    layers = ["block1", "block2", "flatten"]
    table = layer_similarity(a, layers, a, layers, a.config["dataset"],
                             SimilarityOptions(batch_size=100))
    for measure in MEASURES:
        values = table.pivot(index="layer_a", columns="layer_b", values=measure)
        np.testing.assert_allclose(np.diag(values.loc[layers, layers]), 1.0, atol=1e-9)
        assert (values.to_numpy() <= 1 + 1e-9).all()
    with pytest.raises(UserError, match="no eval split 'val'"):
        layer_similarity(a, layers, a, layers, a.config["dataset"],
                         SimilarityOptions(split="val"))

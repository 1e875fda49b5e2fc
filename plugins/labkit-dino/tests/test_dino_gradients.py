"""Gradient clipping and last-layer freezing, done inside the training step."""
import torch
from torch import nn
from torch.utils.data import DataLoader

from labkit.api import checkpoint, train
from labkit_dino.gradients import with_gradients


def test_stand_in_loss_gives_torch_clipped_gradients_and_no_gradient_to_frozen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(10, 6), torch.randint(3, (10,))
    params = list(model.parameters())
    frozen = set(model[2].parameters())

    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for p in frozen:
        p.grad = None
    total = torch.nn.utils.clip_grad_norm_([p for p in params if p not in frozen], 0.05)
    assert total > 0.05  # clipping is active
    expected = [None if p.grad is None else p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    loss = nn.functional.cross_entropy(model(x), y)
    stand_in = with_gradients(loss, params, frozen, max_norm=0.05)
    assert stand_in.item() == loss.item()
    stand_in.backward()
    for p, want in zip(params, expected):
        if want is None:
            assert p.grad is None
        else:
            assert torch.allclose(p.grad, want, rtol=1e-6, atol=1e-9)


def first_batch(method):
    dataset = method.train_dataset(method.context.data.train)
    return next(iter(DataLoader(dataset, batch_size=64)))


def gradients(method, batch):
    method.train(True)
    result = method.training_step(batch)
    result.loss.backward()
    return [p.grad for p in method._trainable]


def test_method_clips_the_joint_gradient_norm(dino_method):
    free = dino_method(clip_grad=0.0, freeze_last_layer_epochs=0, student_init="random")
    clipped = dino_method(clip_grad=1e-3, freeze_last_layer_epochs=0, student_init="random")
    g_free = gradients(free, first_batch(free))
    g_clip = gradients(clipped, first_batch(clipped))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g_free]))
    assert norm > 1e-3
    for a, b in zip(g_free, g_clip):
        assert torch.allclose(b, a * 1e-3 / (norm + 1e-6), rtol=1e-5, atol=1e-12)


def test_last_layer_is_frozen_during_the_first_epochs_only(dino_run, dino_method, dino_registries):
    method = dino_method(freeze_last_layer_epochs=1, student_init="random")
    grads = gradients(method, first_batch(method))
    last = set(method.student.head.last_layer.parameters())
    assert all((g is None) == (p in last) for p, g in zip(method._trainable, grads))

    run = dino_run(epochs=2, freeze_last_layer_epochs=1, student_init="random", probe_every=0)
    assert train(run, dino_registries, progress=False) == "finished"
    initial = method.student.head.last_layer.weight.detach()
    after = [checkpoint.read(checkpoint.checkpoint_path(run.directory / "checkpoints", e))
             ["modules"]["head"]["last_layer.weight"] for e in (1, 2)]
    assert torch.equal(after[0], initial)       # epoch 1: frozen (no weight decay either)
    assert not torch.equal(after[1], initial)   # epoch 2: trained
    mlp = checkpoint.read(checkpoint.checkpoint_path(run.directory / "checkpoints", 1))
    assert not torch.equal(mlp["modules"]["head"]["mlp.layer0.fc.weight"],
                           method.student.head.mlp.layer0.fc.weight.detach())


def test_without_clipping_or_freezing_the_loss_is_returned_as_is(dino_method):
    method = dino_method(clip_grad=0.0, freeze_last_layer_epochs=0)
    method.train(True)
    result = method.training_step(first_batch(method))
    # the multi-crop loss's own graph (a mean over pairs), not the stand-in's sum
    assert type(result.loss.grad_fn).__name__ == "MeanBackward0"

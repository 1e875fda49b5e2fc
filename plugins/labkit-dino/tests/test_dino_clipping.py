"""The frozen last layer (``Dino.before_optimizer_step``) and the engine's gradient clipping.

The runs are real engine runs on digits. What the optimizer is about to apply is read by
torch's global optimizer step pre-hook, and the run's method is remembered by wrapping
the plugin's own ``Dino.__init__``; nothing of labkit's is replaced.
"""
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader

from labkit.api import UserError, checkpoint, expand, train
from labkit_dino.method import Dino


class Steps(list):
    """Per optimizer step ``(gradient norm, last layer has a gradient)``; ``heads``: the
    student heads of the runs' methods as built."""

    heads: list


@pytest.fixture
def optimizer_steps(monkeypatch):
    """:class:`Steps` filled at every optimizer step of the runs trained in the test with
    ``(joint L2 norm of the gradients about to be applied, whether the last layer has a
    gradient)``; ``.heads`` holds each run's student head as built (before training)."""
    seen = Steps()
    seen.heads = []
    methods: list[Dino] = []
    original = Dino.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        methods.append(self)
        seen.heads.append({k: v.clone() for k, v in self.student.head.state_dict().items()})

    def hook(optimizer, args, kwargs):
        last = {id(p) for p in methods[-1].student.head.last_layer.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]))
        seen.append((norm.item(), any(p.grad is not None for p in params if id(p) in last)))

    monkeypatch.setattr(Dino, "__init__", init)
    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def head_after(run, epoch):
    path = checkpoint.checkpoint_path(run.directory / "checkpoints", epoch)
    return checkpoint.read(path)["modules"]["head"]


def test_before_optimizer_step_drops_last_layer_gradients_while_frozen(dino_method):
    method = dino_method(freeze_last_layer_epochs=2, student_init="random")
    context = method.context
    context.steps_per_epoch, context.total_steps = 5, 20  # the engine's clock
    last = set(method.student.head.last_layer.parameters())
    batch = next(iter(DataLoader(method.train_dataset(context.data.train), batch_size=64)))
    method.train(True)
    for step, frozen in ((0, True), (9, True), (10, False), (19, False)):
        context.step = step
        method.student.zero_grad(set_to_none=True)
        method.training_step(batch).loss.backward()
        assert all(p.grad is not None for p in method._trainable)
        method.before_optimizer_step()
        assert all((p.grad is None) == (frozen and p in last) for p in method._trainable), step


def test_last_layer_stays_frozen_for_an_epoch_of_engine_steps(dino_run, dino_registries,
                                                               optimizer_steps):
    # accumulate 2: an epoch is 3 optimizer steps of 2 batches; the last layer must be
    # frozen for exactly those (AdamW: not even weight decay may touch it)
    run = dino_run(epochs=2, batch_size=50, subset=300, freeze_last_layer_epochs=1,
                   student_init="random", probe_every=0, top={"accumulate": 2})
    assert train(run, dino_registries, progress=False) == "finished"
    assert [has_last for _, has_last in optimizer_steps] == [False] * 3 + [True] * 3
    (initial,) = optimizer_steps.heads
    first, second = head_after(run, 1), head_after(run, 2)
    assert torch.equal(first["last_layer.weight"], initial["last_layer.weight"])
    assert not torch.equal(second["last_layer.weight"], initial["last_layer.weight"])
    # the rest of the head trained from the first step on
    assert not torch.equal(first["mlp.layer0.fc.weight"], initial["mlp.layer0.fc.weight"])


@pytest.mark.parametrize("frozen", [0, 1])
def test_engine_clipping_bounds_the_gradient_the_optimizer_applies(dino_run, dino_registries,
                                                                   optimizer_steps, frozen):
    clip = 1e-3
    free = dino_run(epochs=2, batch_size=100, subset=300, logs="free", student_init="random",
                    freeze_last_layer_epochs=frozen, probe_every=0)
    assert train(free, dino_registries, progress=False) == "finished"
    unclipped = list(optimizer_steps)
    optimizer_steps.clear()
    # a huge SGD learning rate: only the clipping keeps the steps (lr · ‖g‖) small
    clipped = dino_run(epochs=2, batch_size=100, subset=300, logs="clipped",
                       student_init="random", freeze_last_layer_epochs=frozen, probe_every=0,
                       top={"clip_grad_norm": clip, "optimizer": {"name": "sgd", "lr": 10.0}})
    assert train(clipped, dino_registries, progress=False) == "finished"
    assert len(unclipped) == len(optimizer_steps) == 6
    # without clipping the optimizer applies gradients far above the limit ...
    assert min(norm for norm, _ in unclipped) > 10 * clip
    # ... with it, the limit (torch's clip_grad_norm_: clip · ‖g‖ / (‖g‖ + 1e-6)), also
    # while the last layer is frozen: its gradient is dropped *before* the clipping, so
    # the rest is clipped on its own norm and not shrunk by the frozen layer's share
    for norm, _ in optimizer_steps:
        assert clip * (1 - 1e-3) <= norm <= clip * (1 + 1e-6)
    assert [has_last for _, has_last in optimizer_steps] == [not frozen] * 3 + [True] * 3


def test_method_clip_grad_is_refused_naming_the_top_level_replacement(dino_registries,
                                                                      tmp_path):
    spec = {"model": "cnn_xs", "dataset": "digits", "logs_dir": str(tmp_path),
            "method": {"name": "dino", "clip_grad": 3.0}}
    with pytest.raises(UserError) as error:
        expand(spec, dino_registries)
    message = str(error.value)
    assert "method.clip_grad" in message and '"clip_grad_norm": 3.0' in message
    assert len(message.splitlines()) == 1
    spec["method"]["clip_grad"] = 0
    with pytest.raises(UserError, match="method.clip_grad: .*remove it .*the default"):
        expand(spec, dino_registries)
    # without it the resolved method holds no trace of the removed parameter
    del spec["method"]["clip_grad"]
    (config,) = expand(spec, dino_registries)
    assert "clip_grad" not in config["method"] and config["clip_grad_norm"] is None

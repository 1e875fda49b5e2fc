import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef, top_k_accuracy_score

from labkit.training.metrics import METRICS
from labkit.training.optimizers import OPTIMIZERS, SCHEDULERS


def lrs(name, epochs, **params):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = SCHEDULERS[name](opt, epochs, **params)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_follows_its_formula():
    got = lrs("cosine", 10, warmup_epochs=2, warmup_start=0.1, eta_min=0.0)
    expected = [0.1 * (0.1 + 0.9 * e / 2) for e in range(2)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * e / 8)) for e in range(8)]
    assert got == pytest.approx(expected, abs=1e-9)


def test_step_presets_match_phd_lab():
    assert lrs("lrs", 25) == pytest.approx([0.1] * 10 + [0.01] * 10 + [0.001] * 5)
    assert lrs("lrs60", 45) == pytest.approx([0.1] * 20 + [0.01] * 20 + [0.001] * 5)
    assert lrs("multistep", 6, milestones=[2, 4], gamma=0.5) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert lrs("warmup", 4, warmup_epochs=2, warmup_start=0.5) == pytest.approx(
        [0.05, 0.075, 0.1, 0.1])


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_takes_a_step(name):
    p = torch.nn.Parameter(torch.ones(3))
    opt = OPTIMIZERS[name]([p])
    (p ** 2).sum().backward()
    opt.step()
    assert (p < 1).all()


def test_metrics_accumulated_over_batches_match_sklearn():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(500, 7)))
    labels = torch.from_numpy(rng.integers(0, 7, size=500))
    logits[torch.arange(250), labels[:250]] += 2.0  # better than chance, not perfect
    metrics = {name: factory(7) for name, factory in METRICS.items()}
    for start in range(0, 500, 64):  # uneven batches
        for m in metrics.values():
            m.update(logits[start:start + 64], labels[start:start + 64])
    y, pred = labels.numpy(), logits.argmax(1).numpy()
    assert metrics["accuracy"].compute() == pytest.approx((y == pred).mean())
    assert metrics["mcc"].compute() == pytest.approx(matthews_corrcoef(y, pred))
    assert metrics["balanced_accuracy"].compute() == pytest.approx(
        balanced_accuracy_score(y, pred))
    assert metrics["top5_accuracy"].compute() == pytest.approx(
        top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(7)))

"""labkit's training loop against a plain hand-written PyTorch loop, side by side.

Same model, data, batch size, optimizer, epochs and per-epoch evaluation; labkit also
computes its metrics, writes a checkpoint and the CSV every epoch. Repetitions are
interleaved, alternating which goes first, in one process so machine noise hits both;
the result is the ratio of medians.

    .venv/bin/python benchmarks/bench_engine.py [--model cnn_s] [--epochs 3] [--reps 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from labkit import engine, plugins
from labkit.identity import RunConfig
from labkit.spec import expand


def spec(model: str, epochs: int, logs: str) -> dict:
    return {"model": model, "dataset": {"name": "digits", "resolution": 16},
            "epochs": epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05},
            "logs_dir": logs}


def labkit_loop(model: str, epochs: int) -> float:
    registries = plugins.registries()
    with tempfile.TemporaryDirectory() as logs:
        (config,) = expand(spec(model, epochs, logs), registries)
        started = time.perf_counter()
        assert engine.train(RunConfig(config, "bench"), registries, progress=False) == "finished"
        return time.perf_counter() - started


def plain_loop(model_name: str, epochs: int) -> float:
    registries = plugins.registries()
    started = time.perf_counter()
    torch.manual_seed(0)
    data = registries.datasets.create("digits", resolution=16)
    model = registries.models.create(model_name, num_classes=10, in_channels=1, resolution=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train = DataLoader(data.train, batch_size=64, shuffle=True)
    evals = DataLoader(data.evals["eval"], batch_size=512)
    for _ in range(epochs):
        model.train()
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in evals:
                correct += (model(images).argmax(1) == labels).sum().item()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn_s")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain_loop(args.model, 1)  # warm-up: imports, allocator, oneDNN kernels
    times = {"labkit": [], "plain": []}
    loops = {"labkit": labkit_loop, "plain": plain_loop}
    for rep in range(args.reps):
        order = ["labkit", "plain"] if rep % 2 == 0 else ["plain", "labkit"]  # no first-mover bias
        for name in order:
            times[name].append(loops[name](args.model, args.epochs))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} epochs={args.epochs} reps={args.reps} threads={args.threads}")
    for k, v in times.items():
        print(f"{k:7s} median {med[k]:.2f} s  runs {', '.join(f'{t:.2f}' for t in v)}")
    print(f"ratio labkit / plain = {med['labkit'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()

"""labkit's training loop against a plain hand-written PyTorch loop, side by side.

Same model, data, batch size, optimizer, epochs and per-epoch evaluation; labkit also
computes its metrics, writes a checkpoint and the CSV every epoch. Repetitions are
interleaved, alternating which goes first, in one process so machine noise hits both;
the result is the ratio of medians.

    .venv/bin/python benchmarks/bench_engine.py [--model cnn_s] [--epochs 3] [--reps 5]
        [--variant bf16='{"precision": "bf16"}' --variant acc2='{"accumulate": 2, "batch_size": 32}']

Every ``--variant NAME=JSON`` is labkit with those spec fields on top (training options
of issue 15), timed in the same interleaved repetitions; each is reported against the
plain loop and against labkit with every option off.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from labkit import engine
from labkit.cli import plugins
from labkit.spec import expand
from labkit.store.identity import RunConfig


def spec(model: str, epochs: int, logs: str) -> dict:
    return {"model": model, "dataset": {"name": "digits", "resolution": 16},
            "epochs": epochs, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05},
            "logs_dir": logs}


def labkit_loop(model: str, epochs: int, extra: dict | None = None) -> float:
    registries = plugins.registries()
    with tempfile.TemporaryDirectory() as logs:
        (config,) = expand({**spec(model, epochs, logs), **(extra or {})}, registries)
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
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="labkit with these spec fields, e.g. bf16='{\"precision\": \"bf16\"}'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain_loop(args.model, 1)  # warm-up: imports, allocator, oneDNN kernels
    loops = {"labkit": lambda: labkit_loop(args.model, args.epochs),
             "plain": lambda: plain_loop(args.model, args.epochs)}
    for variant in args.variant:
        name, _, fields = variant.partition("=")
        loops[name] = (lambda extra: lambda: labkit_loop(args.model, args.epochs, extra))(
            json.loads(fields))
    times: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(args.reps):
        order = list(loops) if rep % 2 == 0 else list(reversed(loops))  # no first-mover bias
        for name in order:
            times[name].append(loops[name]())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} epochs={args.epochs} reps={args.reps} threads={args.threads}")
    for k, v in times.items():
        print(f"{k:7s} median {med[k]:.2f} s  runs {', '.join(f'{t:.2f}' for t in v)}")
    print(f"ratio labkit / plain = {med['labkit'] / med['plain']:.3f}")
    for name in loops:
        if name not in ("labkit", "plain"):
            print(f"ratio {name} / plain = {med[name] / med['plain']:.3f}, "
                  f"{name} / labkit = {med[name] / med['labkit']:.3f}")


if __name__ == "__main__":
    main()

"""Saturation tracking: epoch time with tracking on against off, and against delve's own
SaturationTracker, side by side in one process.

Per quickstart model (digits at 16 px with crop augmentation, batch 64, SGD), every
condition trains its own copy of the network from the same initial weights, data order
and augmentation draws; tracking never changes training, so all copies hold the same
weights at every epoch. Epochs are interleaved (off, labkit, delve, … then the next
epoch) so machine noise hits every condition alike, and timed in CPU seconds of this
process (``time.process_time``), which other processes on a shared machine disturb far
less than wall time does. An epoch is timed from the start of the training pass to the
end of the statistics (labkit: ``columns``; delve:
``add_saturations``, which also writes its CSV); labkit's per-epoch plot is timed on its
own. The first epoch (imports, allocator warm-up) is left out of the medians.

Conditions:
  off          no tracking
  labkit       train and eval passes tracked (the spec's ``"saturation": {}``)
  labkit-eval  eval pass only (``"splits": ["eval"]``)
  labkit-ds4   train and eval, conv outputs downsampled to 4x4
  labkit-ms256 train and eval, first 256 images of each pass
  delve        delve 0.1.50's SaturationTracker (train and eval; keeps the last batch)

The last two labkit conditions trade accuracy of the estimate for time: the benchmark
reports the mean absolute difference of their final-epoch saturation from ``labkit``'s
full estimate, and the same for delve's (whose train-pass covariance holds the last
batch only).

    .venv/bin/python benchmarks/bench_saturation.py [--epochs 6] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from labkit import plugins
from labkit.build import build_component, make_metrics, seed_everything
from labkit.engine import Stepper, train_one_epoch
from labkit.evaluation import evaluate
from labkit.methods.base import RunContext
from labkit.saturation import TRAIN_PASS, SaturationTracker, plot_saturation
from labkit.spec import expand

MODELS = ("cnn_s", "resnet18_xxs")
LABKIT = {"labkit": {}, "labkit-eval": {"splits": ["eval"]},
          "labkit-ds4": {"downsampling": 4}, "labkit-ms256": {"max_samples": 256}}


class Condition:
    """One network with its optimizer, loaders and RNG state, trained epoch by epoch."""

    def __init__(self, name: str, model: str, registries: Any, workdir: Path):
        (self.config,) = expand({"model": model, "logs_dir": str(workdir),
                                 "dataset": {"name": "digits", "resolution": 16,
                                             "augment": "crop"},
                                 "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
                                registries)
        self.name, self.registries = name, registries
        seed_everything(0)
        self.data = build_component(registries, "datasets", self.config["dataset"])
        self.model = build_component(registries, "models", self.config["model"], num_classes=10,
                                     in_channels=1, resolution=16)
        context = RunContext(self.config, self.model, self.data, torch.device("cpu"), workdir,
                             registries)
        self.method = build_component(registries, "methods", self.config["method"],
                                      context=context)
        self.optimizer = build_component(registries, "optimizers", self.config["optimizer"],
                                         params=self.method.parameters())
        self.stepper = Stepper(self.optimizer, list(self.method.parameters()), 1, None, "32",
                               torch.device("cpu"))
        self.train_loader = DataLoader(self.data.train, batch_size=64, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))
        self.eval_loader = DataLoader(self.data.evals["eval"], batch_size=512)
        self.rng = torch.get_rng_state()  # augmentation draws, swapped in per epoch
        self.tracker = SaturationTracker(LABKIT.get(name), self.model, [TRAIN_PASS, "eval"])
        self.delve = None
        if name == "delve":
            from delve import SaturationTracker as DelveTracker

            self.delve = DelveTracker(str(workdir / "delve"), save_to="csv", modules=self.model,
                                      stats=["lsat", "idim"], device="cpu")
        self.row: dict[str, float] = {}

    def epoch(self, number: int) -> tuple[float, float]:
        """Train and evaluate one epoch; returns (epoch seconds, plot seconds)."""
        torch.set_rng_state(self.rng)
        metrics = make_metrics(self.registries, ["accuracy"], 10)
        started = time.process_time()
        with self.tracker.track(TRAIN_PASS, self.model):
            train_one_epoch(self.method, self.train_loader, self.stepper, metrics,
                            torch.device("cpu"), number, progress=False)
        self.method.train(False)
        self.row = {"epoch": number, **self.tracker.columns(TRAIN_PASS)}
        with self.tracker.track("eval", self.model):
            stats = evaluate(self.model, self.eval_loader, make_metrics(
                self.registries, ["accuracy"], 10), torch.device("cpu"))
        self.row.update({"eval-accuracy": stats["accuracy"], **self.tracker.columns("eval")})
        if self.delve is not None:
            self.delve.add_saturations()
        seconds = time.process_time() - started
        self.rng = torch.get_rng_state()
        plot_started = time.process_time()
        if self.tracker.passes:
            plot_saturation(self.row, Path(self.config["logs_dir"]) / f"{self.name}.png")
        return seconds, time.process_time() - plot_started

    def saturation(self) -> dict[str, float]:
        """The last epoch's saturation columns (delve's: read back from its CSV)."""
        if self.delve is None:
            return {k: v for k, v in self.row.items() if "-saturation_" in k}
        import pandas as pd

        log = pd.read_csv(Path(self.config["logs_dir"]) / "delve.csv", sep=";", index_col=0)
        last = log.iloc[-1]
        return {k: float(last[k]) for k in log.columns if "-saturation_" in k}


def bench(model: str, epochs: int, registries: Any) -> None:
    names = ["off", *LABKIT, "delve"]
    with tempfile.TemporaryDirectory() as tmp:
        conditions = [Condition(n, model, registries, Path(tmp)) for n in names]
        times: dict[str, list[float]] = {n: [] for n in names}
        plots: list[float] = []
        for number in range(1, epochs + 1):
            for condition in conditions:
                seconds, plot = condition.epoch(number)
                if number > 1:
                    times[condition.name].append(seconds)
                    if condition.name == "labkit":
                        plots.append(plot)
        full = conditions[1].saturation()
        accuracies = {c.name: c.row["eval-accuracy"] for c in conditions}
        assert len(set(accuracies.values())) == 1, f"training diverged: {accuracies}"
        deviations = {}
        for condition in conditions[2:]:
            estimate = condition.saturation()
            shared = [k for k in estimate if k in full]
            deviations[condition.name] = (statistics.mean(abs(estimate[k] - full[k])
                                                          for k in shared) if shared else None)

    def ratio(name: str, other: str = "off") -> float:
        """Median over epochs of the time ratio within the same round (cancels drifts)."""
        return statistics.median(a / b for a, b in zip(times[name], times[other]))

    plot = statistics.median(plots)
    print(f"\n{model}: epochs 2-{epochs}, median seconds and median per-epoch ratio to off")
    for name in names:
        deviation = deviations.get(name)
        note = f"  mean |saturation - labkit's| {deviation:.4f}" if deviation is not None else ""
        print(f"  {name:13s} {statistics.median(times[name]):.3f} s  ratio {ratio(name):.2f}{note}")
    with_plot = statistics.median((a + p) / b for a, p, b in zip(times["labkit"], plots, times["off"]))
    print(f"  labkit plot   {plot:.3f} s per epoch; labkit with plot: ratio {with_plot:.2f}")
    print(f"  labkit / delve: ratio {ratio('labkit', 'delve'):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from delve.logger import log

    log.setLevel(logging.WARNING)  # delve logs every layer it adds or skips
    print(f"epochs={args.epochs} threads={args.threads} torch={torch.__version__}")
    registries = plugins.registries()
    for model in args.models:
        bench(model, args.epochs, registries)


if __name__ == "__main__":
    main()

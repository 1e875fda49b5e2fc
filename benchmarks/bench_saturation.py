"""Saturation tracking: epoch time with tracking on against off, side by side in one process.

Two suites (``--suite``), each timing every condition's epochs interleaved (off, labkit,
… then the next epoch) so machine noise hits every condition alike, in CPU seconds of
this process (``time.process_time``), which other processes on a shared machine disturb
far less than wall time does. The first epoch (imports, allocator warm-up) is left out;
ratios are medians over epochs of each epoch's time divided by the untracked epoch of
the same round.

``width`` (issue 19: full-width networks at CIFAR resolution): ResNet-18 at full width
(``resnet18``) and at 1/8 width (``resnet18_xxs``) on generated CIFAR-shaped data (3 x
32 x 32, 10 classes, ``--images`` training images, an eval split of half as many),
batch 128, SGD. Conditions: ``off``; ``labkit`` (training and eval pass tracked, the
spec's ``"saturation": {}``); with ``--baseline FILE`` also ``before``, the tracker of
an older ``labkit/saturation.py`` (``git show REV:labkit/saturation.py > FILE``), so
before and after are measured in the same run. Reports the training pass and the eval
pass on their own, and the epoch of CIFAR's proportions (an eval split one fifth of
the training split) computed from them, and how far ``labkit``'s final saturation and
trace lie from ``before``'s.

``quickstart``: per quickstart model (digits at 16 px with crop augmentation, batch 64,
SGD). Every condition trains its own copy of the network from the same initial weights,
data order and augmentation draws; tracking never changes training, so all copies hold
the same weights at every epoch. An epoch is timed from the start of the training pass
to the end of the statistics (labkit: ``columns``; delve: ``add_saturations``, which
also writes its CSV); labkit's per-epoch plot is timed on its own.

Quickstart conditions:
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

    .venv/bin/python benchmarks/bench_saturation.py --suite width [--images 256] \
        [--epochs 5] [--threads 1] [--baseline before.py]
    .venv/bin/python benchmarks/bench_saturation.py --suite quickstart [--epochs 6]
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from labkit.cli import plugins
from labkit.data.bundle import DataBundle
from labkit.measures.saturation_tracker import SaturationTracker
from labkit.methods.base import RunContext
from labkit.outputs.saturation_plot import plot_saturation
from labkit.spec import expand
from labkit.spec.saturation import TRAIN_PASS
from labkit.training.build import build_component, make_metrics, seed_everything
from labkit.training.epoch import train_one_epoch
from labkit.training.evaluation import evaluate
from labkit.training.stepper import Stepper

MODELS = ("cnn_s", "resnet18_xxs")
WIDTH_MODELS = ("resnet18", "resnet18_xxs")
LABKIT = {"labkit": {}, "labkit-eval": {"splits": ["eval"]},
          "labkit-ds4": {"downsampling": 4}, "labkit-ms256": {"max_samples": 256}}


def trainer(condition: Any, data: Any, workdir: Path, eval_batch_size: int) -> None:
    """Give ``condition`` (holding ``config`` and ``registries``) its network, method,
    optimizer, stepper and loaders for ``data``, on the CPU, seeded as the engine seeds."""
    config, registries = condition.config, condition.registries
    condition.model = build_component(registries, "models", config["model"],
                                      num_classes=data.num_classes,
                                      in_channels=data.in_channels, resolution=data.resolution)
    context = RunContext(config, condition.model, data, torch.device("cpu"), workdir,
                         registries)
    condition.method = build_component(registries, "methods", config["method"],
                                       context=context)
    condition.optimizer = build_component(registries, "optimizers", config["optimizer"],
                                          params=condition.method.parameters())
    condition.stepper = Stepper(condition.optimizer, list(condition.method.parameters()), 1,
                                None, "32", torch.device("cpu"), condition.method)
    condition.train_loader = DataLoader(data.train, batch_size=config["batch_size"],
                                        shuffle=True, generator=torch.Generator().manual_seed(0))
    condition.eval_loader = DataLoader(data.evals["eval"], batch_size=eval_batch_size)


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
        trainer(self, self.data, workdir, eval_batch_size=512)
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


# ---------------------------------------------------------------- width suite (issue 19)

def load_baseline(path: str) -> Any:
    """An older ``labkit/saturation.py`` imported as a module of its own."""
    spec = importlib.util.spec_from_file_location("saturation_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the config's annotations there
    spec.loader.exec_module(module)
    return module


def cifar_shaped(images: int, seed: int) -> TensorDataset:
    """Generated images in [0, 1] at 3 x 32 x 32 with labels in [0, 10)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(images, 3, 32, 32, generator=g),
                         torch.randint(0, 10, (images,), generator=g))


class WidthCondition:
    """One ResNet at 32 px on generated data, trained and evaluated epoch by epoch, with
    the training and eval passes timed separately."""

    def __init__(self, name: str, tracker: Any, model: str, images: int, registries: Any,
                 workdir: Path):
        # the spec's dataset only resolves the config; the data below replace it
        (self.config,) = expand({"model": model, "logs_dir": str(workdir),
                                 "dataset": {"name": "digits"}, "batch_size": 128,
                                 "optimizer": {"name": "sgd", "lr": 0.05}}, registries)
        self.name, self.registries = name, registries
        seed_everything(0)
        train = cifar_shaped(images, 0)
        data = DataBundle(train=train, evals={"eval": cifar_shaped(images // 2, 1)},
                          train_plain=train, num_classes=10, in_channels=3, resolution=32)
        trainer(self, data, workdir, eval_batch_size=128)
        self.tracker = tracker
        self.row: dict[str, float] = {}

    def epoch(self, number: int) -> tuple[float, float]:
        """Train and evaluate one epoch; returns (training pass, eval pass) CPU seconds,
        each up to its statistics (``columns``)."""
        metrics = make_metrics(self.registries, ["accuracy"], 10)
        started = time.process_time()
        with self.tracker.track(TRAIN_PASS, self.model):
            train_one_epoch(self.method, self.train_loader, self.stepper, metrics,
                            torch.device("cpu"), number, progress=False)
        self.row = {"epoch": number, **self.tracker.columns(TRAIN_PASS)}
        trained = time.process_time()
        self.method.train(False)
        with self.tracker.track("eval", self.model):
            stats = evaluate(self.model, self.eval_loader, make_metrics(
                self.registries, ["accuracy"], 10), torch.device("cpu"))
        self.row.update({"eval-loss": stats["loss"], **self.tracker.columns("eval")})
        return trained - started, time.process_time() - trained


def bench_width(model: str, epochs: int, images: int, baseline: Any, registries: Any) -> None:
    trackers = {"off": lambda m: SaturationTracker(None, m, [TRAIN_PASS, "eval"]),
                "labkit": lambda m: SaturationTracker({"stats": ["lsat", "trc"]}, m,
                                                      [TRAIN_PASS, "eval"])}
    if baseline is not None:
        trackers["before"] = lambda m: baseline.SaturationTracker(
            {"stats": ["lsat", "trc"]}, m, [TRAIN_PASS, "eval"])
    with tempfile.TemporaryDirectory() as tmp:
        conditions = []
        for name, make in trackers.items():
            condition = WidthCondition(name, None, model, images, registries, Path(tmp))
            condition.tracker = make(condition.model)
            conditions.append(condition)
        times: dict[str, list[tuple[float, float]]] = {c.name: [] for c in conditions}
        for number in range(1, epochs + 1):
            for condition in conditions:
                seconds = condition.epoch(number)
                if number > 1:
                    times[condition.name].append(seconds)
    losses = {c.name: c.row["eval-loss"] for c in conditions}
    assert len(set(losses.values())) == 1, f"training diverged: {losses}"

    def ratio(name: str, part: int) -> float:
        return statistics.median(a[part] / b[part] for a, b in zip(times[name], times["off"]))

    def cifar_epoch(name: str) -> float:
        """Training pass plus an eval split one fifth of it (this eval split is half)."""
        return statistics.median((a[0] + a[1] * 2 / 5) / (b[0] + b[1] * 2 / 5)
                                 for a, b in zip(times[name], times["off"]))

    print(f"\n{model} at 32 px, {images} training / {images // 2} eval images, batch 128: "
          f"epochs 2-{epochs}, median CPU seconds and median per-epoch ratio to off")
    for name in times:
        train = statistics.median(t[0] for t in times[name])
        evaluation = statistics.median(t[1] for t in times[name])
        print(f"  {name:7s} train pass {train:7.2f} s  ratio {ratio(name, 0):.3f}   "
              f"eval pass {evaluation:6.2f} s  ratio {ratio(name, 1):.3f}   "
              f"CIFAR-proportioned epoch ratio {cifar_epoch(name):.3f}")
    if baseline is not None:
        after, before = conditions[1].row, conditions[2].row
        keys = [k for k in after if "-saturation_" in k or "-covariance-trace_" in k]
        lsat = max(abs(after[k] - before[k]) for k in keys if "-saturation_" in k)
        trace = max(abs(after[k] / before[k] - 1) for k in keys if "-covariance-trace_" in k)
        print(f"  labkit against before, last epoch, every layer and pass: max |saturation "
              f"difference| {lsat:.2g}, max relative trace difference {trace:.2g}")
        print(f"  labkit / before: train pass {ratio('labkit', 0) / ratio('before', 0):.3f}, "
              f"eval pass {ratio('labkit', 1) / ratio('before', 1):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["width", "quickstart"], default="width")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per condition, the first left out (width 5, quickstart 6)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--images", type=int, default=256,
                        help="width suite: generated training images (eval: half as many)")
    parser.add_argument("--baseline", default=None,
                        help="width suite: an older labkit/saturation.py to time as 'before'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from delve.logger import log

    log.setLevel(logging.WARNING)  # delve logs every layer it adds or skips
    width = args.suite == "width"
    epochs = args.epochs or (5 if width else 6)
    print(f"suite={args.suite} epochs={epochs} threads={args.threads} torch={torch.__version__}")
    registries = plugins.registries()
    baseline = load_baseline(args.baseline) if args.baseline else None
    for model in args.models or (WIDTH_MODELS if width else MODELS):
        if width:
            bench_width(model, epochs, args.images, baseline, registries)
        else:
            bench(model, epochs, registries)


if __name__ == "__main__":
    main()

"""The training engine: one run, from config to finished directory.

Read top to bottom: build everything from the resolved config, restore the newest
intact checkpoint, then per epoch train, evaluate every eval split, log, checkpoint.
The per-epoch log rows live inside the checkpoint and the CSV is rewritten from them,
so the CSV never disagrees with the weights a resume starts from.
"""
from __future__ import annotations

import math
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from labkit import checkpoint, runinfo
from labkit.atomic import write_csv
from labkit.errors import UserError
from labkit.identity import RunConfig
from labkit.methods.base import Method, RunContext
from labkit.registry import Registries
from labkit.saturation import (TRAIN_PASS, SaturationConfig, SaturationTracker, load_spectra,
                               save_spectra, spectra_path, view_columns)


class RunFailed(Exception):
    """The run cannot go on (non-finite loss, …); the reason goes to the status file."""


def build_component(registries: Registries, kind: str, spec: dict[str, Any], **context: Any) -> Any:
    """Create a registered component from its resolved spec ``{"name": …, params…}``."""
    params = {k: v for k, v in spec.items() if k != "name"}
    registry = registries[kind]
    entry = registry.get(spec["name"])
    if isinstance(entry.obj, type) and hasattr(entry.obj, "Params"):
        return registry.create(spec["name"], params=entry.params.model_validate(params), **context)
    return registry.create(spec["name"], **context, **params)


def quiet_bars(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when asked, and (``None``) whenever stderr is not a TTY."""
    return True if not progress else None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside lists, tuples and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def make_metrics(registries: Registries, names: list[str], num_classes: int) -> dict[str, Any]:
    return {name: registries.metrics.create(name, num_classes=num_classes) for name in names}


def train_one_epoch(method: Method, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    metrics: dict[str, Any], device: torch.device, epoch: int,
                    progress: bool) -> dict[str, float]:
    """One pass over the training set; returns mean loss per sample and metrics."""
    method.train(True)
    loss_sum, seen = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch} train", leave=False,
                                      disable=quiet_bars(progress))):
        result = method.training_step(to_device(batch, device))
        loss = result.loss.item()
        if not math.isfinite(loss):
            raise RunFailed(f"non-finite training loss ({loss}) at epoch {epoch}, "
                            f"step {step + 1}; lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        method.after_step()
        loss_sum += loss * result.batch_size
        seen += result.batch_size
        if result.logits is not None:
            for metric in metrics.values():
                metric.update(result.logits.detach(), result.targets)
    stats = {"loss": loss_sum / seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    return stats


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, metrics: dict[str, Any],
             device: torch.device) -> dict[str, float]:
    """Mean cross-entropy per sample and metrics of ``model`` over one split."""
    loss_sum, seen = 0.0, 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        seen += len(targets)
        for metric in metrics.values():
            metric.update(logits, targets)
    stats = {"loss": loss_sum / seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    return stats


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Atomically rewrite the per-epoch CSV from the checkpointed history."""
    write_csv(path, pd.DataFrame(history))


def saturation_view(run_dir: Path, history: list[dict[str, Any]],
                    config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``history`` with its delta-dependent saturation columns recomputed from the stored
    spectra at the requested ``delta`` and ``idim_rule`` (a run trained under other
    values shares the directory: they are not identity). Rows without spectra are kept."""
    if config is None:
        return history
    sat = SaturationConfig.model_validate(config)
    rows = []
    for row in history:
        view = view_columns(load_spectra(spectra_path(run_dir, int(row["epoch"]))), sat)
        rows.append({**row, **{k: v for k, v in view.items() if k in row}})
    return rows


def refresh_log(run: RunConfig) -> None:
    """Bring a trained run's log.csv to the saturation view its config asks for; the
    file is rewritten only when a value changes."""
    path = run.directory / runinfo.LOG_CSV
    if run.config["saturation"] is None or not path.exists():
        return
    table = pd.read_csv(path)
    history = table.to_dict("records")
    view = pd.DataFrame(saturation_view(run.directory, history, run.config["saturation"]),
                        columns=table.columns)
    if not view.equals(table):
        write_csv(path, view)


def train(run: RunConfig, registries: Registries, device: str = "cpu",
          progress: bool = True) -> str:
    """Train one run to completion (resuming when possible), then run its analyses.

    Returns ``"finished"``, ``"skipped"`` (training was already finished; incomplete
    analyses still run) or ``"failed"``; a failure is recorded with its reason in
    ``status.json`` and does not raise, so a grid goes on. User mistakes (missing
    dataset, …) raise :class:`~labkit.errors.UserError`. When another process is
    working on the run, this waits for it first.
    """
    with runinfo.exclusive(run.directory):  # parallel processes never share a run
        return _train_and_analyse(run, registries, device, progress)


def _train_and_analyse(run: RunConfig, registries: Registries, device: str,
                       progress: bool) -> str:
    run_dir = run.directory
    trained = runinfo.read_status(run_dir).get("state") == "finished"
    if not trained:
        runinfo.write_config(run_dir, run)
        runinfo.write_status(run_dir, "running")
    try:
        if not trained:
            _train(run, registries, torch.device(device), progress)
        else:
            refresh_log(run)
        run_analyses(run, registries, device, progress=progress)
    except (UserError, KeyboardInterrupt):
        runinfo.write_status(run_dir, "interrupted", reason="stopped before finishing")
        raise
    except Exception as exc:  # any other failure ends this run only
        reason = str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
        runinfo.write_status(run_dir, "failed", reason=reason)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return "failed"
    runinfo.write_status(run_dir, "finished", epoch=run.config["epochs"])
    return "skipped" if trained else "finished"


def run_analyses(run: RunConfig, registries: Registries, device: str = "cpu",
                 progress: bool = True) -> list[str]:
    """Run the spec's analyses on a trained run; returns the names of those that ran.

    An analysis whose outputs are complete is skipped.
    """
    from labkit.analyses import FinishedRun

    finished = FinishedRun(run, registries, device)
    done = []
    for spec in run.config["analyses"]:
        analysis = build_component(registries, "analyses", spec, run=finished)
        if not analysis.is_complete():
            analysis.compute(progress)
            done.append(spec["name"])
    return done


def _train(run: RunConfig, registries: Registries, device: torch.device, progress: bool) -> None:
    config, run_dir = run.config, run.directory
    ckpt_dir = run_dir / "checkpoints"

    # --- build everything from the config, seeded
    seed_everything(config["seed"])
    data = build_component(registries, "datasets", config["dataset"])
    model = build_component(registries, "models", config["model"], num_classes=data.num_classes,
                            in_channels=data.in_channels, resolution=data.resolution).to(device)
    context = RunContext(config, model, data, device, run_dir, registries, run.run_id, progress)
    method: Method = build_component(registries, "methods", config["method"], context=context)
    optimizer = build_component(registries, "optimizers", config["optimizer"],
                                params=method.parameters())
    scheduler = (build_component(registries, "schedulers", config["scheduler"],
                                 optimizer=optimizer, epochs=config["epochs"])
                 if config["scheduler"] else None)
    order = torch.Generator().manual_seed(config["seed"])
    train_set = method.train_dataset(data.train)
    train_loader = DataLoader(
        train_set, batch_size=config["batch_size"], shuffle=True, generator=order,
        num_workers=config["num_workers"],
        # a last batch of one sample breaks BatchNorm in training mode
        drop_last=len(train_set) % config["batch_size"] == 1)
    eval_loaders = {split: DataLoader(ds, batch_size=config["eval_batch_size"],
                                      num_workers=config["num_workers"])
                    for split, ds in data.evals.items()}
    runinfo.write_computational_info(run_dir, model, data, config, device)
    # covariances live for one pass only, so the tracker holds nothing a resume must restore
    saturation = SaturationTracker(config["saturation"], model, [TRAIN_PASS, *eval_loaders])

    # --- resume from the newest intact checkpoint
    start, history = 0, []
    state = checkpoint.load_latest(ckpt_dir)
    if state is not None:
        for name, module in method.modules().items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        order.set_state(state["data_order"])
        checkpoint.set_rng_state(state["rng"])
        start = state["epoch"]
        history = saturation_view(run_dir, state["history"], config["saturation"])
        print(f"{run.name}: resuming after epoch {start}", file=sys.stderr, flush=True)

    # --- the epoch loop
    epochs = range(start + 1, config["epochs"] + 1)
    for epoch in tqdm(epochs, desc=run.name, disable=quiet_bars(progress)):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        with saturation.track(TRAIN_PASS, model):
            train_stats = train_one_epoch(
                method, train_loader, optimizer,
                make_metrics(registries, config["metrics"], data.num_classes), device, epoch,
                progress)
        extra = method.end_epoch(epoch)
        method.train(False)
        row: dict[str, Any] = {"epoch": epoch, "lr": lr}
        row.update({f"train-{k}": v for k, v in train_stats.items()})
        row.update(saturation.columns(TRAIN_PASS))
        for split, loader in eval_loaders.items():
            with saturation.track(split, method.eval_model()):
                stats = evaluate(method.eval_model(), loader,
                                 make_metrics(registries, config["metrics"], data.num_classes),
                                 device)
            row.update({f"{split}-{k}": v for k, v in stats.items()})
            row.update(saturation.columns(split))
        row.update(extra)
        row["epoch_seconds"] = time.perf_counter() - started
        if scheduler is not None:
            scheduler.step()
        history.append(row)
        # before the checkpoint: a run killed in between redoes the epoch, its spectra
        # and its plot
        if saturation.passes:
            save_spectra(spectra_path(run_dir, epoch), saturation.epoch_spectra())
        saturation.plot(row, run_dir / "plots" / f"saturation_epoch_{epoch:04d}.png")
        checkpoint.save(ckpt_dir, epoch, {
            "epoch": epoch,
            "history": history,
            "modules": {name: m.state_dict() for name, m in method.modules().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "method": method.state_dict(),
            "data_order": order.get_state(),
            "rng": checkpoint.rng_state(),
        })
        write_log(run_dir / runinfo.LOG_CSV, history)
        runinfo.write_status(run_dir, "running", epoch=epoch)

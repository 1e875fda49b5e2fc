"""The training of one run, in the order it happens (:func:`train_run`): build, resume,
then per epoch train, evaluate and end the epoch."""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from labkit.core.errors import UserError
from labkit.core.registry import Registries
from labkit.data.device_loader import device_loader
from labkit.data.mixing import batch_mixer
from labkit.data.seeded import (AUGMENT_DRAWS, SeededSampler, SeededSamples, ShardedBatches,
                                check_draws)
from labkit.measures.saturation_tracker import SaturationTracker
from labkit.measures.spectra import saturation_view, save_spectra, spectra_path
from labkit.methods.base import Method, RunContext
from labkit.spec.saturation import TRAIN_PASS
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig
from labkit.training import distributed
from labkit.training.build import build_component, build_scheduler, make_metrics, seed_everything
from labkit.training.checkpointing import (MidEpochCheckpoints, best_record, best_so_far,
                                           check_checkpointable, is_better)
from labkit.training.compute import trained_samples, write_computational_info
from labkit.training.epoch import EpochPosition, channels_last, loader_options, train_one_epoch
from labkit.training.evaluation import evaluate
from labkit.training.loggers import Trackers
from labkit.training.progress import note, subject, track
from labkit.training.stepper import Stepper, scaled_lr


def eval_module_name(method: Method) -> str:
    """The key in ``method.modules()`` of the network ``method.eval_model()`` returns:
    the checkpoint records it, so analyses read the network the eval splits scored.

    Raises:
        UserError: the evaluated network is not one of the method's checkpointed modules.
    """
    evaluated = method.eval_model()
    for name, module in method.modules().items():
        if module is evaluated:
            return name
    raise UserError(f"{type(method).__name__}.eval_model() returns a network that is not one "
                    f"of its modules(); return it from modules() too, so that it is "
                    f"checkpointed and analyses can read it")


def train_run(run: RunConfig, registries: Registries, device: torch.device, progress: bool) -> None:
    """Train one run, in the order it happens: build everything from the config, resume
    from the newest intact checkpoint, then per epoch train, evaluate and end the epoch
    (log, best, checkpoint); finally wait until every process is done."""
    job = build(run, registries, device, progress)
    resume(job)
    with job.trackers:
        for epoch in job.epochs():
            row = train_epoch(job, epoch)
            evaluate_epoch(job, row)
            end_epoch(job, epoch, row)
    distributed.barrier()  # the last checkpoint exists before any process reports done


@dataclass
class Job:
    """Everything one run's training holds, built by :func:`build` and advanced by the
    phase functions of :func:`train_run`."""

    run: RunConfig
    registries: Registries
    device: torch.device
    progress: bool  # this process shows progress (rank 0 of a run on several)
    data: Any
    model: torch.nn.Module
    context: RunContext
    method: Method
    optimizer: torch.optim.Optimizer
    stepper: Stepper
    mixer: Any
    order: torch.Generator  # the data order's generator (checkpointed)
    sampler: Any  # whose ``start`` a mid-epoch resume sets
    train_loader: Any
    eval_loaders: dict[str, DataLoader]
    scheduler: Any = None
    per_step: bool = False  # the schedule steps after every optimizer step
    batches: int = 0  # training batches of a whole epoch
    last_epoch: int = 0
    saturation: Any = None
    midway: Any = None
    trackers: Any = None
    evaluated: str = ""  # the name of the evaluated network among the method's modules
    start: int = 0  # epochs done before this process took over
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    resumed: dict[str, Any] | None = None  # the mid-epoch position a resume continues
    resumed_rng: dict[str, Any] | None = None
    epoch_started: float = 0.0  # perf_counter at this process's start of the epoch
    epoch_seconds: float = 0.0  # the epoch's training time before this process took over

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def checkpoints(self) -> Path:
        return self.run.directory / "checkpoints"

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.context.rank == 0

    def epochs(self) -> Iterator[int]:
        """The epochs still to train, with a progress bar over them."""
        return track(range(self.start + 1, self.last_epoch + 1), "", unit="epoch",
                     progress=self.progress, total=self.last_epoch, done=self.start,
                     lines=False)

    def snapshot(self, epoch_done: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint state after ``epoch_done`` epochs (``rngs``: every process's)."""
        return {
            "run_hash": self.run.hash,
            "eval_module": self.evaluated,
            "epoch": epoch_done,
            "step": self.context.step,
            "history": self.history,
            "modules": {name: m.state_dict() for name, m in self.method.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "method": self.method.state_dict(),
            "scaler": self.stepper.scaler.state_dict(),
            "data_order": self.order.get_state(),
            "augment_draws": AUGMENT_DRAWS,
            "rng": rngs[0],
            **({"rng_ranks": rngs} if distributed.world_size() > 1 else {}),
            "best": self.best,
        }


# --- phase 1: build everything from the config, seeded

def build(run: RunConfig, registries: Registries, device: torch.device, progress: bool) -> Job:
    """Data, network, method, optimizer, loaders, schedule, trackers of ``run``, built in
    a fixed order from its seed (the order is part of what makes runs reproducible)."""
    config = run.config
    seed_everything(config["seed"])
    data = build_component(registries, "datasets", config["dataset"])
    model = build_component(registries, "models", config["model"], num_classes=data.num_classes,
                            in_channels=data.in_channels, resolution=data.resolution).to(device)
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    context = RunContext(config, model, data, device, run.directory, registries, run.run_id,
                         progress, rank=distributed.rank())
    method: Method = build_component(registries, "methods", config["method"], context=context)
    mixer = batch_mixer(config["batch_augment"], data.num_classes, method,
                        config["method"]["name"])
    optimizer = build_component(registries, "optimizers", scaled_lr(config),
                                params=method.parameters())
    # a method may give parameter groups (DINO: with and without weight decay)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    stepper = Stepper(optimizer, parameters, config["accumulate"], config["clip_grad_norm"],
                      config["precision"], device, method, config["weight_decay_schedule"])
    order = torch.Generator().manual_seed(config["seed"])
    train_set = method.train_dataset(data.train)
    sampler, train_loader = training_loader(train_set, config, order, device)
    job = Job(run, registries, device, progress and context.rank == 0, data, model, context,
              method, optimizer, stepper, mixer, order, sampler, train_loader,
              {split: DataLoader(ds, batch_size=config["eval_batch_size"],
                                 **loader_options(device, config["num_workers"]))
               for split, ds in data.evals.items()})
    build_clock(job)
    if job.main:
        context = job.context
        write_computational_info(
            run.directory, model, data, device, job.last_epoch, context.total_steps,
            trained_samples(len(train_set), job.batches, config["batch_size"],
                            context.steps_per_epoch, context.total_steps, config["accumulate"]))
    # covariances live for one pass only; a mid-epoch checkpoint keeps the training pass's
    job.saturation = SaturationTracker(config["saturation"], model,
                                       [TRAIN_PASS, *job.eval_loaders])
    job.midway = MidEpochCheckpoints(config, context)
    if job.midway.enabled:
        check_checkpointable(make_metrics(registries, config["metrics"], data.num_classes))
    if config["compile"]:
        model.compile()
    return job


def training_loader(train_set: Any, config: dict[str, Any], order: torch.Generator,
                    device: torch.device) -> tuple[Any, Any]:
    """The training loader and the sampler whose ``start`` a mid-epoch resume sets: the
    device-resident loader, a DataLoader over seeded samples, or this process's shard of
    every batch (``nproc`` > 1; the spec checks that ``batch_size`` divides).

    Raises:
        UserError: the training set holds fewer samples than one batch.
    """
    rank, world = distributed.rank(), distributed.world_size()
    batch_size = config["batch_size"]
    sampler = SeededSampler(len(train_set), order)
    # a last batch of one sample breaks BatchNorm in training mode
    drop_last = len(train_set) % batch_size == 1
    if config["data_loader"] == "device":  # one process (the spec checks)
        loader = device_loader(train_set, batch_size, order, device, drop_last=drop_last)
        sampler = loader.sampler
    elif world == 1:
        loader = DataLoader(SeededSamples(train_set), batch_size=batch_size, sampler=sampler,
                            drop_last=drop_last, **loader_options(device, config["num_workers"]))
    else:
        loader = DataLoader(SeededSamples(train_set),
                            batch_sampler=ShardedBatches(sampler, batch_size, rank, world),
                            **loader_options(device, config["num_workers"]))
    if len(loader) == 0:
        raise UserError(f"the training set has {len(train_set)} sample(s), fewer than one "
                        f"batch; lower batch_size below {batch_size}")
    return sampler, loader


def build_clock(job: Job) -> None:
    """The run's step clock (steps per epoch, the step budget, the last epoch) and the
    learning-rate schedule spanning it."""
    config, context = job.config, job.context
    job.batches = len(job.train_loader)  # fixed now: a resumed epoch's loader skips some
    context.steps_per_epoch = math.ceil(job.batches / config["accumulate"])
    context.total_steps = config["epochs"] * context.steps_per_epoch
    if config["steps"] is not None:
        context.total_steps = min(context.total_steps, config["steps"])
    job.last_epoch = math.ceil(context.total_steps / context.steps_per_epoch)
    job.per_step = config["scheduler_interval"] == "step"
    job.scheduler = build_scheduler(job.registries, config, job.optimizer,
                                    context.steps_per_epoch, context.total_steps)
    job.stepper.scheduler = job.scheduler if job.per_step else None


# --- phase 2: resume from the newest intact checkpoint (an epoch's end or mid-epoch)

def resume(job: Job) -> None:
    """Restore the newest intact checkpoint, if any, into ``job``; then record this
    segment's provenance and start the trackers."""
    run, config = job.run, job.config
    state = checkpoint.load_latest(job.checkpoints)
    if state is not None:
        checkpoint.check_owner(state, run.hash, job.checkpoints)
        check_draws(state, job.checkpoints)
        for name, module in job.method.modules().items():
            module.load_state_dict(state["modules"][name])
        job.optimizer.load_state_dict(state["optimizer"])
        if job.scheduler is not None:
            job.scheduler.load_state_dict(state["scheduler"])
        job.method.load_state_dict(state["method"])
        job.stepper.scaler.load_state_dict(state.get("scaler", {}))
        job.order.set_state(state["data_order"])
        job.start, job.best = state["epoch"], best_so_far(state.get("best"), state["history"], config)
        # checkpoints before 0.3 carry no step count: every epoch then was whole
        job.context.step = int(state.get("step", job.start * job.context.steps_per_epoch))
        job.history = saturation_view(run.directory, state["history"], config["saturation"])
        job.resumed = state.get("partial")
        # every process continues its own random streams
        rng = state["rng_ranks"][job.context.rank] if distributed.world_size() > 1 \
            else state["rng"]
        if job.resumed is None:
            checkpoint.set_rng_state(rng)
        else:  # restored once the epoch's loader iterator exists (creating it draws)
            job.resumed_rng = rng
        if job.main:
            print(f"{run.name}: resuming " + (
                f"after epoch {job.start}" if job.resumed is None else
                f"epoch {job.start + 1} after {job.resumed['batches']} of "
                f"{job.batches} batches"), file=sys.stderr, flush=True)
    elif distributed.world_size() > 1:  # the same weights everywhere, other dropout masks
        torch.manual_seed(config["seed"] * 7919 + job.context.rank)
    if job.main:
        runinfo.append_provenance(run.directory, job.start + 1, str(job.device),
                                  job.registries.plugin_versions, torch.__version__)
    job.evaluated = eval_module_name(job.method)
    # mirrored to the spec's experiment trackers by the writing process only
    job.trackers = Trackers({spec["name"]: build_component(job.registries, "loggers", spec,
                                                           run=run)
                             for spec in (config["loggers"] if job.main else [])})


# --- phase 3: one epoch of training (continuing a mid-epoch checkpoint's)

def train_epoch(job: Job, epoch: int) -> dict[str, Any]:
    """Train epoch ``epoch``; returns its log row so far (epoch, lr, train columns,
    training-pass saturation). Writes mid-epoch checkpoints when they are due."""
    config, started = job.config, time.perf_counter()
    metrics = make_metrics(job.registries, config["metrics"], job.data.num_classes)
    position, on_start = EpochPosition(), None
    epoch_order = job.order.get_state()  # the state the epoch's order is drawn from
    lr = job.optimizer.param_groups[0]["lr"]
    resumed = job.resumed
    if resumed is not None:  # continue the epoch a mid-epoch checkpoint stopped in
        position = EpochPosition(resumed["batches"], float(resumed["loss_sum"]),
                                 int(resumed["seen"]), float(resumed["seconds"]))
        for name, metric in metrics.items():
            metric.load_state_dict(resumed["metrics"][name])
        epoch_order, lr = resumed["data_order"], float(resumed["lr"])
        job.order.set_state(epoch_order)
        job.sampler.start = position.batches * config["batch_size"]
        on_start = functools.partial(checkpoint.set_rng_state, job.resumed_rng)

    def save_midway(at: EpochPosition) -> None:
        if not job.midway.due():
            return
        partial = {"batches": at.batches, "loss_sum": at.loss_sum, "seen": at.seen,
                   "seconds": at.seconds + time.perf_counter() - started,
                   "metrics": {name: m.state_dict() for name, m in metrics.items()},
                   "saturation": job.saturation.pass_state(), "data_order": epoch_order,
                   "lr": lr}
        checkpoint.save_partial(job.checkpoints, job.context.step,
                                {**job.snapshot(epoch - 1, [checkpoint.rng_state()]),
                                 "partial": partial})
        job.midway.saved()

    with job.saturation.track(TRAIN_PASS, job.model):
        if resumed is not None:
            job.saturation.load_pass_state(resumed["saturation"])
            job.resumed = None
        stats = train_one_epoch(
            job.method, job.train_loader, job.stepper, metrics, job.device, epoch,
            job.progress, position, job.batches,
            save_midway if job.midway.enabled else None,
            channels_last if config["channels_last"] else None, on_start, job.mixer)
        job.saturation.all_reduce()  # the covariances of every process's shards
    distributed.broadcast_buffers(list(job.method.modules().values()))
    job.epoch_started, job.epoch_seconds = started, position.seconds
    row: dict[str, Any] = {"epoch": epoch, "lr": lr}
    row.update({f"train-{k}": v for k, v in stats.items()})
    row.update(job.saturation.columns(TRAIN_PASS))
    return row


# --- phase 4: evaluate every eval split

def evaluate_epoch(job: Job, row: dict[str, Any]) -> None:
    """Close the epoch in the method (its extra columns), then score the evaluated
    network on every eval split; adds the columns and the epoch's time to ``row``."""
    extra = job.method.end_epoch(row["epoch"])
    job.method.train(False)
    for split, loader in job.eval_loaders.items():
        with job.saturation.track(split, job.method.eval_model()):
            stats = evaluate(job.method.eval_model(), loader,
                             make_metrics(job.registries, job.config["metrics"],
                                          job.data.num_classes), job.device)
        row.update({f"{split}-{k}": v for k, v in stats.items()})
        row.update(job.saturation.columns(split))
    row.update(extra)
    row["epoch_seconds"] = job.epoch_seconds + time.perf_counter() - job.epoch_started


# --- phase 5: end of the epoch: schedule, best epoch, spectra, checkpoint, log

def end_epoch(job: Job, epoch: int, row: dict[str, Any]) -> None:
    """Step an epoch schedule, keep the row, track the best epoch; the writing process
    then saves the spectra, the best and the epoch checkpoint, log.csv, the status and
    the trackers' row."""
    config = job.config
    note(epoch_line(subject() or job.run.name, epoch, job.last_epoch, row,
                    [TRAIN_PASS, *job.eval_loaders], config["metrics"][:1]), job.progress)
    if job.scheduler is not None and not job.per_step:
        job.scheduler.step()
    job.history.append(row)
    rngs = distributed.gather(checkpoint.rng_state())
    improved = is_better(row, job.best, config["best_metric"], config["best_mode"])
    if improved:
        job.best = best_record(row, config)
    job.midway.saved()
    if not job.main:
        return
    run_dir = job.run.directory
    # before the checkpoint: a run killed in between redoes the epoch, its spectra and
    # its best checkpoint
    if job.saturation.passes:
        save_spectra(spectra_path(run_dir, epoch), job.saturation.epoch_spectra())
    state = job.snapshot(epoch, rngs)
    if improved:
        checkpoint.save_best(job.checkpoints, state)
    saved = checkpoint.save(job.checkpoints, epoch, state, keep=config["keep_checkpoints"])
    if epoch == job.last_epoch and config["steps"] is not None:
        runinfo.mark_final(job.run, saved)
    runinfo.write_log(job.run, job.history)
    runinfo.write_status(run_dir, "running", epoch=epoch, best=job.best,
                        epochs=job.last_epoch)
    job.trackers.log_epoch(epoch, row)


def epoch_line(name: str, epoch: int, last: int, row: dict[str, Any], splits: list[str],
               metrics: list[str]) -> str:
    """One console line per epoch: loss and the first metric of every pass, and time."""
    parts = [f"{split} loss {row[f'{split}-loss']:.4f}"
             + "".join(f" {m} {row[f'{split}-{m}']:.4f}" for m in metrics
                       if f"{split}-{m}" in row)
             for split in splits if f"{split}-loss" in row]
    return f"{name} epoch {epoch}/{last}: " + ", ".join(parts) + f" ({row['epoch_seconds']:.1f} s)"



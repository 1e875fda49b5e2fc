"""The training engine: one run, from config to finished directory.

Read top to bottom: build everything from the resolved config, restore the newest
intact checkpoint, then per epoch train, evaluate every eval split, log, checkpoint.
The per-epoch log rows live inside the checkpoint and the CSV is rewritten from them,
so the CSV never disagrees with the weights a resume starts from.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from labkit import checkpoint, distributed, runinfo
from labkit.atomic import write_json, write_text
from labkit.errors import DamagedFile, UserError
from labkit.build import build_component, build_scheduler, make_metrics, seed_everything
from labkit.data.device_loader import device_loader
from labkit.data.mixing import batch_mixer, hard_labels
from labkit.data.seeded import (AUGMENT_DRAWS, SeededSampler, SeededSamples, ShardedBatches,
                                 check_draws)
from labkit.evaluation import evaluate, to_device
from labkit.figures import run_figures
from labkit.identity import RunConfig
from labkit.loggers import Trackers
from labkit.methods.base import Method, RunContext
from labkit.progress import quiet_bars
from labkit.readers import read_json
from labkit.registry import Registries
from labkit.schedules import value_at
from labkit.saturation import (TRAIN_PASS, SaturationConfig, SaturationTracker, load_spectra,
                               plot_saturation, save_spectra, spectra_path, view_columns)


def flops_per_image(model: torch.nn.Module, in_channels: int, resolution: int,
                    device: torch.device) -> int:
    """Forward FLOPs of one image, counted by torch's own FLOP counter (eval mode)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, resolution, resolution, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def trained_samples(samples: int, batches: int, batch_size: int, steps_per_epoch: int,
                    total_steps: int, accumulate: int) -> int:
    """Samples the run's ``total_steps`` optimizer steps see: whole epochs of
    ``samples`` (less those a dropped last batch leaves out), then the first batches
    of the epoch the step budget ends in."""
    per_epoch = min(samples, batches * batch_size)
    epochs, steps = divmod(total_steps, steps_per_epoch)
    return epochs * per_epoch + min(per_epoch, steps * accumulate * batch_size)


def write_computational_info(run_dir: Path, model: torch.nn.Module, data: Any,
                             device: torch.device, epochs: int, steps: int,
                             samples: int) -> None:
    """Write ``computational_info.json`` unless it holds exactly this already.

    ``epochs``, ``steps``, ``samples``: the epochs, optimizer steps and training
    samples the run trains (under a ``steps`` budget, fewer than the config's epochs
    give). Training FLOPs use the usual convention backward ≈ 2 × forward, so one
    training sample costs 3 × forward FLOPs.
    """
    per_image = flops_per_image(model, data.in_channels, data.resolution, device)
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_image": per_image,
        "train_samples": len(data.train),
        "epochs": epochs,
        "steps": steps,
        "trained_samples": samples,
        "training_flops": 3 * per_image * samples,
    }
    path = Path(run_dir) / runinfo.COMPUTE_JSON
    try:
        if read_json(path) == info:
            return
    except DamagedFile:  # replaced
        pass
    write_json(path, info)


class RunFailed(Exception):
    """The run cannot go on (non-finite loss, …); the reason goes to the status file."""


def scaled_lr(config: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's spec with ``lr`` scaled by ``batch_size × accumulate / 256`` when
    the config's ``lr_scaling`` is ``linear`` (the rule of Goyal et al. that DINO and timm
    recipes use); unchanged otherwise."""
    spec = dict(config["optimizer"])
    if config["lr_scaling"] == "linear" and "lr" in spec:
        spec["lr"] = spec["lr"] * config["batch_size"] * config["accumulate"] / 256
    return spec


class Stepper:
    """How batch losses become optimizer steps: accumulation, clipping, precision, and the
    run's step clock.

    Args:
        optimizer: the optimizer; parameters: what it optimises (for clipping).
        accumulate: micro-batches per step. Their gradients are summed weighted by
            their sizes and divided by the step's sample count, so a step equals one on
            the micro-batches joined (up to float rounding) when the model has no
            batch statistics.
        clip_grad_norm: clip the gradients' global L2 norm to this; ``None``: off.
        precision: ``"32"``, ``"bf16"`` or ``"16-mixed"`` (autocast of the forward pass;
            16-mixed with a dynamic loss scaler, whose state the checkpoint keeps).
        device: where the run computes.
        method: the training method, whose ``before_optimizer_step`` and ``after_step``
            hooks frame every step; its ``context.step`` is the clock this counts.
        weight_decay: a number or :class:`~labkit.schedules.Schedule` set before each
            step as the weight decay of every parameter group built with a non-zero one
            (a group built with 0, such as DINO's biases and norms, keeps 0; when no
            group has any, of all groups); ``None``: the optimizer's.

    One step: average the accumulated gradients, unscale them (16-mixed),
    ``method.before_optimizer_step()``, clip, set the scheduled weight decay, step the
    optimizer, step a per-step schedule, ``method.after_step()``, count the step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter],
                 accumulate: int, clip_grad_norm: float | None, precision: str,
                 device: torch.device, method: Method, weight_decay: Any = None):
        self.optimizer, self.parameters = optimizer, parameters
        self.accumulate, self.clip = accumulate, clip_grad_norm
        self.device, self.method, self.weight_decay = device, method, weight_decay
        self.dtype = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        self.samples = 0  # of the step being accumulated
        # the groups a weight-decay schedule sets: those built with decay (a method's
        # no-decay group of biases and norms keeps 0), or all when none has any
        self.decayed = ([g for g in optimizer.param_groups if g.get("weight_decay")]
                        or optimizer.param_groups)
        self.scheduler: Any = None  # a learning-rate schedule stepped after every step
        # several processes: each sums its shard's losses; the sums are reduced per step
        self.distributed = distributed.world_size() > 1
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    @property
    def clock(self) -> RunContext:
        """The run context whose ``step``, ``steps_per_epoch``, ``total_steps`` this keeps."""
        return self.method.context

    def autocast(self) -> Any:
        """Context of a forward pass in the run's precision."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor, batch_size: int) -> None:
        """Back-propagate one micro-batch's mean loss."""
        if self.accumulate > 1 or self.distributed:  # summed now; divided by the step's count
            loss = loss * batch_size
        self.scaler.scale(loss).backward()
        self.samples += batch_size
        if self.distributed:
            self.loss_sum += loss.detach().double().cpu()

    def step(self) -> None:
        """The optimizer step of the accumulated micro-batches (of every process).

        Raises:
            RunFailed: the step's loss, summed over the processes, is not finite (all
                processes raise together).
        """
        samples = self.samples
        if self.distributed:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            totals = torch.tensor([float(samples), float(self.loss_sum)], dtype=torch.float64)
            distributed.all_reduce_sum([*grads, totals])
            samples, loss = int(totals[0]), float(totals[1])
            self.loss_sum.zero_()
            if not math.isfinite(loss):
                raise RunFailed(f"non-finite training loss ({loss / samples}) at optimizer step "
                                f"{self.clock.step + 1}; lower the learning rate or check the data")
        if self.accumulate > 1 or self.distributed:
            for p in self.parameters:
                if p.grad is not None:
                    p.grad.div_(samples)
        self.scaler.unscale_(self.optimizer)  # a no-op unless 16-mixed
        self.method.before_optimizer_step()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        if self.weight_decay is not None:
            clock = self.clock
            decay = value_at(self.weight_decay, clock.step, clock.steps_per_epoch,
                             clock.total_steps)
            for group in self.decayed:
                group["weight_decay"] = decay
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.samples = 0
        if self.scheduler is not None:
            self.scheduler.step()
        self.method.after_step()
        self.clock.step += 1


@dataclass
class EpochPosition:
    """Where the epoch in progress stands; a mid-epoch checkpoint stores it.

    Attributes:
        batches: training batches of the epoch done so far.
        loss_sum: sum over the samples seen of their loss; seen: samples seen.
        seconds: training time of the epoch before this process took over.
    """

    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0


def channels_last(batch: Any) -> Any:
    """``batch`` with every 4-d tensor in channels_last memory layout."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: channels_last(v) for k, v in batch.items()}
    return batch


def train_one_epoch(method: Method, loader: DataLoader, stepper: Stepper,
                    metrics: dict[str, Any], device: torch.device, epoch: int,
                    progress: bool, position: EpochPosition | None = None,
                    batches: int | None = None, on_step: Callable[[EpochPosition], None] | None = None,
                    layout: Callable[[Any], Any] | None = None,
                    on_start: Callable[[], None] | None = None,
                    augment: Callable[[Any], Any] | None = None) -> dict[str, float]:
    """One pass over the training set; returns mean loss per sample and metrics.

    Args:
        position: where a resumed epoch stands (its loader already skips the batches
            done); ``None``: from the start.
        batches: batches of the whole epoch (the step boundaries count from its start);
            default ``len(loader)``.
        on_step: called with the position after every optimizer step that neither ends
            the epoch nor the run's step budget (mid-epoch checkpoints).
        layout: applied to every batch on the device (channels_last).
        on_start: called once the loader's iterator exists (a resume restores the RNG
            state there, as creating the iterator draws from it).
        augment: applied to every batch on the device before the step (the spec's
            ``batch_augment``: mixup / cutmix, drawing from torch's global RNG).

    The epoch ends early when the run's step budget (``context.total_steps``) is spent.
    """
    method.train(True)
    position = position or EpochPosition()
    batches = batches or len(loader)
    clock = stepper.clock
    iterator = iter(loader)
    if on_start is not None:
        on_start()
    for batch in tqdm(iterator, desc=f"epoch {epoch} train", leave=False,
                      disable=quiet_bars(progress), total=batches - position.batches):
        batch = to_device(batch, device)
        if augment is not None:
            batch = augment(batch)
        with stepper.autocast():
            result = method.training_step(layout(batch) if layout else batch)
        loss = result.loss.item()
        if not math.isfinite(loss) and not stepper.distributed:  # else: checked summed
            raise RunFailed(f"non-finite training loss ({loss}) at epoch {epoch}, "
                            f"step {position.batches + 1}; lower the learning rate or check "
                            f"the data")
        stepper.backward(result.loss, result.batch_size)
        position.batches += 1
        position.loss_sum += loss * result.batch_size
        position.seen += result.batch_size
        if result.logits is not None:
            for metric in metrics.values():
                metric.update(result.logits.detach().float(), hard_labels(result.targets))
        if position.batches % stepper.accumulate == 0 or position.batches == batches:
            stepper.step()
            if clock.total_steps and clock.step >= clock.total_steps:
                break
            if on_step is not None and position.batches < batches:
                on_step(position)
    totals = reduce_pass(position, metrics)
    stats = {"loss": totals.loss_sum / totals.seen}
    stats.update({name: m.compute() for name, m in metrics.items()})
    return stats


def reduce_pass(position: EpochPosition, metrics: dict[str, Any]) -> EpochPosition:
    """The pass's loss sum and sample count over every process, and each metric's counts
    summed in place (unchanged in a one-process run)."""
    if not distributed.active():
        return position
    states = {name: m.state_dict() for name, m in metrics.items()}
    totals = torch.tensor([position.loss_sum, float(position.seen)], dtype=torch.float64)
    distributed.all_reduce_sum([totals, *(t for s in states.values() for t in s.values())])
    for name, metric in metrics.items():
        metric.load_state_dict(states[name])
    return EpochPosition(position.batches, float(totals[0]), int(totals[1]), position.seconds)


def saturation_view(run_dir: Path, history: list[dict[str, Any]],
                    config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``history`` with its delta-dependent saturation columns recomputed from the stored
    spectra at the requested ``delta`` and ``idim_rule`` (a run trained under other
    values shares the directory: they are not identity). Rows without spectra, or with
    damaged ones (a warning says so), keep the values computed while training."""
    if config is None:
        return history
    sat = SaturationConfig.model_validate(config)
    rows = []
    for row in history:
        try:
            view = view_columns(load_spectra(spectra_path(run_dir, int(row["epoch"]))), sat)
        except DamagedFile as exc:
            warnings.warn(f"{exc}; log.csv keeps the saturation values of epoch "
                          f"{row['epoch']} computed while training", stacklevel=2)
            view = {}
        rows.append({**row, **{k: v for k, v in view.items() if k in row}})
    return rows


def train(run: RunConfig, registries: Registries, device: str = "cpu",
          progress: bool = True) -> str:
    """Train one run to completion (resuming when possible), then run its analyses.

    Returns ``"finished"``, ``"skipped"`` (training was already finished; incomplete
    analyses still run) or ``"failed"``; a failure is recorded with its reason in
    ``status.json`` and does not raise, so a grid goes on. User mistakes (missing
    dataset, …) raise :class:`~labkit.errors.UserError`. When another process is
    working on the run, this waits for it first.

    A run with ``nproc`` above 1 is trained by that many processes: started here like
    ``torchrun --standalone`` would, or, when this process is already one of them (a
    submitit job's tasks, torchrun), as that process's share (:func:`train_as_rank`).
    """
    if distributed.started_as_rank(run.config["nproc"]):
        return train_as_rank(run, registries, device, progress)
    with runinfo.exclusive(run.directory), intra_op_threads(run.config["threads"]):
        return _train_and_analyse(run, registries, device, progress)


def train_as_rank(run: RunConfig, registries: Registries, device: str, progress: bool) -> str:
    """This process's share of a run whose ``nproc`` processes something else started:
    rank 0 holds the run's lock, decides whether it needs training, and afterwards runs
    the analyses alone; the others train and return ``"finished"`` (the run's state is
    rank 0's to report)."""
    device = distributed.init(device)
    try:
        with intra_op_threads(run.config["threads"]):
            if distributed.is_main():
                with runinfo.exclusive(run.directory):
                    distributed.gather(_final_state(run) is None)
                    return _train_and_analyse(run, registries, device, progress)
            if distributed.gather(None)[0]:
                _train(run, registries, torch.device(device), progress=False)
            return "finished"
    finally:
        distributed.shutdown()


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, then restore the previous count.

    CPU results depend on the count (it changes the order of floating-point sums), so
    the run's config fixes it: sequential, ``--jobs`` and resumed runs all agree.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_and_analyse(run: RunConfig, registries: Registries, device: str,
                       progress: bool) -> str:
    run_dir = run.directory
    final = _final_state(run)
    runinfo.write_config(run_dir, run, registries.plugin_versions)  # or repair it
    if final is None:
        runinfo.write_status(run_dir, "running")
        try:
            if run.config["nproc"] > 1 and not distributed.active():
                train_on_processes(run, registries, device, progress)
            else:
                _train(run, registries, torch.device(device), progress)
            distributed.shutdown()  # analyses run in this process alone
        except UserError as exc:  # a mistake found only now (a missing dataset): recorded
            runinfo.write_status(run_dir, "failed", reason=str(exc))
            raise
        except KeyboardInterrupt:
            runinfo.write_status(run_dir, "interrupted", reason="stopped before finishing")
            raise
        except Exception as exc:  # any other failure ends this run only
            reason = str(exc) if isinstance(exc, RunFailed) else f"{type(exc).__name__}: {exc}"
            runinfo.write_status(run_dir, "failed", reason=reason)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            return "failed"
        draw_plots(run, redraw=True)
    elif sync_log(run, final["history"]):
        draw_plots(run, redraw=True)  # the saturation columns were read anew
    else:
        draw_plots(run)
    if runinfo.read_status(run_dir).get("state") != "finished":
        runinfo.write_status(run_dir, "finished",
                             epoch=checkpoint.epoch_of(runinfo.final_checkpoint(run).name))
    failed = run_analyses(run, registries, device, progress=progress).failed
    if failed:
        return "failed"
    return "skipped" if final is not None else "finished"


def train_on_processes(run: RunConfig, registries: Registries, device: str,
                       progress: bool) -> None:
    """Train ``run`` with ``nproc`` processes (see :mod:`labkit.distributed`), started
    like ``torchrun --standalone``; this process holds the run's lock meanwhile and runs
    the analyses afterwards.

    Raises:
        UserError: the registries cannot be rebuilt in another process, or a process
            met a user mistake (its message).
        RunFailed: a process failed (the reason the run's status records).
    """
    if registries.rebuild is None:
        raise UserError("these registries hold components registered in this process only, "
                        "which other processes cannot see; train with nproc 1, or register "
                        "the plugin through an entry point")
    try:
        distributed.launch(_rank_main, run.config["nproc"], run.config, run.run_id, device,
                           progress, registries.rebuild)
    except ChildFailedError as exc:
        status = runinfo.read_status(run.directory)
        if status.get("state") == "failed" and status.get("reason"):
            if status.get("mistake"):
                raise UserError(status["reason"]) from None
            raise RunFailed(status["reason"]) from None
        first = next(iter(exc.failures.values()), None)
        raise RunFailed(f"a training process failed: {first.message if first else exc}") from None


@record
def _rank_main(config: dict[str, Any], run_id: str, device: str, progress: bool,
               rebuild: Callable[[], Registries]) -> None:
    """One process of a run on several: join the group, train, leave. Rank 0 records
    a failure's reason in the run's status (``mistake`` for a user mistake)."""
    run = RunConfig(config, run_id)
    try:
        device = distributed.init(device)
        with intra_op_threads(config["threads"]):
            _train(run, rebuild(), torch.device(device), progress and distributed.is_main())
    except Exception as exc:  # noqa: BLE001 - recorded; the launcher reports the run failed
        if distributed.is_main():
            reason = str(exc) if isinstance(exc, (RunFailed, UserError)) else \
                f"{type(exc).__name__}: {exc}"
            runinfo.write_status(run.directory, "failed", reason=reason,
                                 mistake=isinstance(exc, UserError))
            if not isinstance(exc, UserError):
                (run.directory / "error.txt").write_text(traceback.format_exc())
        raise SystemExit(2 if isinstance(exc, UserError) else 1) from None
    finally:
        distributed.shutdown()


def _final_state(run: RunConfig) -> dict[str, Any] | None:
    """The verified final checkpoint of a trained run; ``None`` when the run is not
    trained (no final checkpoint, or a damaged one: the last epoch is then retrained
    from the previous checkpoint, which exact resume makes identical).

    Raises:
        UserError: the final checkpoint belongs to another run (copied files).
    """
    path = runinfo.final_checkpoint(run)
    if not path.exists():
        return None
    try:
        state = checkpoint.read(path)
    except ValueError as exc:
        print(f"{run.name}: final checkpoint unusable ({exc}); retraining its last epoch",
              file=sys.stderr, flush=True)
        return None
    _check_owner(run, state, path)
    return state


def _check_owner(run: RunConfig, state: dict[str, Any], path: Path) -> None:
    owner = state.get("run_hash", run.hash)  # checkpoints before 0.2 carry none
    if owner != run.hash:
        raise UserError(f"{path} was written by run {owner}, not by this run ({run.hash}); "
                        f"the directory holds files of another run: move them away")


def sync_log(run: RunConfig, history: list[dict[str, Any]]) -> bool:
    """Rewrite log.csv from the checkpointed ``history`` (saturation columns read at the
    requested delta and rule) whenever the file on disk differs: missing, truncated, a
    crash before its last row, edited. Returns whether it was rewritten."""
    return write_log(run, saturation_view(run.directory, history, run.config["saturation"]))


def write_log(run: RunConfig, rows: list[dict[str, Any]]) -> bool:
    """Atomically replace log.csv with ``rows`` unless it already holds exactly them."""
    path = run.directory / runinfo.LOG_CSV
    text = pd.DataFrame(rows).to_csv(index=False)
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True


def draw_plots(run: RunConfig, redraw: bool = False) -> None:
    """The run's figures from log.csv, drawn after training rather than inside the epoch
    loop, so figures never slow training down: the per-run figures of
    :func:`labkit.figures.run_figures` (learning curves, saturation over epochs, …) and
    the per-epoch saturation plots (``plots/saturation_epoch_NNNN.png``). Only missing
    ones are drawn unless ``redraw``."""
    config = run.config["saturation"]
    plots = run.directory / "plots"
    if redraw or not (plots / "learning_curves.png").exists():
        run_figures(run.directory, plots, f"run {run.name}")
    if config is None or "lsat" not in SaturationConfig.model_validate(config).stats:
        return
    log = runinfo.read_log(run.directory)  # just synced with the final checkpoint's history
    for _, row in log.iterrows() if log is not None else ():
        path = run.directory / "plots" / f"saturation_epoch_{int(row['epoch']):04d}.png"
        if redraw or not path.exists():
            plot_saturation(row, path)


def is_better(row: dict[str, Any], best: dict[str, Any] | None, metric: str | None,
              mode: str) -> bool:
    """Whether ``row`` beats the best epoch so far on ``metric`` (``None``: no tracking).

    Raises:
        UserError: ``metric`` is no column of the log (lists the columns).
    """
    if metric is None:
        return False
    if metric not in row:
        raise UserError(f"best_metric {metric!r} is not a log column; choose one of "
                        f"{', '.join(k for k in row if k != 'epoch')}")
    value = float(row[metric])
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if mode == "max" else value < best["value"]


def best_so_far(best: dict[str, Any] | None, history: list[dict[str, Any]],
                config: dict[str, Any]) -> dict[str, Any] | None:
    """The best epoch a resumed run goes on from: the checkpoint's ``best`` when it was
    chosen by the config's ``best_metric`` and ``best_mode``, else the best of
    ``history`` by them (``best.pt`` then stays the old choice, which analyses refuse,
    until a later epoch beats it)."""
    if best is None or runinfo.best_mismatch(best, config) is not None:
        best = None
        for row in history:
            if is_better(row, best, config["best_metric"], config["best_mode"]):
                best = best_record(row, config)
    return best


def best_record(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The ``best`` record of the epoch of log ``row`` (checkpoints, ``status.json``):
    its epoch, the value of ``best_metric``, and the metric and mode it was chosen by."""
    return {"epoch": row["epoch"], "metric": config["best_metric"],
            "value": float(row[config["best_metric"]]), "mode": config["best_mode"]}


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


class AnalysesRun(list):
    """Names of the analyses that ran; ``failed`` lists ``(label, reason)`` of failures."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str]] = []


def run_analyses(run: RunConfig, registries: Registries, device: str = "cpu",
                 progress: bool = True) -> AnalysesRun:
    """Run the spec's analyses on a trained run; returns the names of those that ran.

    An analysis whose outputs are complete is skipped. Each records its own state in
    ``analyses.json``; one that fails (any error but a user mistake, which raises) is
    recorded there with its reason, the others still run, and the training state stays
    as it is.
    """
    from labkit.analyses import FinishedRun

    finished = FinishedRun(run, registries, device)
    done = AnalysesRun()
    names = [spec["name"] for spec in run.config["analyses"]]
    for spec in run.config["analyses"]:
        analysis = build_component(registries, "analyses", spec, run=finished)
        label = spec["name"]
        if names.count(label) > 1:  # e.g. probes at two downsamplings: tell them apart
            label += " " + json.dumps({k: v for k, v in spec.items() if k != "name"},
                                      sort_keys=True)
        if analysis.is_complete():
            runinfo.confirm_analysis(run.directory, label)  # a damaged analyses.json is rebuilt
            continue
        try:
            analysis.produce(progress)
        except UserError as exc:
            runinfo.write_analysis_state(run.directory, label, "failed", str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, and the next analysis runs
            reason = f"{type(exc).__name__}: {exc}"
            print(f"error: {run.directory}: analysis {label} failed: {reason}",
                  file=sys.stderr, flush=True)
            runinfo.write_analysis_state(run.directory, label, "failed", reason)
            (run.directory / "error.txt").write_text(traceback.format_exc())
            done.failed.append((label, reason))
            continue
        runinfo.write_analysis_state(run.directory, label, "finished")
        done.append(spec["name"])
    return done


def _train(run: RunConfig, registries: Registries, device: torch.device, progress: bool) -> None:
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
    phase functions of :func:`_train`."""

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
    bar: Any = None  # the epochs' progress bar
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
        return iter(self.bar)

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
    segment's provenance and start the epochs' progress bar and trackers."""
    run, config = job.run, job.config
    state = checkpoint.load_latest(job.checkpoints)
    if state is not None:
        _check_owner(run, state, job.checkpoints)
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
    job.bar = tqdm(range(job.start + 1, job.last_epoch + 1), desc=run.name,
                   disable=quiet_bars(job.progress))


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
    if job.progress:
        job.bar.write(epoch_line(job.run.name, epoch, job.last_epoch, row,
                                 [TRAIN_PASS, *job.eval_loaders], config["metrics"][:1]),
                      file=sys.stderr)
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
    write_log(job.run, job.history)
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


def loader_options(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader settings of the run's device: on CUDA, pinned host memory (batches are
    copied with ``non_blocking``) and, with workers, workers kept between epochs (their
    base seed from a private generator: torch's own stays untouched, and the seeded
    samples make the workers' seeds irrelevant); elsewhere torch's defaults."""
    if device.type != "cuda":
        return {"num_workers": workers}
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": True}
    if workers:
        options.update(persistent_workers=True, generator=torch.Generator().manual_seed(0))
    return options


class MidEpochCheckpoints:
    """When to write a mid-epoch checkpoint: after every ``checkpoint_steps``-th optimizer
    step of the run (its step count a multiple of N, on ``clock``, so a resume keeps the
    schedule) and/or when ``checkpoint_minutes`` passed since the last checkpoint of any
    kind. A step that ends an epoch gets the epoch's checkpoint instead."""

    def __init__(self, config: dict[str, Any], clock: RunContext):
        self.every, self.minutes = config["checkpoint_steps"], config["checkpoint_minutes"]
        self.enabled = self.every is not None or self.minutes is not None
        self.clock = clock
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether a checkpoint is due after the optimizer step just taken."""
        if self.every is not None and self.clock.step % self.every == 0:
            return True
        return self.minutes is not None and time.monotonic() - self.last >= 60 * self.minutes

    def saved(self) -> None:
        """A checkpoint was just written: the minutes count from now."""
        self.last = time.monotonic()


def check_checkpointable(metrics: dict[str, Any]) -> None:
    """Mid-epoch checkpoints store every metric's counts.

    Raises:
        UserError: a metric without ``state_dict``/``load_state_dict`` (names it).
    """
    for name, metric in metrics.items():
        if not (hasattr(metric, "state_dict") and hasattr(metric, "load_state_dict")):
            raise UserError(f"metric {name!r} cannot be checkpointed mid-epoch (it has no "
                            f"state_dict/load_state_dict); drop checkpoint_steps and "
                            f"checkpoint_minutes from the spec or leave the metric out")

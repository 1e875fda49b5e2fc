"""The spec's schema: one run's settings as pydantic models (:class:`Spec`), and the JSON
schema editors complete specs from (:func:`json_schema`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labkit.core.registry import Seed
from labkit.spec.batch_augment import CutMix, Mixup
from labkit.spec.saturation import SaturationConfig
from labkit.store.identity import folder_name_problem
from labkit.training.schedules import Scheduled


class LauncherConfig(BaseModel):
    """The spec's ``launcher`` section; command-line options override each field."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["local", "slurm", "submitit-local"] = Field(
        "local", description="local: this machine (see jobs); slurm: one submitit job array "
                             "per grid; submitit-local: the same job array run locally by "
                             "submitit (to try the cluster path)")
    jobs: int = Field(1, ge=1, description="local: runs trained in parallel worker processes")
    partition: str | None = Field(None, description="slurm partition")
    gpus_per_task: int = Field(0, ge=0, description="GPUs per task (one task = one run)")
    cpus_per_task: int = Field(2, ge=1, description="CPU cores per task")
    mem_gb: float | None = Field(None, description="memory per task, GiB")
    time: int = Field(60, ge=1, description="time limit per task in minutes; on timeout the "
                                            "task is requeued and resumes from its checkpoint")
    array_parallelism: int = Field(32, ge=1, description="tasks of the array running at once")
    max_requeues: int = Field(3, ge=0, description="timeouts after which a task gives up")


class Component(BaseModel):
    """A registered component chosen by ``name``; every other key is a parameter."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="registered name (see `labkit list KIND`)")

    @property
    def params(self) -> dict[str, Any]:
        """The component's parameters (every key but ``name``)."""
        return dict(self.model_extra or {})


def _component_field(kind: str, default: Any = ..., description: str = "") -> Any:
    return Field(default, description=description, json_schema_extra={"registry": kind})


def as_component(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Spec(BaseModel):
    """One run's settings; a spec file holds this with lists as grid axes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("experiment", description="label of the spec, one folder name (`plot` "
                                                "and `report` name their outputs by it): no "
                                                "`/` or `\\`, not `.` or `..`, no control "
                                                "character, at most 100 characters; not part "
                                                "of run identity")
    model: Component = _component_field(
        "models", description="the network to train: a name or `{\"name\": …, params}`; "
                              "every run has one (`labkit list models`)")
    dataset: Component = _component_field(
        "datasets", Component(name="digits"), "data set with its params (`resolution`, "
                                              "`augment`, …)")
    method: Component = _component_field(
        "methods", Component(name="supervised"), "training method, the owner of the training "
                                                 "step (`label_smoothing` for `supervised`; "
                                                 "plugins add distillation, DINO, stitching)")
    optimizer: Component = _component_field(
        "optimizers", Component(name="sgd"), "optimizer with its params (`lr`, …; `sgd` has "
                                             "PHD-LAB's defaults)")
    scheduler: Component | None = _component_field(
        "schedulers", None, "learning-rate schedule, stepped once per epoch (or per optimizer "
                            "step, see `scheduler_interval`): `step`, `multistep`, `cosine`, "
                            "`warmup` (linear warm-up then constant), and PHD-LAB's presets "
                            "`lrs` (StepLR every 10 epochs, γ 0.1) and `lrs60` (every 20 "
                            "epochs); every schedule but the presets takes `warmup_epochs`, "
                            "`warmup_steps` (optimizer steps; needs the per-step interval) and "
                            "`warmup_start`; `step_size`, `milestones` and `warmup_epochs` "
                            "count epochs under either interval; null: constant")
    epochs: int = Field(30, ge=1, description="number of training epochs")
    batch_size: int = Field(128, ge=1, description="training batch size (of one micro-batch "
                                                   "when accumulating)")
    accumulate: int = Field(
        1, ge=1, description="micro-batches per optimizer step: their gradients are summed "
                             "weighted by size and divided by the step's sample count, and "
                             "each sample's augmentation is drawn from its own seed wherever "
                             "it sits, so a step equals one on the joined batch up to float "
                             "rounding, random augmentation included (tested: `crop` and "
                             "`flip_crop`, both loaders; max |Δw| ≈ 3e-8 for mlp_s on digits; "
                             "rarely a rounding difference lands on a ReLU's kink and grows, "
                             "to 8e-4 in one case seen). Not equal with BatchNorm (statistics "
                             "per micro-batch), dropout (masks drawn per micro-batch), "
                             "`batch_augment` (each micro-batch mixed within itself), or when "
                             "the split's size leaves a last micro-batch of one sample "
                             "(dropped); part of identity")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the global L2 norm of the gradients to this before "
                                "each optimizer step; null: no clipping; part of identity")
    precision: Literal["32", "bf16", "16-mixed"] = Field(
        "32", description="32: float32; bf16: bfloat16 autocast of the forward pass; "
                          "16-mixed: float16 autocast with a dynamic loss scaler "
                          "(checkpointed for exact resume); evaluation runs in float32; "
                          "part of identity: the numbers change")
    seed: Seed = Field(0, description="seeds weights, data order and augmentation; 0 ≤ seed "
                                      "< 2³² (numpy's range), as every seed parameter of "
                                      "labkit and its plugins")
    metrics: list[str] = Field(
        ["accuracy", "top5_accuracy", "mcc", "balanced_accuracy"],
        description="metrics logged per epoch for the train pass and every eval split (the "
                    "mean loss per sample is always logged)",
        json_schema_extra={"registry": "metrics"})
    saturation: SaturationConfig | None = Field(
        None, description="layer saturation on the train pass and every eval pass (delve's "
                          "definitions, accumulated over all batches); `{}` tracks with the "
                          "defaults; null: off. Part of run identity except `delta` and "
                          "`idim_rule`, which are read from the stored spectra; see "
                          "docs/saturation.md")
    analyses: list[Component] = Field(
        [], description="post-training analyses, each a name or `{\"name\": …, params}`, run "
                        "after training in the order given and skipped once complete: "
                        "`receptive_field`, `latents`, `probes`, `intrinsic_dimension`, "
                        "`projection`, `saturation`, `evaluate` (another data set), and the "
                        "plugins'; not part of "
                        "identity (their outputs are named by their own params)",
        json_schema_extra={"registry": "analyses"})
    loggers: list[Component] = Field(
        [], description="experiment trackers that mirror each epoch's log row: "
                        "`\"tensorboard\"` (event files in `<run>/tensorboard/`, one scalar "
                        "per column, e.g. `train/loss`; `pip install \"labkit[tensorboard]\"`), "
                        "or a plugin's (W&B, MLflow, … registered as kind `loggers`); "
                        "`log.csv` stays the source of truth and a failing tracker only "
                        "warns; not part of identity",
        json_schema_extra={"registry": "loggers"})
    logs_dir: str = Field("logs", description="root of run directories; not part of identity")
    device: str = Field("cpu", description="torch device: `cpu`, `cuda`, `cuda:N` or `mps` "
                                           "(`--device` overrides it); `plan` and `run "
                                           "--dry-run` check that this machine has it when "
                                           "the launcher is local; not part of identity")
    eval_batch_size: int = Field(512, ge=1, description="batch size of evaluation passes; not part of identity")
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes; not part of identity: every "
                             "sample's augmentation is seeded on its own, so any worker "
                             "count trains the same weights")
    scheduler_interval: Literal["epoch", "step"] = Field(
        "epoch", description="step the learning-rate schedule after every epoch, or "
                             "(`\"step\"`) after every optimizer step: it then spans the run's "
                             "optimizer steps, and its epoch-counted params (`warmup_epochs`, "
                             "`step_size`, `milestones`) are multiplied by the steps per "
                             "epoch; part of identity")
    lr_scaling: Literal["none", "linear"] = Field(
        "none", description="linear: the optimizer's lr times batch_size × accumulate / 256; "
                            "part of identity")
    best_metric: str | None = Field(
        None, description="a `log.csv` column (e.g. `\"eval-accuracy\"`, or `\"eval-loss\"` "
                          "with `best_mode` `\"min\"`) whose best epoch is kept as "
                          "`checkpoints/best.pt`, recorded in `status.json`; `plan` refuses a "
                          "name that is no column of the run's log; null: none; not part of "
                          "identity")
    best_mode: Literal["max", "min"] = Field(
        "max", description="whether the best epoch has the largest or smallest best_metric")
    analysis_checkpoint: Literal["final", "best"] = Field(
        "final", description="which network the analyses read: the final epoch's, or "
                             "(`\"best\"`, needs a `best_metric`) `best.pt`; not part of "
                             "identity")
    threads: int = Field(
        1, ge=1, description="torch intra-op CPU threads the run trains and evaluates with; "
                             "part of identity, because CPU results depend on it (the "
                             "order of floating-point sums); set it to the cores a run may "
                             "use (each `--jobs` worker uses its run's value)")
    steps: int | None = Field(
        None, ge=1, description="optimizer-step budget: training ends after min(epochs × "
                                "steps per epoch, steps) steps (the last epoch may be cut "
                                "short, logged as that epoch; `checkpoints/final.txt` names "
                                "the final checkpoint); schedules span the budget; null: all "
                                "epochs; part of identity")
    weight_decay_schedule: Scheduled | None = Field(
        None, description="the weight decay per optimizer step: a number or `{\"shape\": "
                          "\"cosine\", \"start\": 0.04, \"end\": 0.4}` (a ramp, below); set on "
                          "every parameter group built with weight decay (a method's no-decay "
                          "group keeps 0); null: the optimizer's own `weight_decay`; part of "
                          "identity")
    checkpoint_steps: int | None = Field(
        None, ge=1, description="also checkpoint mid-epoch after every this many optimizer "
                                "steps of the run (global steps N, 2N, …, across epochs and "
                                "resumes, so N may exceed an epoch's steps; a step that ends an "
                                "epoch gets the epoch's checkpoint instead): "
                                "`checkpoints/partial_<step>.pt`, each written whole before the "
                                "previous one is removed, all removed at the epoch's end; a run "
                                "killed mid-epoch resumes there and ends bit-identical on CPU "
                                "to one never interrupted (metrics, loss sums, saturation sums "
                                "and RNG included); not with `nproc` > 1 yet; null: epoch ends "
                                "only; not part of identity")
    checkpoint_minutes: float | None = Field(
        None, gt=0, description="also checkpoint mid-epoch when this many minutes passed since "
                                "the last checkpoint; null: off; not part of identity")
    keep_checkpoints: int = Field(
        2, ge=1, description="epoch checkpoints kept: the newest this many intact ones (best.pt "
                             "and the final one are never removed); not part of identity")
    channels_last: bool = Field(
        False, description="keep the network's weights and the batches in channels_last "
                           "memory layout (faster convolutions on GPUs with tensor cores); "
                           "part of identity: kernels differ, so do the last bits")
    compile: bool = Field(
        False, description="train through `torch.compile` (`nn.Module.compile`, so "
                           "checkpoints keep their keys; needs a C++ compiler on CPU, Triton "
                           "on GPU; the first epoch pays the compilation); part of identity: "
                           "fused kernels round differently")
    nproc: int = Field(
        1, ge=1, description="processes that train each run together (torch.distributed: one "
                             "per GPU with NCCL, or CPU processes with gloo); each computes "
                             "batch_size / nproc samples of every batch, so `batch_size` must "
                             "divide by it (docs/guide/scaling.md); part of identity above 1 "
                             "(BatchNorm statistics are per process, and sums are ordered "
                             "otherwise)")
    data_loader: Literal["torch", "device"] = Field(
        "torch", description="torch: torchvision's per-image transforms in DataLoader "
                             "workers; device: the whole training set held on the run's "
                             "device and augmented per batch there (flip, padded crop, "
                             "translate, cutout, normalise; each image's draws from its own "
                             "seed, same order as the DataLoader, exact resume) — for small "
                             "data sets on a GPU; refuses transforms it cannot batch (the "
                             "`imagenet` preset); part of identity: the augmentation draws "
                             "differ")
    batch_augment: Mixup | CutMix | list[Mixup | CutMix] | None = Field(
        None, description="mixup / cutmix of every training batch, for any method that "
                          "accepts soft targets (`supervised` does; others are refused with a "
                          "message): `{\"name\": \"mixup\", \"alpha\": 0.2, \"prob\": 1.0}` "
                          "(x̃ = λx + (1−λ)x[π], λ ~ Beta(α, α)), `{\"name\": \"cutmix\", "
                          "\"alpha\": 1.0, \"prob\": 1.0}` (a box of x[π], λ its exact "
                          "complement share), or a list of them, one drawn per batch (a list "
                          "of lists is a grid axis); the targets become λ·onehot(y) + "
                          "(1−λ)·onehot(y[π]), train metrics score their argmax; draws from "
                          "torch's checkpointed RNG (exact resume, mid-epoch too); null: off; "
                          "part of identity, left out at null so older runs keep their hash "
                          "(docs/methods.md)")
    launcher: LauncherConfig = Field(
        LauncherConfig(), description="where the runs execute (local workers, slurm job "
                                      "array); command-line options win; not part of identity")

    @field_validator("model", "dataset", "method", "optimizer", "scheduler", mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return as_component(value)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        problem = folder_name_problem(value)
        if problem:  # plot, report and the stitch tables name files and folders by it
            raise ValueError(f"the spec's name becomes a folder and file name, but {problem}; "
                             f"give a short label (letters, digits, '-', '_', '.')")
        return value

    @field_validator("logs_dir")
    @classmethod
    def _a_usable_folder(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("give the folder runs are written under, e.g. \"logs\"")
        if Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"{value} is a file, not a folder; give a folder")
        return value

    @model_validator(mode="after")
    def _processes_can_share_the_run(self) -> "Spec":
        if self.nproc == 1:
            return self
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} does not split into {self.nproc} "
                             f"equal shards; give a batch_size divisible by nproc {self.nproc}")
        if self.checkpoint_steps or self.checkpoint_minutes:
            raise ValueError("mid-epoch checkpoints are not supported with nproc > 1 yet; drop "
                             "checkpoint_steps / checkpoint_minutes or set nproc to 1")
        if self.data_loader == "device":
            raise ValueError("data_loader \"device\" does not shard across processes yet; set "
                             "\"data_loader\": \"torch\" or nproc to 1")
        return self

    @model_validator(mode="after")
    def _best_needs_a_metric(self) -> "Spec":
        if self.analysis_checkpoint == "best" and self.best_metric is None:
            raise ValueError("analysis_checkpoint \"best\" reads the best_metric's best epoch, "
                             "but best_metric is null; name a log column in best_metric "
                             "(e.g. \"eval-accuracy\") or set analysis_checkpoint to \"final\"")
        return self

    @field_validator("analyses", "loggers", mode="before")
    @classmethod
    def _names_only(cls, value: Any) -> Any:
        return [as_component(v) for v in value] if isinstance(value, list) else value


# ---------------------------------------------------------------- grid expansion

def json_schema() -> dict[str, Any]:
    """The JSON schema of a spec file, for editors and validators: a component may be
    written as its name alone, and any field (also inside ``saturation``, ``launcher``,
    a schedule, or a component's ``name``) may be a list of values, a grid axis.
    A component's parameters stay open: the registry checks them (``labkit plan``)."""
    schema = Spec.model_json_schema()
    defs = schema.get("$defs", {})
    if "Component" in defs:
        component = defs["Component"]
        component["properties"]["name"] = _axis(component["properties"]["name"])
        defs["Component"] = {"anyOf": [{"type": "string"}, component],
                             "description": component.get("description", "")}
    for holder in [schema, *(d for d in defs.values() if "properties" in d)]:
        holder["properties"] = {name: _axis(field) for name, field in holder["properties"].items()}
    return schema


def _axis(field: dict[str, Any]) -> dict[str, Any]:
    """``field``'s schema, or a non-empty list of such values (a grid axis)."""
    text = {k: field[k] for k in ("description", "default", "title") if k in field}
    value = {k: v for k, v in field.items() if k not in text}
    return {**text, "anyOf": [value, {"type": "array", "items": value, "minItems": 1}]}

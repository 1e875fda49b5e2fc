"""The ``dino`` method: self-distillation from a random, EMA or previous-epoch teacher.

Networks (see :mod:`labkit_dino.networks`): the student is the run's model (the engine
builds it from the spec's ``model``) with a DINO head; the teacher is built from the same
model (or ``teacher_model``, or the ``init_run``'s model) with its own head and seed. Both
encoders keep their classifier layer (``fc``, ``heads.head``, …: ``embedding_from``) as a
linear probe of their embeddings, refitted at every probing epoch, so

* ``modules["model"]`` of a checkpoint is the student as a classifier: the registry
  model's layers and keys, with its linear probe as classifier; layer analyses run on it;
* the engine's eval columns (``eval-loss``, ``eval-accuracy``, …) score that classifier:
  they are the student's linear probe, refitted every ``probe_every`` epochs (between
  probing epochs the previous probe is applied to the newer embeddings; before the
  first one every logit is 0).

Per optimizer step ``s`` (values of schedules at ``s``, :func:`labkit.api.value_at`):
the teacher's logits ``(proj_t - c_t) / τ_t`` of the global views are the targets of the
student's logits ``(proj_s - c_s) / τ_s`` of all views (:mod:`labkit_dino.losses`); the
centres then move, ``c ← m_c c + (1 - m_c) · mean(proj)``; once the step's gradients are
complete the last layer's are dropped while it is frozen (:meth:`Dino.before_optimizer_step`),
then the engine clips the rest (the spec's top-level ``clip_grad_norm``) and steps the
optimizer; after the step an EMA teacher moves, ``θ_t ← m θ_t + (1 - m) θ_s``. A
``prev_epoch`` teacher becomes a copy of the student every ``teacher_update_every``
epochs; a ``no_update`` teacher never changes. Either network may start from a finished
run's checkpoint (``teacher_init`` / ``student_init`` ``t_ckpt`` / ``s_ckpt``,
:mod:`labkit_dino.checkpoint_init`); opt-in trackers write statistics and outputs
(:mod:`labkit_dino.tracking`).

The step clock is the engine's: ``s`` is ``context.step`` (optimizer steps taken, restored
on resume; with ``accumulate: k`` every micro-batch of a step reads the same ``s``), and
schedules ramp over ``context.total_steps`` and ``context.steps_per_epoch``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from labkit.api import (Method, Registries, RunConfig, RunContext, Schedule, Scheduled, Seed,
                        StepResult, UserError, build_component, linked_runs_of, value_at, write_csv,
                        write_json)
from labkit_dino.checkpoint_init import (CHECKPOINT_INITS, InitRun, finished_init_run, load_network,
                                         source_model)
from labkit_dino.losses import LossName, Pairing, Targets, multicrop_loss, view_pairs
from labkit_dino.networks import (DinoHead, DinoNet, check_same_architecture, embedding_dim,
                                  probe_of, with_probe_classifier)
from labkit_dino.probing import embeddings, fit_probes
from labkit_dino.student_init import StudentInit, initialise_student
from labkit_dino.targets import NoisyTargets
from labkit_dino.tracking import (GRAD_STATS, HISTOGRAMS, OUTPUT_KINDS, OUTPUTS_DIR, PARAM_STATS,
                                  GradientStats, histogram_rows, network_outputs, parameter_rows,
                                  replace_epoch_rows, save_array)
from labkit_dino.views import AUGMENTATIONS, Crop, MultiViewDataset, crop_transforms, parse_crops

# written into the run directory when a network starts from another run's checkpoint
INIT_RECORD = "dino_init.json"


def _crop_list(crops: str | None, global_scale: tuple[float, float] | None,
               local_scale: tuple[float, float], resolution: int) -> list[Crop]:
    """The views; a single whole-image view of ``resolution`` pixels without ``crops``."""
    if crops is None:
        return [Crop(resolution, (1.0, 1.0), True)]
    return parse_crops(crops, global_scale, local_scale)


def _view_pairs(crops: list[Crop], pairing: Pairing | None) -> list[tuple[int, int]]:
    """(target view, student view) positions the loss compares; ``None``: the default rule."""
    teacher_views = [i for i, c in enumerate(crops) if c.teacher]
    pairing = pairing or ("opposite" if len(teacher_views) > 1 else "same")
    return view_pairs(teacher_views, list(range(len(crops))), pairing)


class DinoParams(BaseModel):
    """Spec parameters of the ``dino`` method (defaults: the reference codebase's).

    Field order matters to the validators: a field is checked against those above it.
    """

    model_config = ConfigDict(extra="forbid")

    # --- networks and their initialisation
    teacher_model: str | None = Field(
        None, description="registry name of the teacher's encoder (default params); null: "
                          "the spec's model with its params")
    embedding_from: str | None = Field(
        None, description="dotted name of the encoder's final nn.Linear classifier, whose "
                          "input is the embedding (e.g. 'fc', 'heads.head' of torchvision's "
                          "ViTs, 'classifier.6' of its VGGs); null: the first of fc, "
                          "heads.head, head, classifier that is an nn.Linear")
    teacher_seed: Seed | None = Field(
        None, description="seed of the teacher's random init; null: the spec's seed")
    teacher_init: Literal["random", "t_ckpt", "s_ckpt"] = Field(
        "random", description="random: drawn from teacher_seed; t_ckpt / s_ckpt: the "
                              "teacher / trained network (and head) of the finished run "
                              "init_run, whose model the teacher then is")
    student_init: StudentInit | Literal["t_ckpt", "s_ckpt"] = Field(
        "teacher", validate_default=True, description="teacher: a copy of the teacher; random: a fresh init; "
                               "interpolated: (1-α)·teacher + α·fresh; neighborhood: "
                               "teacher + ε·fresh; t_ckpt / s_ckpt: the teacher / trained "
                               "network (and head) of the finished run init_run")
    init_run: InitRun | None = Field(
        None, validate_default=True,
        description='the finished run that t_ckpt / s_ckpt read: {"dir": "<run '
                    'directory>"} (its fingerprint is added to the identity) or {"spec": '
                    '{...}, "run_id": …} (trained first when not finished)')
    student_seed: Seed | None = Field(
        None, description="seed of the fresh init used by random/interpolated/neighborhood; "
                          "null: drawn right after the teacher from the teacher's seed")
    init_alpha: float = Field(0.0, ge=0.0, le=1.0, description="α of student_init interpolated")
    init_eps: float = Field(0.0, ge=0.0, description="ε of student_init neighborhood")
    variance_preserving: bool = Field(
        False, description="divide interpolated/neighborhood inits by sqrt((1-α)²+α²) / "
                           "sqrt(1+ε²) so their variance is a single init's")
    # --- DINO head
    hidden_dims: list[int] = Field(
        [2048, 2048], description="widths of the head MLP's hidden layers (may be empty)")
    activation: Literal["gelu", "relu"] = Field("gelu", description="head MLP activation")
    head_batch_norm: bool = Field(False, description="BatchNorm1d after each hidden layer")
    bottleneck_dim: int = Field(
        256, ge=0, description="L2-normalised bottleneck width before the weight-normalised "
                               "last layer; 0: plain linear last layer")
    out_dim: int = Field(65536, ge=1, description="head output units K (≥ classes when "
                                                  "student_mode is supervised)")
    head_init: Literal["trunc_normal", "default"] = Field(
        "trunc_normal", description="head weights: DINO's N(0, 0.02²) truncated, or PyTorch's")
    # --- teacher
    teacher_mode: Literal["ema", "no_update", "prev_epoch"] = Field(
        "ema", description="ema: moving average of the student per step; no_update: frozen "
                           "(random teacher); prev_epoch: copy of the student every "
                           "teacher_update_every epochs")
    teacher_momentum: Scheduled = Field(
        Schedule(shape="cosine", start=0.996, end=1.0),
        description="EMA momentum m per step (number or schedule)")
    teacher_update_every: int = Field(1, ge=1, description="epochs between prev_epoch copies")
    teacher_bn: Literal["from_data", "from_student"] = Field(
        "from_data", description="teacher BatchNorm statistics: from_data (its own, from the "
                                 "batches it sees in train mode) or from_student (moved with "
                                 "its weights; needs teacher_eval)")
    teacher_eval: bool = Field(
        False, validate_default=True,
        description="run the teacher in eval mode on training batches")
    # --- targets and loss
    teacher_temp: Scheduled = Field(0.04, description="teacher temperature τ_t > 0")
    student_temp: Scheduled = Field(0.1, description="student temperature τ_s > 0")
    teacher_center_momentum: Scheduled | None = Field(
        0.9, description="momentum of the teacher's centre; null: no centering")
    student_center_momentum: Scheduled | None = Field(
        None, description="momentum of the student's centre; null: no centering")
    loss: LossName = Field("CE", description="CE, KL (CE - teacher entropy), H_pred "
                                             "(student entropy) or MSE of logits")
    # --- views
    crops: str | None = Field(
        None, description="multi-crop views such as '2x32+4x16' (global crops seen by "
                          "both, then local crops seen by the student); null: one "
                          "un-augmented view, the training image")
    crop_augment: Literal["none", "flip", "dino"] = Field(
        "dino", description="per-crop augmentation: " + "; ".join(
            f"{k}: {v}" for k, v in AUGMENTATIONS.items()))
    global_scale: tuple[float, float] | None = Field(
        None, description="area range of global crops; null: (0.4, 1) with local crops, "
                          "(0.14, 1) without, (1, 1) for a single crop")
    local_scale: tuple[float, float] = Field((0.05, 0.4), description="area range of local crops")
    pairing: Pairing | None = Field(
        None, validate_default=True,
        description="views compared: all, same, opposite; null: opposite with two or more "
                    "global views, else same")
    # --- optimisation
    clip_grad: float | None = Field(
        None, exclude=True,
        description="removed: clipping is the engine's; give the spec's top-level "
                    "clip_grad_norm (DINO's recipe: 3.0)")
    freeze_last_layer_epochs: int = Field(
        1, ge=0, description="epochs during which the head's last layer gets no gradient "
                             "(nor weight decay, nor a share of the clipping norm)")
    # --- supervised comparison runs
    student_mode: Literal["distillation", "supervised"] = Field(
        "distillation", description="targets: the teacher's outputs, or the labels "
                                    "(one-hot over out_dim) / noise logits")
    label_noise: float = Field(0.0, ge=0.0, le=1.0,
                               description="supervised: share of samples with a random label")
    logit_noise_temp: float | None = Field(
        None, gt=0.0, description="supervised: targets are Gaussian logits of norm ≈ 1/τ "
                                  "instead of labels; null: labels")
    resample_noise: bool = Field(False, description="draw label/logit noise at every access")
    noise_seed: Seed | None = Field(None, description="seed of fixed noise; null: the spec's seed")
    # --- probing
    probe_every: int = Field(1, ge=0, description="probe every so many epochs (and after the "
                                                  "last); 0: only after the last")
    probe_k: int = Field(20, ge=1, description="neighbours of the k-NN probe")
    probe_standardize: bool = Field(True, description="standardise embeddings before probing")
    probe_max_iter: int = Field(1000, ge=1, description="L-BFGS iterations of the linear probe")
    # --- trackers (opt-in; tidy CSV in the run directory, see labkit_dino.tracking)
    track_params: bool = Field(
        False, description="per epoch, network and named parameter: numel, norm, mean, std "
                           "(dino_param_stats.csv)")
    track_grads: bool = Field(
        False, description="per epoch and named student parameter, over the epoch's optimizer "
                           "steps (before clipping): mean gradient norm, mean, std, gradient "
                           "variance (dino_grad_stats.csv)")
    save_outputs: list[Literal["embeddings", "projections", "logits"]] = Field(
        [], description="save both networks' outputs of every eval split as .npy "
                        "(dino_outputs/, listed in dino_outputs/index.csv)")
    histogram_bins: int = Field(
        0, ge=0, description="histograms of embeddings, projections and logits of every eval "
                             "split with this many bins (dino_histograms.csv); 0: none")
    features_every: int = Field(
        0, ge=0, description="save_outputs and histograms every so many epochs (and after "
                             "the last); 0: only after the last")

    @field_validator("clip_grad")
    @classmethod
    def _clipping_moved(cls, value: float | None) -> None:
        if value:
            fix = f'replace it by the top-level "clip_grad_norm": {value}'
        else:
            fix = ('remove it (no clipping is the default; DINO\'s recipe is the top-level '
                   '"clip_grad_norm": 3.0)')
        raise ValueError(f"gradient clipping moved from the dino method to the engine: {fix}")

    @field_validator("student_init")
    @classmethod
    def _teacher_from_run(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("teacher_init") in CHECKPOINT_INITS and info.data.get("teacher_model"):
            raise ValueError("teacher_model and a teacher_init from a checkpoint contradict: "
                             "the teacher is the init run's model; drop teacher_model")
        return value

    @field_validator("init_run")
    @classmethod
    def _run_when_read(cls, value: InitRun | None, info: ValidationInfo) -> InitRun | None:
        inits = {info.data.get("teacher_init"), info.data.get("student_init")}
        readers = sorted(inits & set(CHECKPOINT_INITS))
        if readers and value is None:
            raise ValueError(f"teacher_init / student_init {readers[0]!r} reads a finished run: "
                             f'give init_run {{"dir": "<run directory>"}} or {{"spec": ...}}')
        if value is not None and not readers:
            raise ValueError("init_run is read only by teacher_init or student_init 't_ckpt' "
                             "/ 's_ckpt'; set one of them or drop init_run")
        return value

    @field_validator("teacher_eval")
    @classmethod
    def _eval_for_student_statistics(cls, value: bool, info: ValidationInfo) -> bool:
        if info.data.get("teacher_bn") == "from_student" and not value:
            raise ValueError("teacher_bn 'from_student' needs teacher_eval true: in train "
                             "mode BatchNorm uses the batch's statistics, not the student's")
        return value

    @field_validator("teacher_temp", "student_temp")
    @classmethod
    def _positive(cls, value: float | Schedule) -> float | Schedule:
        ends = (value.start, value.end) if isinstance(value, Schedule) else (value,)
        if min(ends) <= 0:
            raise ValueError("a temperature must be positive")
        return value

    @field_validator("crops")
    @classmethod
    def _crop_spec(cls, value: str | None) -> str | None:
        if value is not None:
            parse_crops(value)  # raises ValueError naming the expected form
        return value

    @field_validator("pairing")
    @classmethod
    def _some_pair(cls, value: Pairing | None, info: ValidationInfo) -> Pairing | None:
        if "crops" in info.data and "local_scale" in info.data:
            crops = _crop_list(info.data["crops"], info.data.get("global_scale"),
                               info.data["local_scale"], resolution=1)
            if not _view_pairs(crops, value):
                raise ValueError(f"pairing {value!r} leaves no pair of views to compare with "
                                 f"crops {info.data['crops']!r}")
        return value

    @field_validator("label_noise", "logit_noise_temp")
    @classmethod
    def _supervised_only(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value and info.data.get("student_mode") == "distillation":
            raise ValueError(f"{info.field_name} applies to student_mode 'supervised' only")
        if value and info.field_name == "logit_noise_temp" and info.data.get("label_noise"):
            raise ValueError("choose label_noise or logit_noise_temp, not both")
        return value

    def crop_list(self, resolution: int) -> list[Crop]:
        """The views; a single whole-image view of ``resolution`` pixels without ``crops``."""
        return _crop_list(self.crops, self.global_scale, self.local_scale, resolution)

    def view_pairs(self, crops: list[Crop]) -> list[tuple[int, int]]:
        """(target view, student view) positions the loss compares."""
        return _view_pairs(crops, self.pairing)


class Dino(Method):
    """DINO self-distillation with random, EMA or previous-epoch teachers and probing.

    See the module docstring; parameters in :class:`DinoParams`.
    """

    Params = DinoParams

    @classmethod
    def log_columns(cls, params: dict[str, Any], splits: list[str]) -> list[str]:
        """:meth:`end_epoch`'s columns: the loss terms, the temperatures and momentum,
        the probes' accuracies per eval split."""
        return ["dino-*", "teacher-temp", "student-temp", "teacher-momentum",
                *(f"probe-{split}-{network}-{kind}" for split in splits
                  for network in ("student", "teacher") for kind in ("knn", "linear"))]

    @classmethod
    def linked_runs(cls, params: dict[str, Any], run: RunConfig,
                    registries: Registries) -> list[RunConfig]:
        """The ``init_run`` given by spec: trained first when not finished."""
        return linked_runs_of(params.get("init_run"), run, registries)

    def __init__(self, context: RunContext, params: DinoParams):
        super().__init__(context, params)
        config, data = context.config, context.data
        self.crops = params.crop_list(data.resolution)
        self.teacher_views = [i for i, c in enumerate(self.crops) if c.teacher]
        self.pairs = params.view_pairs(self.crops)
        # the epoch's loss sums; checkpointed, as a checkpoint may be taken mid-epoch
        self._sums: dict[str, float] = {}
        self._seen = 0

        self._source = None  # the init run's config and checkpoint modules
        if params.init_run is not None:
            self._source = finished_init_run(params.init_run, context)
        network = with_probe_classifier(context.model, config["model"]["name"],
                                        params.embedding_from)
        self.teacher, fresh, student_head = self._draw()
        self.student = DinoNet(network, student_head)
        independent = params.student_init in ("random", *CHECKPOINT_INITS)
        if not independent or params.teacher_mode != "no_update":
            why = f"student_init {params.student_init!r} with teacher_mode {params.teacher_mode!r}"
            try:
                check_same_architecture(self.student, self.teacher, why)
            except UserError:
                if params.teacher_init not in CHECKPOINT_INITS:
                    raise
                source = source_model(self._source, params.teacher_init)
                raise UserError(f"{why} needs teacher and student of the same architecture, "
                                f"but the teacher from init_run is {source}; make that the "
                                f"spec's model, or choose student_init 'random' and "
                                f"teacher_mode 'no_update'") from None
        if params.teacher_init in CHECKPOINT_INITS:
            load_network(self.teacher, self._source, params.teacher_init)
        if params.student_init in CHECKPOINT_INITS:
            load_network(self.student, self._source, params.student_init)
        else:
            initialise_student(self.student, self.teacher, fresh, params.student_init,
                               params.init_alpha, params.init_eps, params.variance_preserving)
        if self._source is not None and context.run_dir is not None:
            # which run's weights this one started from (also in the identity for a dir)
            write_json(Path(context.run_dir) / INIT_RECORD, {
                "teacher_init": params.teacher_init, "student_init": params.student_init,
                "directory": self._source["directory"], "run": self._source["fingerprint"]})
        self.teacher.requires_grad_(False)
        self._trainable = [p for _, p in self.student.dino_parameters()]
        self._grads = GradientStats(self.student.dino_parameters()) if params.track_grads else None
        self._last_layer = list(self.student.head.last_layer.parameters())

    # ------------------------------------------------------------------ construction

    def _network(self, spec: dict[str, Any]) -> nn.Module:
        data = self.context.data
        model = build_component(self.context.registries, "models", spec,
                                num_classes=data.num_classes, in_channels=data.in_channels,
                                resolution=data.resolution)
        return with_probe_classifier(model, spec["name"], self.params.embedding_from)

    def _head(self, network: nn.Module) -> DinoHead:
        p = self.params
        return DinoHead(embedding_dim(network), list(p.hidden_dims), p.bottleneck_dim,
                        p.out_dim, p.activation, p.head_batch_norm, p.head_init)

    def _draw(self) -> tuple[DinoNet, DinoNet | None, DinoHead]:
        """Teacher, fresh random student (or None) and the student's head, seeded.

        Drawn in a forked RNG so the engine's random stream is left as it was.
        """
        p, config = self.params, self.context.config
        if p.teacher_init in CHECKPOINT_INITS:
            teacher_spec = source_model(self._source, p.teacher_init)
        elif p.teacher_model is not None:
            teacher_spec = {"name": p.teacher_model}
        else:
            teacher_spec = config["model"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"] if p.teacher_seed is None else p.teacher_seed)
            try:
                teacher_network = self._network(teacher_spec)
            except UserError as exc:
                raise UserError(f"method.teacher_model: {exc}") from None
            teacher = DinoNet(teacher_network, self._head(teacher_network))
            fresh = None
            if p.student_init not in ("teacher", *CHECKPOINT_INITS):
                if p.student_seed is not None:
                    torch.manual_seed(p.student_seed)
                fresh_network = self._network(config["model"])
                fresh = DinoNet(fresh_network, self._head(fresh_network))
            student_head = self._head(self.context.model)  # its weights come from the init
        device = self.context.device
        if fresh is not None:
            fresh.to(device)
        return teacher.to(device), fresh, student_head.to(device)

    def train_dataset(self, dataset):
        p, data = self.params, self.context.data
        if p.student_mode == "supervised":
            if p.out_dim < data.num_classes:
                raise UserError(f"method.out_dim {p.out_dim} is below the {data.num_classes} "
                                f"classes that supervised targets need")
            seed = self.context.config["seed"] if p.noise_seed is None else p.noise_seed
            dataset = NoisyTargets(dataset, data.num_classes, p.out_dim, p.label_noise,
                                   p.logit_noise_temp, p.resample_noise, seed)
        transforms = None
        if p.crops is not None:
            transforms = crop_transforms(self.crops, p.crop_augment, data.info.get("mean"),
                                         data.info.get("std"))
        return MultiViewDataset(dataset, transforms)

    # ------------------------------------------------------------------ the interface

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.context.model, "head": self.student.head, "teacher": self.teacher}

    def parameters(self):
        # DINO leaves biases and normalisation weights (1-d) out of weight decay; the
        # engine's weight_decay_schedule leaves that group at 0 too
        named = self.student.dino_parameters()
        groups = [{"params": [q for _, q in named if q.ndim > 1]},
                  {"params": [q for _, q in named if q.ndim <= 1], "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]

    def train(self, mode: bool = True) -> None:
        self.student.train(mode)
        self.teacher.train(mode and not self.params.teacher_eval)

    def _value(self, scheduled: float | Schedule, step: int | None = None) -> float:
        """A number-or-schedule at ``step`` (default: the engine's current optimizer step).

        Reads the engine's clock (``context.step``, ``steps_per_epoch``, ``total_steps``),
        set once the training loader exists: only call it from the training hooks.
        """
        context = self.context
        step = context.step if step is None else step
        return value_at(scheduled, step, context.steps_per_epoch, context.total_steps)

    def last_layer_frozen(self) -> bool:
        """Whether the current optimizer step is in the first ``freeze_last_layer_epochs``."""
        context = self.context
        return context.step < self.params.freeze_last_layer_epochs * context.steps_per_epoch

    def _logits(self, head: DinoHead, projections: torch.Tensor, temp: Scheduled,
                center_momentum: Scheduled | None) -> torch.Tensor:
        """``(projections - centre) / τ``, then the centre moves towards their mean."""
        logits = (projections - head.center) / self._value(temp)
        if center_momentum is not None:
            m = self._value(center_momentum)
            with torch.no_grad():
                head.center.mul_(m).add_(projections.detach().mean(dim=(0, 1)), alpha=1 - m)
        return logits

    def _targets(self, views: list[torch.Tensor], labels: torch.Tensor) -> Targets:
        p = self.params
        if p.student_mode == "distillation":
            with torch.no_grad():
                _, projections = self.teacher([views[i] for i in self.teacher_views])
                return Targets.from_logits(self._logits(
                    self.teacher.head, projections, p.teacher_temp, p.teacher_center_momentum))
        if labels.dim() == 1:
            return Targets.from_labels(labels, p.out_dim, len(self.teacher_views))
        return Targets.from_logits(labels.unsqueeze(0).expand(len(self.teacher_views), -1, -1))

    def training_step(self, batch: Any) -> StepResult:
        views, labels = batch
        p = self.params
        targets = self._targets(views, labels)
        _, projections = self.student(views)
        logits = self._logits(self.student.head, projections, p.student_temp,
                              p.student_center_momentum)
        losses = multicrop_loss(logits, targets, self.pairs)
        n = len(views[0])
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + value.item() * n
        self._seen += n
        return StepResult(loss=losses[p.loss], batch_size=n)

    def before_optimizer_step(self) -> None:
        """Drop the last layer's gradients while it is frozen (DINO's
        ``cancel_gradients_last_layer``).

        Called by the engine once the step's gradients are complete and *before* it clips
        them: a ``None`` gradient is skipped by the optimizer (no update, no weight decay,
        no moment update) and left out of the clipping norm, so the rest of the network
        is clipped on its own norm (the random-teacher codebase's order: cancel, then
        clip).
        """
        if self.last_layer_frozen():
            for param in self._last_layer:
                param.grad = None
        if self._grads is not None:  # what the optimizer sees, before the engine clips
            self._grads.record()

    @torch.no_grad()
    def after_step(self) -> None:
        # context.step is still the index of the step just taken
        if self.params.teacher_mode == "ema":
            ema_update(self.teacher, self.student, self._value(self.params.teacher_momentum),
                       self.params.teacher_bn == "from_student")

    def end_epoch(self, epoch: int) -> dict[str, float]:
        p = self.params
        if p.teacher_mode == "prev_epoch" and epoch % p.teacher_update_every == 0:
            with torch.no_grad():
                ema_update(self.teacher, self.student, 0.0, p.teacher_bn == "from_student")
        columns = {f"dino-{name.lower()}": total / self._seen for name, total in self._sums.items()}
        self._sums, self._seen = {}, 0
        last = self.context.step - 1  # the values in effect at the epoch's last step
        columns["teacher-temp"] = self._value(p.teacher_temp, last)
        columns["student-temp"] = self._value(p.student_temp, last)
        if p.teacher_mode == "ema":
            columns["teacher-momentum"] = self._value(p.teacher_momentum, last)
        # the last epoch: the spec's, or the one where a `steps` budget runs out
        last_epoch = (epoch == self.context.config["epochs"]
                      or self.context.step >= self.context.total_steps)
        if last_epoch or (p.probe_every and epoch % p.probe_every == 0):
            self.train(False)
            columns.update(self.probe())
        if self.context.run_dir is not None:
            self._track(epoch, last_epoch or bool(p.features_every
                                                  and epoch % p.features_every == 0))
        return columns

    def _track(self, epoch: int, features: bool) -> None:
        """Write the opt-in trackers' rows of ``epoch`` (``features``: outputs and
        histograms too)."""
        p, run_dir = self.params, Path(self.context.run_dir)
        if self._grads is not None:
            replace_epoch_rows(run_dir / GRAD_STATS, self._grads.rows(epoch), epoch)
            self._grads.reset()
        networks = {"student": self.student, "teacher": self.teacher}
        if p.track_params:
            replace_epoch_rows(run_dir / PARAM_STATS, parameter_rows(networks, epoch), epoch)
        if not features or not (p.save_outputs or p.histogram_bins):
            return
        self.train(False)
        last = self.context.step - 1
        temps = {"student": self._value(p.student_temp, last),
                 "teacher": self._value(p.teacher_temp, last)}
        index, histograms, labels = [], [], []
        for split, dataset in self.context.data.evals.items():
            for name, net in networks.items():
                outputs, targets = network_outputs(net, dataset,
                                                   self.context.config["eval_batch_size"],
                                                   self.context.device, temps[name])
                for kind in p.save_outputs:
                    file = f"e{epoch:04d}_{split}_{name}_{kind}.npy"
                    save_array(run_dir / OUTPUTS_DIR / file, outputs[kind])
                    index.append({"epoch": epoch, "split": split, "network": name,
                                  "kind": kind, "file": file, "rows": outputs[kind].shape[0],
                                  "dim": outputs[kind].shape[1]})
                for kind in OUTPUT_KINDS if p.histogram_bins else ():
                    histograms.extend(histogram_rows(outputs[kind], p.histogram_bins,
                                                     epoch=epoch, split=split, network=name,
                                                     kind=kind))
            labels.extend({"split": split, "row": i, "label": int(y)}
                          for i, y in enumerate(targets))
        if index:
            replace_epoch_rows(run_dir / OUTPUTS_DIR / "index.csv", index, epoch)
            write_csv(run_dir / OUTPUTS_DIR / "labels.csv", pd.DataFrame(labels))
        if histograms:
            replace_epoch_rows(run_dir / HISTOGRAMS, histograms, epoch)

    def eval_model(self) -> nn.Module:
        return self.context.model

    def state_dict(self) -> dict[str, Any]:
        """The epoch's loss sums so far (a checkpoint may be taken mid-epoch); the step
        counter is the engine's."""
        state = {"loss_sums": dict(self._sums), "seen": self._seen}
        if self._grads is not None:
            state["grad_stats"] = self._grads.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # checkpoints before the engine's step clock hold only {"step": …}, taken at an
        # epoch's end: empty sums, and the engine restores the step
        self._sums = {name: float(v) for name, v in state.get("loss_sums", {}).items()}
        self._seen = int(state.get("seen", 0))
        if self._grads is not None and "grad_stats" in state:
            self._grads.load_state_dict(state["grad_stats"])

    # ------------------------------------------------------------------ probing

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """Fit k-NN and linear probes on both encoders; install the linear probes as ``fc``.

        Networks must be in eval mode. Returns ``probe-<split>-<student|teacher>-<knn|linear>``
        accuracies for every eval split.
        """
        p, data = self.params, self.context.data
        batch, device = self.context.config["eval_batch_size"], self.context.device
        columns = {}
        for name, net in (("student", self.student), ("teacher", self.teacher)):
            train = embeddings(net.network, data.train_plain, batch, device)
            evals = {split: embeddings(net.network, dataset, batch, device)
                     for split, dataset in data.evals.items()}
            result = fit_probes(train, evals, data.num_classes, p.probe_k,
                                p.probe_standardize, p.probe_max_iter)
            probe = probe_of(net.network)
            probe.weight.copy_(result.weight)
            probe.bias.copy_(result.bias)
            for split in data.evals:
                columns[f"probe-{split}-{name}-knn"] = result.knn[split]
                columns[f"probe-{split}-{name}-linear"] = result.linear[split]
        return columns


def ema_update(teacher: DinoNet, student: DinoNet, momentum: float, batch_norm: bool) -> None:
    """``θ_t ← m θ_t + (1 - m) θ_s`` for encoder and head parameters (``m = 0``: a copy).

    With ``batch_norm`` the BatchNorm running means and variances move the same way.
    """
    for (_, t), (_, s) in zip(teacher.dino_parameters(), student.dino_parameters(), strict=True):
        t.mul_(momentum).add_(s, alpha=1 - momentum)
    if batch_norm:
        for (_, t), (_, s) in zip(teacher.batch_norms(), student.batch_norms(), strict=True):
            t.running_mean.mul_(momentum).add_(s.running_mean, alpha=1 - momentum)
            t.running_var.mul_(momentum).add_(s.running_var, alpha=1 - momentum)

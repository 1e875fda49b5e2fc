"""The ``distill`` method: a student learns from a frozen teacher run.

For a batch (x, y), student logits s and teacher logits t on the same inputs:

    L = (1 − λ)·CE(s, y) + λ·L_soft + β·L_aux

    L_soft = T²·D(softmax(t/T) ‖ softmax(s/T))                          (KD, Hinton et al.)
    with human soft labels h (HKD):
    L_soft = (1 − γ)·T²·D(softmax(t/T) ‖ softmax(s/T))
             + γ·T_h²·D(softmax(log h / T_h) ‖ softmax(s/T_h))

D is KL(target ‖ student) (``divergence="kl"``, the default) or the soft cross-entropy
(``"ce"``); λ = ``alpha``, T = ``temperature``, γ and T_h from ``soft_labels``. L_aux is
chosen by ``loss`` (``kd``: none; ``jacobian``, ``features``, ``contrastive``: see
:mod:`labkit_distill.losses` and :class:`labkit_distill.taps.Hint`), weighted by
β = ``loss.weight``. With ``mix`` (mixup / cutmix) teacher and student both see the
mixed images x̃ = mix(x, x[π], m); the label terms mix with the same m:
CE → m·CE(s, y) + (1 − m)·CE(s, y[π]) and h → m·h + (1 − m)·h[π]. The images are mixed by
labkit's own :func:`labkit.api.mix_images` (the draws of the spec's ``batch_augment``);
the method keeps its own ``mix`` parameter because the human soft labels h must be mixed
with the same π and m, which the engine's soft targets cannot carry, so it refuses
``batch_augment`` (``accepts_soft_targets`` false).

Per eval split the method adds the columns ``<split>-agreement`` (share of samples where
student and teacher predict the same class), ``<split>-teacher_kl`` (mean
KL(p_teacher ‖ p_student) at temperature 1, nats) and ``<split>-teacher_accuracy``.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.api import (DataBundle, Method, Registries, RunConfig, RunContext, StepResult,
                        UserError, linked_runs_of, mix_images, read_npy_file)
from labkit_distill.crd import ContrastMemory
from labkit_distill.losses import (attention_loss, contrastive_loss, input_gradients, jacobian_loss,
                                   pkt_loss, rkd_loss, similarity_loss, soft_term, tempered)
from labkit_distill.sources import labels_of
from labkit_distill.taps import Hint, Tap, last_map, vector
from labkit_distill.teacher import TeacherRef, teacher_run


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _weight(default: float, term: str) -> Any:
    """The field ``weight``, β of the auxiliary ``term`` (RepDistiller's when it has one)."""
    return Field(default, ge=0, description=f"β: weight of the {term}")


LAST_LINEAR = "the input of its last Linear layer"
LAST_MAP = "the last spatial map before global pooling"


def _layer(role: str, default: str) -> Any:
    """The field naming the ``role``'s (student, teacher) module a loss reads."""
    return Field(None, description=f"{role} module name; null: {default}")


class KD(_Strict):
    """No auxiliary term: plain knowledge distillation."""

    name: Literal["kd"] = "kd"


class Jacobian(_Strict):
    """Jacobian matching (Srinivas & Fleuret 2018) of the logits' input-gradients."""

    name: Literal["jacobian"]
    weight: float = _weight(1.0, "Jacobian term")
    top_k: int | None = Field(
        None, ge=1, description="match the gradients of the teacher's k most probable "
                                "classes per sample (k backward passes); null: all classes")


class _Layers(_Strict):
    """A loss on one student and one teacher layer, by default their last features."""

    student_layer: str | None = _layer("student", LAST_LINEAR)
    teacher_layer: str | None = _layer("teacher", LAST_LINEAR)


class Features(_Layers):
    """FitNets hint: teacher features regressed from the student's by a learned 1×1 map."""

    name: Literal["features"]
    weight: float = _weight(1.0, "hint term")


class Contrastive(_Layers):
    """Contrastive representation distillation, in-batch negatives, learned linear heads."""

    name: Literal["contrastive"]
    weight: float = _weight(1.0, "contrastive term")
    tau: float = Field(0.1, gt=0, description="τ: temperature of the similarities")
    dim: int = Field(64, ge=1, description="size of the embeddings both heads map to")


class Attention(_Strict):
    """Attention transfer (Zagoruyko & Komodakis 2017) on one or more pairs of maps."""

    name: Literal["attention"]
    weight: float = _weight(1000.0, "summed AT terms (RepDistiller: 1000)")
    p: float = Field(2.0, gt=0, description="power of the attention map Σ_c |A_c|^p")
    student_layers: list[str] | None = Field(
        None, description=f"student module names, paired in order with teacher_layers; "
                          f"null: {LAST_MAP}")
    teacher_layers: list[str] | None = Field(
        None, description=f"teacher module names, as many as student_layers; null: {LAST_MAP}")


class Similarity(_Layers):
    """Similarity-preserving KD (Tung & Mori 2019): batch Gram matrices of one layer."""

    name: Literal["similarity"]
    weight: float = _weight(3000.0, "SP term (RepDistiller: 3000)")
    student_layer: str | None = _layer("student", LAST_MAP)
    teacher_layer: str | None = _layer("teacher", LAST_MAP)


class PKT(_Layers):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018), cosine kernel."""

    name: Literal["pkt"]
    weight: float = _weight(30000.0, "PKT term (RepDistiller: 30000)")


class RKD(_Layers):
    """Relational KD (Park et al. 2019): distance and angle terms."""

    name: Literal["rkd"]
    weight: float = _weight(1.0, "RKD term (RepDistiller: 1)")
    distance_weight: float = Field(25.0, ge=0, description="w_D: weight of the distance term")
    angle_weight: float = Field(50.0, ge=0, description="w_A: weight of the angle term")


class CRD(_Layers):
    """Contrastive representation distillation with a memory bank (Tian et al. 2020)."""

    name: Literal["crd"]
    weight: float = _weight(0.8, "CRD term (RepDistiller: 0.8)")
    dim: int = Field(128, ge=1, description="d: size of the embeddings and memory rows")
    negatives: int = Field(4096, ge=1, description="K: negatives per positive, items of other "
                                                   "classes (RepDistiller: 16384 on CIFAR-100)")
    tau: float = Field(0.07, gt=0, description="τ: temperature of the scores")
    momentum: float = Field(0.5, ge=0, le=1, description="m: momentum of the memory update")


class SoftLabels(_Strict):
    """Human soft labels (HKD), e.g. CIFAR-10H's ``cifar10h-probs.npy``."""

    file: str = Field(description=".npy of shape (rows, classes), each row a probability "
                                  "vector; rows = items of the training split, in order, or "
                                  "items of the source it was drawn from")
    gamma: float = Field(0.5, ge=0, le=1, description="γ: share of the soft term given to "
                                                      "the human labels")
    temperature: float = Field(1.0, gt=0, description="T_h: temperature of the human term")


class Mix(_Strict):
    """Mixup or cutmix of the distillation inputs."""

    kind: Literal["mixup", "cutmix"] = Field("mixup", description="how images are mixed")
    alpha: float = Field(1.0, gt=0, description="mixing share m ~ Beta(alpha, alpha)")
    prob: float = Field(1.0, ge=0, le=1, description="share of batches that are mixed")


Loss = Annotated[KD | Jacobian | Features | Contrastive | Attention | Similarity | PKT | RKD | CRD,
                 Field(discriminator="name")]
# losses that read intermediate features through taps
FEATURE_LOSSES = (Features, Contrastive, Attention, Similarity, PKT, RKD, CRD)


class Indexed(Dataset):
    """``(image, label, i)`` for item i of ``dataset``: the position finds the soft label."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        image, label = self.dataset[i]
        return image, label, i


def load_soft_labels(params: SoftLabels, train: Dataset, num_classes: int) -> torch.Tensor:
    """The soft label of every training item, ``(len(train), num_classes)`` float32.

    The file has one row per item of ``train`` (in order), or one row per item of the
    source ``train`` was drawn from (a split exposing ``base`` and ``indices``, as
    labkit's datasets do); then row ``indices[i]`` belongs to item i.

    Raises:
        UserError: missing file, wrong shape, rows that are not distributions.
    """
    path = Path(params.file)
    if not path.is_file():
        raise UserError(f"soft_labels.file {params.file!r} not found; give the path of a "
                        f".npy file of shape (rows, {num_classes})")
    probs = read_npy_file(path, "iuf", fix=f"give a .npy file of shape (rows, {num_classes})")
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise UserError(f"{path}: shape {probs.shape}, expected (rows, {num_classes})")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise UserError(f"{path}: every row must be a probability vector (non-negative, "
                        f"summing to 1)")
    base, indices = getattr(train, "base", None), getattr(train, "indices", None)
    if len(probs) == len(train):
        rows = np.arange(len(train))
    elif indices is not None and len(probs) == len(base):
        rows = np.asarray(indices)
    else:
        source = f" or the {len(base)} items of its source" if indices is not None else ""
        raise UserError(f"{path} has {len(probs)} rows; they must match the {len(train)} "
                        f"training items{source}")
    return torch.from_numpy(probs[rows]).float()


class Distill(Method):
    """Train the run's model (the student) from a frozen teacher run; see the module doc."""

    # its mixing is its own `mix` (human soft labels mix with the batch's π and m); the
    # spec's batch_augment is refused with a message
    accepts_soft_targets = False

    class Params(_Strict):
        teacher: TeacherRef = Field(description='{"dir": …} or {"spec": …, "run_id": …}')
        alpha: float = Field(0.9, ge=0, le=1, description="λ: weight of the soft term; 1 − λ "
                                                          "weighs the cross-entropy with y")
        temperature: float = Field(4.0, gt=0, description="T: temperature of the teacher "
                                                          "term (T_t in HKD)")
        divergence: Literal["kl", "ce"] = Field(
            "kl", description="D of the soft terms: KL(target ‖ student) or soft cross-entropy")
        soft_labels: SoftLabels | None = Field(None, description="human soft labels (HKD)")
        loss: Loss = Field(KD(), description="auxiliary term: kd (none), jacobian, features, "
                                             "contrastive, attention, similarity, pkt, rkd, crd")
        mix: Mix | None = Field(None, description="mixup / cutmix of the inputs; null: off")

        @field_validator("loss", mode="before")
        @classmethod
        def _name_only(cls, value: Any) -> Any:
            return {"name": value} if isinstance(value, str) else value

    params: Params

    @classmethod
    def log_columns(cls, params: dict[str, Any], splits: list[str]) -> list[str]:
        """:meth:`end_epoch`'s columns, per eval split."""
        return [f"{split}-{column}" for split in splits
                for column in ("agreement", "teacher_kl", "teacher_accuracy")]

    @classmethod
    def linked_runs(cls, params: dict[str, Any], run: RunConfig,
                    registries: Registries) -> list[RunConfig]:
        """The teacher given by spec: trained first when not finished."""
        return linked_runs_of(params["teacher"], run, registries)

    def __init__(self, context: RunContext, params: Params):
        super().__init__(context, params)
        self.soft_labels = None  # read first: a mistake there is found before a teacher trains
        if params.soft_labels is not None:
            self.soft_labels = load_soft_labels(params.soft_labels, context.data.train,
                                                context.data.num_classes).to(context.device)
        teacher = teacher_run(params.teacher, context)
        _check_compatible(teacher.data, context.data)
        self.teacher = teacher.model.requires_grad_(False)
        # trained parts besides the student (FitNets regressor, contrastive heads, CRD)
        self.heads = nn.ModuleDict()
        if isinstance(params.loss, FEATURE_LOSSES):
            self._add_taps(params.loss)
            self.heads.to(context.device)
        # teacher logits and labels per eval split: fixed, so computed once
        self._teacher_eval: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def modules(self) -> dict[str, nn.Module]:
        # the frozen teacher is left out: it never changes, so checkpoints need not hold it
        return {"model": self.context.model, "heads": self.heads}

    def parameters(self) -> Iterable[nn.Parameter]:
        return itertools.chain(self.context.model.parameters(), self.heads.parameters())

    def train_dataset(self, dataset: Dataset) -> Dataset:
        return Indexed(dataset)

    def _add_taps(self, term: BaseModel) -> None:
        """Hook the layers ``term`` reads and build its trained heads."""
        student_layers, teacher_layers = self._layer_names(term)
        self.student_taps = [Tap(self.context.model, name, "student") for name in student_layers]
        self.teacher_taps = [Tap(self.teacher, name, "teacher") for name in teacher_layers]
        student_shapes, teacher_shapes = self._feature_shapes()
        if isinstance(term, Attention):
            for role, names, shapes in (("student", student_layers, student_shapes),
                                        ("teacher", teacher_layers, teacher_shapes)):
                for name, shape in zip(names, shapes):
                    if len(shape) != 3:
                        raise UserError(f"attention transfer reads spatial maps, but the {role}'s "
                                        f"layer {name!r} gives shape {tuple(shape)}; name "
                                        f"layers with (channels, height, width) outputs in "
                                        f"{role}_layers")
        elif isinstance(term, Features):
            self.heads["hint"] = Hint(student_shapes[0], teacher_shapes[0])
        elif isinstance(term, Contrastive):
            # shape[0]: channels of a map or length of a vector, the size vector() gives
            self.heads["student"] = nn.Linear(student_shapes[0][0], term.dim)
            self.heads["teacher"] = nn.Linear(teacher_shapes[0][0], term.dim)
        elif isinstance(term, CRD):
            labels = torch.as_tensor(labels_of(self.context.data.train), dtype=torch.long)
            self.heads["crd"] = ContrastMemory(
                student_shapes[0].numel(), teacher_shapes[0].numel(), labels, dim=term.dim,
                negatives=term.negatives, tau=term.tau, momentum=term.momentum)

    def _layer_names(self, term: BaseModel) -> tuple[list[str | None], list[str | None]]:
        """The module names ``term`` reads, student's and teacher's, paired in order
        (``None``: the input of the last ``nn.Linear``)."""
        if isinstance(term, Attention):
            student = term.student_layers or [self._last_map(self.context.model)]
            teacher = term.teacher_layers or [self._last_map(self.teacher)]
            if len(student) != len(teacher):
                raise UserError(f"attention pairs student_layers with teacher_layers in order, "
                                f"but {len(student)} student and {len(teacher)} teacher layers "
                                f"are given; give as many of each")
            return list(student), list(teacher)
        student, teacher = term.student_layer, term.teacher_layer
        if isinstance(term, Similarity):
            student = student or self._last_map(self.context.model)
            teacher = teacher or self._last_map(self.teacher)
        return [student], [teacher]

    def _last_map(self, model: nn.Module) -> str:
        data = self.context.data
        return last_map(model, torch.zeros(2, data.in_channels, data.resolution, data.resolution,
                                           device=self.context.device))

    def training_step(self, batch: Any) -> StepResult:
        images, targets, index = batch
        p = self.params
        human = self.soft_labels[index] if self.soft_labels is not None else None
        perm, m = None, 1.0
        if p.mix is not None and float(torch.rand(())) < p.mix.prob:
            images, perm, m = mix_images(images, p.mix.kind, p.mix.alpha)
            if human is not None:
                human = m * human + (1 - m) * human[perm]
        jacobian = isinstance(p.loss, Jacobian)
        if jacobian:
            images = images.detach().requires_grad_(True)
        logits = self.context.model(images)
        with torch.set_grad_enabled(jacobian):  # the teacher's input-gradients, not weights
            teacher_logits = self.teacher(images)

        hard = F.cross_entropy(logits, targets)
        if perm is not None:
            hard = m * hard + (1 - m) * F.cross_entropy(logits, targets[perm])
        teacher_probs = F.softmax(teacher_logits.detach() / p.temperature, dim=1)
        soft = soft_term(logits, teacher_probs, p.temperature, p.divergence)
        if human is not None:
            h = p.soft_labels
            soft = (1 - h.gamma) * soft + h.gamma * soft_term(
                logits, tempered(human, h.temperature), h.temperature, p.divergence)
        loss = (1 - p.alpha) * hard + p.alpha * soft
        if not isinstance(p.loss, KD):
            loss = loss + p.loss.weight * self._auxiliary(images, logits, teacher_logits, index)
        return StepResult(loss=loss, batch_size=len(targets), logits=logits, targets=targets)

    def _auxiliary(self, images: torch.Tensor, logits: torch.Tensor,
                   teacher_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """L_aux of the batch, before its weight β (features come from the taps)."""
        term = self.params.loss
        if isinstance(term, Jacobian):
            num_classes = logits.shape[1]
            if term.top_k is None or term.top_k >= num_classes:
                classes = torch.arange(num_classes, device=logits.device).expand(len(logits), -1)
            else:
                classes = teacher_logits.detach().topk(term.top_k, dim=1).indices
            teacher_grads = input_gradients(teacher_logits, images, classes, create_graph=False)
            student_grads = input_gradients(logits, images, classes, create_graph=True)
            return jacobian_loss(student_grads, teacher_grads)
        students = [tap.features for tap in self.student_taps]
        teachers = [tap.features.detach() for tap in self.teacher_taps]
        if isinstance(term, Attention):
            return sum(attention_loss(s, t, term.p) for s, t in zip(students, teachers))
        student, teacher = students[0], teachers[0]
        if isinstance(term, Features):
            return self.heads["hint"](student, teacher)
        if isinstance(term, Contrastive):
            return contrastive_loss(self.heads["student"](vector(student)),
                                    self.heads["teacher"](vector(teacher)), term.tau)
        if isinstance(term, Similarity):
            return similarity_loss(student, teacher)
        if isinstance(term, PKT):
            return pkt_loss(student, teacher)
        if isinstance(term, RKD):
            return rkd_loss(student, teacher, term.distance_weight, term.angle_weight)
        return self.heads["crd"](student, teacher, index.to(student.device))

    @torch.no_grad()
    def _feature_shapes(self) -> tuple[list[torch.Size], list[torch.Size]]:
        """One sample's feature shape at each tapped layer, from a forward pass of zeros."""
        data, model = self.context.data, self.context.model
        probe = torch.zeros(2, data.in_channels, data.resolution, data.resolution,
                            device=self.context.device)
        was_training = model.training
        model.eval()  # no BatchNorm statistics update from the probe
        model(probe)
        model.train(was_training)
        self.teacher(probe)
        return ([tap.features.shape[1:] for tap in self.student_taps],
                [tap.features.shape[1:] for tap in self.teacher_taps])

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.train(False)
        columns = {}
        for split, dataset in self.context.data.evals.items():
            if split not in self._teacher_eval:
                self._teacher_eval[split] = self._outputs(self.teacher, dataset)
            teacher_logits, targets = self._teacher_eval[split]
            student_logits, _ = self._outputs(self.context.model, dataset)
            agree = student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)
            columns[f"{split}-agreement"] = float(agree.float().mean())
            columns[f"{split}-teacher_kl"] = float(
                soft_term(student_logits, F.softmax(teacher_logits, dim=1), 1.0, "kl"))
            columns[f"{split}-teacher_accuracy"] = float(
                (teacher_logits.argmax(dim=1) == targets).float().mean())
        return columns

    def _outputs(self, model: nn.Module, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, C)`` and labels ``(N,)`` of ``model`` over ``dataset``, in order."""
        config = self.context.config
        # its own generator: a loader draws a seed from the global RNG otherwise, and the
        # teacher's pass (first epoch of this process only) would shift the training stream
        loader = DataLoader(dataset, batch_size=config["eval_batch_size"],
                            num_workers=config["num_workers"], generator=torch.Generator())
        logits, labels = [], []
        for images, targets in loader:
            logits.append(model(images.to(self.context.device)))
            labels.append(targets.to(self.context.device))
        return torch.cat(logits), torch.cat(labels)


def _check_compatible(teacher: DataBundle, student: DataBundle) -> None:
    """The teacher reads the student's images and predicts the same classes."""
    theirs = (teacher.num_classes, teacher.in_channels, teacher.resolution)
    mine = (student.num_classes, student.in_channels, student.resolution)
    if theirs != mine:
        raise UserError(
            f"the teacher was trained on {theirs[0]} classes of {theirs[1]}-channel "
            f"{theirs[2]}x{theirs[2]} images but this run's data has {mine[0]} classes of "
            f"{mine[1]}-channel {mine[2]}x{mine[2]} images; distillation feeds the student's "
            f"images to the teacher, so both must agree")

"""Teacher or student initialised from a finished run (the reference's ``t_ckpt`` / ``s_ckpt``).

``method.init_run`` names the run, as a directory or as a spec:

* ``{"dir": "<run directory>"}``: the folder of a trained labkit run, wherever it lies
  (any complete copy; :func:`labkit.api.read_run` reads that folder and nothing else).
  Validation adds its fingerprint, ``run: {"hash": …, "checkpoint": …}`` (identity hash
  and the verified sha256 of the final checkpoint in that folder), so the DINO run's
  identity follows those weights; a folder that holds no trained run is an error at
  validation;
* ``{"spec": {...}, "run_id": "A"}``: the run's own spec (one grid point), resolved into
  the DINO run's identity and trained first (in the DINO run's ``logs_dir``, under
  ``run_id``, default the DINO run's run-id) when it is not finished.

What is loaded from the run's final checkpoint (its ``modules``):

* ``t_ckpt``: the teacher of a ``dino`` run (``modules["teacher"]``: encoder and head);
* ``s_ckpt``: the run's ``modules["model"]`` (the trained network of any method: a DINO
  run's student encoder) and, from a ``dino`` run, its head (``modules["head"]``).

The encoder's classifier (a DINO run's linear probe, a supervised run's class layer) is
not loaded: the probe starts at zero, as in any DINO run. A head that is not loaded keeps
its random initialisation. Architectures must match (a clear error names the fix).
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from labkit.api import RunContext, RunRef, UserError, finished_link, registries, run_fingerprint
from labkit_dino.networks import DinoNet, probe_of

CHECKPOINT_INITS = ("t_ckpt", "s_ckpt")


class InitRun(RunRef):
    """The finished run a ``t_ckpt`` / ``s_ckpt`` initialisation reads (module docstring)."""

    path = "method.init_run"
    noun = "init run"
    rerun = "run the DINO spec again (a new run)"

    spec: dict[str, Any] | None = Field(
        None, description="the run's spec (one grid point), trained first when not finished; "
                          "stored resolved, so it is part of the DINO run's identity")
    run_id: str | None = Field(
        None, description="run-id of a run given by spec; null: the DINO run's run-id")

    @field_validator("spec")
    @classmethod
    def _one_resolved_run(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else cls.one_run(value, registries())


def finished_init_run(ref: InitRun, context: RunContext) -> dict[str, Any]:
    """``{"config": …, "modules": …, "fingerprint": …, "directory": …}`` of the run's final
    checkpoint (:func:`labkit.api.finished_link`), trained first when ``ref`` is a spec not
    yet finished. The global RNG states are left as they were.

    Raises:
        UserError: the run is not trained, or was retrained since validation.
        RunFailed: training a run given by spec failed.
    """
    finished = finished_link(ref, context)
    fingerprint = ref.run or run_fingerprint(finished.run)
    return {"config": finished.config, "modules": finished.state()["modules"],
            "fingerprint": fingerprint.model_dump(), "directory": str(finished.directory)}


def _load_encoder(network: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` (a registry model's state dict) into ``network``, probe excluded."""
    probe = probe_of(network)
    prefix = next(name for name, m in network.named_modules() if m is probe) + "."
    weights = {k: v for k, v in state.items() if not k.startswith(prefix)}
    try:
        missing, unexpected = network.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UserError(f"method.init_run: {what} does not fit this encoder ({str(exc)[:300]}); "
                        f"use the init run's model and data resolution / channels") from None
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise UserError(f"method.init_run: {what} is another architecture (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}); use the init run's model")


def _load_head(head: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"method.init_run: {what} does not fit this head ({str(exc)[:300]}); "
                        f"give the init run's hidden_dims, bottleneck_dim and out_dim") from None


@torch.no_grad()
def load_network(net: DinoNet, source: dict[str, Any], which: str) -> None:
    """Overwrite ``net`` (encoder, and head when the source has one) with the init run's
    teacher (``which="t_ckpt"``) or trained network (``"s_ckpt"``); see the module docstring.

    Raises:
        UserError: ``t_ckpt`` from a run without a teacher, or architectures that differ.
    """
    modules, directory = source["modules"], source["directory"]
    if which == "t_ckpt":
        if "teacher" not in modules:
            raise UserError(f"method.init_run: run {directory} has no teacher (method "
                            f"{source['config']['method']['name']!r}); t_ckpt needs a dino run, "
                            f"s_ckpt takes any run's trained network")
        teacher = modules["teacher"]
        encoder = {k[len("network."):]: v for k, v in teacher.items() if k.startswith("network.")}
        head = {k[len("head."):]: v for k, v in teacher.items() if k.startswith("head.")}
    else:
        encoder, head = modules["model"], modules.get("head")
    _load_encoder(net.network, encoder, f"the {which} network of run {directory}")
    if head is not None:
        _load_head(net.head, head, f"the {which} head of run {directory}")


def source_model(source: dict[str, Any], which: str) -> dict[str, Any]:
    """The model spec of the init run's network ``which`` (``t_ckpt``: its teacher, built
    from its ``teacher_model`` when it has one; ``s_ckpt``: its model)."""
    config = source["config"]
    teacher_model = config["method"].get("teacher_model")
    if which == "t_ckpt" and teacher_model is not None:
        return {"name": teacher_model}
    return config["model"]

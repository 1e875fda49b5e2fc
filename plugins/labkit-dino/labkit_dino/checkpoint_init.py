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

import sys
from typing import Any

import torch
from pydantic import ConfigDict, Field, field_validator, model_validator
from torch import nn

from labkit.api import (
    NOT_IDENTITY,
    FinishedRun,
    PinnedRef,
    RunContext,
    RunFailed,
    UserError,
    checkpoint,
    expand,
    inline_run,
    is_trained,
    read_run,
    registries,
    run_fingerprint,
    runinfo,
    train,
)
from labkit_dino.networks import DinoNet, probe_of

CHECKPOINT_INITS = ("t_ckpt", "s_ckpt")

# where and how a run executes (logs_dir, device, …): not what the run is
_LOCATION = tuple(key for key in NOT_IDENTITY if "." not in key)
INIT_DIR = "method.init_run.dir"


class InitRun(PinnedRef):
    """The finished run a ``t_ckpt`` / ``s_ckpt`` initialisation reads (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    dir: str | None = Field(None, description="folder of a trained labkit run (any complete "
                                              "copy, wherever it lies)")
    spec: dict[str, Any] | None = Field(
        None, description="the run's spec (one grid point), trained first when not finished; "
                          "stored resolved, so it is part of the DINO run's identity")
    run_id: str | None = Field(
        None, description="run-id of a run given by spec; null: the DINO run's run-id")

    @field_validator("spec")
    @classmethod
    def _one_resolved_run(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        # a resolved spec holds the derived "data" of its dataset, which a spec may not give
        configs = expand({k: v for k, v in value.items() if k != "data"}, registries())
        if len(configs) != 1:
            raise ValueError(f"init_run.spec expands to {len(configs)} runs; give one run "
                             f"(a grid over init runs is a list of init_run objects)")
        return {k: v for k, v in configs[0].items() if k not in _LOCATION}

    @model_validator(mode="after")
    def _pinned(self) -> "InitRun":
        if (self.dir is None) == (self.spec is None):
            raise ValueError('name the run by {"dir": "<run directory>"} or by '
                             '{"spec": {...}}: exactly one of the two')
        if self.dir is None:
            if self.run is not None:
                raise ValueError('"run" is derived from "dir"; leave it out')
            return self
        if self.run_id is not None:
            raise ValueError("run_id goes with spec; a run directory already names its run")
        derived = read_run(self.dir, INIT_DIR).fingerprint
        stale = self.stale(derived, self.dir, "method.init_run.run",
                           "run the DINO spec again (a new run)")
        if stale:
            raise UserError(stale)
        self.run = derived
        return self


def finished_init_run(ref: InitRun, context: RunContext) -> dict[str, Any]:
    """``{"config": …, "modules": …}`` of the run's final checkpoint, trained first when
    ``ref`` is a spec not yet finished. The global RNG states are left as they were.

    Raises:
        UserError: the run is not trained, or was retrained since validation.
        RunFailed: training a run given by spec failed.
    """
    state = checkpoint.rng_state()  # training another run must not move this run's stream
    try:
        if ref.dir is not None:  # the folder itself, and its verified final checkpoint
            found = read_run(ref.dir, INIT_DIR)
            if found.fingerprint != ref.run:
                raise UserError(f"method.init_run: run {ref.dir} was retrained since this run "
                                f"was planned; run the spec again")
            finished = FinishedRun.from_reference(found, context.registries)
            fingerprint = found.fingerprint
        else:
            run = inline_run(ref.spec, context.config, ref.run_id or context.run_id,
                             context.registries)
            if not is_trained(run):
                print(f"dino: training the init run first: {run.directory}", file=sys.stderr)
            if train(run, context.registries, str(context.device), progress=False) == "failed":
                reason = runinfo.read_status(run.directory).get("reason")
                raise RunFailed(f"init run {run.directory} failed: {reason}")
            finished, fingerprint = FinishedRun(run, context.registries), run_fingerprint(run)
        return {"config": finished.config, "modules": finished.state()["modules"],
                "fingerprint": fingerprint.model_dump(), "directory": str(finished.directory)}
    finally:
        checkpoint.set_rng_state(state)


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

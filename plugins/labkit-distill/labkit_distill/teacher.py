"""The teacher of a distillation run: a finished labkit run named in the spec.

``method.teacher`` names it in one of two ways:

* ``{"dir": "<run directory>"}`` — the folder of a trained labkit run, wherever it lies
  (any complete copy will do; :func:`labkit.api.read_run` reads that folder and nothing
  else, and refuses in one line a folder that holds no trained run). Validation adds the
  teacher's fingerprint, ``run: {"hash": …, "checkpoint": …}`` (its identity hash and
  the verified sha256 of the final checkpoint in that folder), so the student's identity
  follows the teacher's weights: a retrained teacher gives a new student run, never a
  stale one;
* ``{"spec": {...}, "run_id": "A"}`` — the teacher's own spec (it must expand to exactly
  one run). It is validated and resolved together with the student's spec, so the
  student's run identity holds the teacher's whole resolved config (less where and how
  it runs: ``logs_dir``, ``device``, …, and its analyses). At training time the
  teacher run lives in the student's ``logs_dir`` under ``run_id`` (default: the
  student's run-id); when it is not finished it is trained first, with the unchanged
  engine. A teacher spec whose method is itself ``distill`` with a teacher spec is a
  chain (teacher → assistant → student): one spec trains its links in order, and a
  link trained before (by this or any other spec) is reused, not retrained.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from labkit.api import (
    NOT_IDENTITY,
    FinishedRun,
    PinnedRef,
    RunConfig,
    RunContext,
    RunFailed,
    UserError,
    checkpoint,
    expand,
    inline_run,
    read_run,
    runinfo,
    train,
)
from labkit.api import registries as labkit_registries

# top-level settings of where and how a run executes (logs_dir, device, …)
RUN_LOCATION = tuple(key for key in NOT_IDENTITY if "." not in key)
TEACHER_DIR = "method.teacher.dir"


class TeacherRef(PinnedRef):
    """Where the teacher comes from: a run directory, or the teacher's spec."""

    model_config = ConfigDict(extra="forbid")

    dir: str | None = Field(None, description="folder of a trained labkit run (any complete "
                                              "copy, wherever it lies)")
    spec: dict[str, Any] | None = Field(
        None, description="the teacher run's spec (one grid point), trained first when "
                          "not finished; stored resolved, so it is part of the student's "
                          "identity")
    run_id: str | None = Field(
        None, description="run-id of the teacher given by spec; null: the student's run-id")
    @field_validator("spec")
    @classmethod
    def _resolve(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        # a resolved spec (validated again when the student trains) holds the derived
        # "data" of its dataset, which a spec may not give: expand derives it afresh
        value = {k: v for k, v in value.items() if k != "data"}
        try:
            configs = expand(value, labkit_registries())
        except UserError as exc:  # keep the nested path: the message names the key to fix
            raise UserError(f"method.teacher.spec: {exc}") from None
        if len(configs) != 1:
            raise UserError(
                f"method.teacher.spec expands to {len(configs)} runs, but a teacher is one run; "
                f"for a grid over teachers give a list of teachers: "
                f'"teacher": [{{"spec": ...}}, {{"spec": ...}}]')
        # where and how fast the teacher runs is not part of what it is; its data root is
        # kept (unlike a run's own), else a teacher on files outside ./data is not found
        return {k: v for k, v in configs[0].items() if k not in RUN_LOCATION}

    @model_validator(mode="after")
    def _one_source_fingerprinted(self) -> "TeacherRef":
        if (self.dir is None) == (self.spec is None):
            raise ValueError('name the teacher by {"dir": "<run directory>"} or by '
                             '{"spec": {...}}: exactly one of the two')
        if self.dir is not None and self.run_id is not None:
            raise ValueError("run_id goes with spec; a run directory already names its run")
        if self.dir is None:
            if self.run is not None:
                raise ValueError('"run" is derived from "dir" (the teacher directory\'s '
                                 'fingerprint); leave it out')
            return self
        derived = read_run(self.dir, TEACHER_DIR).fingerprint
        stale = self.stale(derived, self.dir, "method.teacher.run",
                           "run the student's spec again (a new student run)")
        if stale:
            # a UserError passes through pydantic as is: also when the engine validates a
            # resolved config again, where it stops the student instead of training it
            # from another teacher than its identity says
            raise UserError(stale)
        self.run = derived
        return self


@contextmanager
def _isolated_rng() -> Iterator[None]:
    """Leave the global RNG states as they were: training or building the teacher must not
    change the student's random stream (else a student would depend on whether its
    teacher was already trained)."""
    state = checkpoint.rng_state()
    try:
        yield
    finally:
        checkpoint.set_rng_state(state)


def _finished(run: RunConfig) -> bool:
    """Trained: the final checkpoint and its digest are there (status.json is a report)."""
    return runinfo.training_state(run).get("state") == "finished"


def teacher_run(ref: TeacherRef, context: RunContext) -> FinishedRun:
    """The finished teacher run, trained first when ``ref`` is a spec not yet finished.

    The teacher's final model is loaded (on the student's device, eval mode) before this
    returns; the global RNG states are left unchanged.

    Raises:
        UserError: a run folder that holds no trained run (:func:`labkit.api.read_run`).
        RunFailed: training the teacher failed (its reason is in the message).
    """
    registries, device = context.registries, str(context.device)
    with _isolated_rng():
        if ref.dir is not None:  # the folder validation read, and its final checkpoint
            run = FinishedRun.from_reference(read_run(ref.dir, TEACHER_DIR), registries, device)
        else:
            link = inline_run(ref.spec, context.config, ref.run_id or context.run_id, registries)
            if not _finished(link):
                print(f"distill: training the teacher first: {link.directory}", file=sys.stderr)
            # the engine's run lock makes students trained in parallel wait for one teacher
            if train(link, registries, device, progress=False) == "failed":
                reason = runinfo.read_status(link.directory).get("reason")
                raise RunFailed(f"teacher run {link.directory} failed: {reason}")
            run = FinishedRun(link, registries, device)
        run.model  # build and load now, inside the isolated RNG
    return run

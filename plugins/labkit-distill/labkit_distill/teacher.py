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

from typing import Any

from pydantic import Field, field_validator

from labkit.api import FinishedRun, RunContext, RunRef, checkpoint, finished_link
from labkit.api import registries as labkit_registries


class TeacherRef(RunRef):
    """Where the teacher comes from: a run directory, or the teacher's spec."""

    path = "method.teacher"
    noun = "teacher"
    rerun = "run the student's spec again (a new student run)"

    spec: dict[str, Any] | None = Field(
        None, description="the teacher run's spec (one grid point), trained first when "
                          "not finished; stored resolved, so it is part of the student's "
                          "identity")
    run_id: str | None = Field(
        None, description="run-id of the teacher given by spec; null: the student's run-id")

    @field_validator("spec")
    @classmethod
    def _resolve(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # a resolved spec is validated again when the student trains
        return None if value is None else cls.one_run(value, labkit_registries())


def teacher_run(ref: TeacherRef, context: RunContext) -> FinishedRun:
    """The finished teacher run, trained first when ``ref`` is a spec not yet finished
    (:func:`labkit.api.finished_link`).

    The teacher's model is loaded (on the student's device, eval mode) before this
    returns; the global RNG states are left unchanged.

    Raises:
        UserError: a run folder that holds no trained run (:func:`labkit.api.read_run`).
        RunFailed: training the teacher failed (its reason is in the message).
    """
    run = finished_link(ref, context)
    with checkpoint.kept_rng():  # building it draws its initial weights, then loads them
        run.model
    return run

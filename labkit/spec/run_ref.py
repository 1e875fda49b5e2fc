"""A run that another run's spec names: a distillation teacher, a DINO init run, a
network of a stitch (what :mod:`labkit.store.run_ref` reads when it is named by folder).

:class:`RunRef` names the run in one of two ways, exactly one:

* ``{"dir": "<run directory>"}``: the folder of a trained labkit run, wherever it lies
  (any complete copy; :func:`labkit.store.run_ref.read_run` reads that folder and nothing
  else, and refuses one that holds no trained run). Validation adds the run's
  fingerprint, ``run: {"hash": …, "checkpoint": …}``
  (:class:`~labkit.store.runinfo.PinnedRef`), so the identity of the run that names it
  follows those weights: retraining the named run gives it a new identity;
* ``{"spec": {...}, "run_id": …}``: the run's spec, whose run is trained first (by the
  engine: :func:`labkit.engine.linked.ensure_trained`) when it is not finished.

A plugin subclasses it: ``path`` is the reference's JSON path in a spec
(``method.teacher``), which its messages name; a reference met at several paths (a
stitch's sender and receiver) leaves it ``None`` and raises ``ValueError``, which spec
validation prefixes with the path. ``noun`` names the run in messages, ``rerun`` is the
fix when a pinned run was retrained since. A subclass redeclares a field to describe it
in its own words, and checks or resolves ``spec`` in its own field validator (with
:meth:`RunRef.one_run` when the spec must be one run, stored resolved).
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from labkit.core.errors import UserError
from labkit.core.registry import Registries
from labkit.spec.grid import expand, inline_run
from labkit.store.identity import NOT_IDENTITY, RunConfig
from labkit.store.run_ref import RunReference, read_run
from labkit.store.runinfo import PinnedRef

# top-level settings of where and how a run executes (logs_dir, device, …): not what it is
RUN_LOCATION = tuple(key for key in NOT_IDENTITY if "." not in key)


class RunRef(PinnedRef):
    """A run named by its trained folder (``dir``) or by its spec (``spec``, ``run_id``)."""

    model_config = ConfigDict(extra="forbid")

    path: ClassVar[str | None] = None  # the reference's JSON path in a spec, if it has one
    noun: ClassVar[str] = "linked run"  # how messages name the run
    rerun: ClassVar[str] = "run the spec again (a new run)"  # the fix for a stale pin

    dir: str | None = Field(None, description="folder of a trained labkit run (any complete "
                                              "copy, wherever it lies)")
    spec: dict[str, Any] | None = Field(
        None, description="the run's spec, trained first when not finished")
    run_id: str | None = Field(None, description="run-id of a run given by spec")

    @model_validator(mode="after")
    def _one_source_pinned(self) -> "RunRef":
        if (self.dir is None) == (self.spec is None):
            raise ValueError('give either "dir" (a trained run\'s folder) or "spec" (trained '
                             'first when not finished): exactly one of the two')
        if self.dir is None:
            if self.run is not None:
                raise ValueError('"run" is derived from "dir" (the run directory\'s '
                                 'fingerprint); leave it out')
            return self
        if self.run_id is not None:
            raise ValueError('"run_id" goes with "spec"; a run directory already names its run')
        try:
            derived = read_run(self.dir, self.named("dir")).fingerprint
        except UserError as exc:
            raise self.mistake(str(exc)) from None
        stale = self.stale(derived, self.dir, self.named("run"), self.rerun)
        if stale:
            # a UserError passes through pydantic as is: also when the engine validates a
            # resolved config again, where it stops the run instead of training it from
            # other weights than its identity says
            raise self.mistake(stale)
        self.run = derived
        return self

    @classmethod
    def named(cls, field: str) -> str:
        """How messages name ``field``: by its JSON path, or, without ``path`` (spec
        validation then prefixes the path), a run folder or the quoted key."""
        if cls.path is not None:
            return f"{cls.path}.{field}"
        return "run folder" if field == "dir" else f'"{field}"'

    @classmethod
    def mistake(cls, message: str) -> Exception:
        """A user's mistake in this reference: a :class:`UserError` naming ``path``
        itself, or, without one, a ``ValueError`` that validation names by its path."""
        return UserError(message) if cls.path is not None else ValueError(message)

    @classmethod
    def one_run(cls, spec: dict[str, Any], registries: Registries) -> dict[str, Any]:
        """``spec`` resolved as the one run it must be, less where and how it runs
        (``logs_dir``, ``device``, …: :data:`RUN_LOCATION`). Its data root is kept, else
        a run on files outside ./data is not found. ``spec`` may be a resolved config
        (validated again): its derived ``data`` is derived afresh.

        Raises:
            UserError or ValueError (:meth:`mistake`): the spec does not validate, or
                expands to several runs.
        """
        try:
            configs = expand({k: v for k, v in spec.items() if k != "data"}, registries)
        except UserError as exc:  # keep the nested path: the message names the key to fix
            raise cls.mistake(f"{cls.named('spec')}: {exc}") from None
        if len(configs) != 1:
            key = (cls.path or "reference").rsplit(".", 1)[-1]
            raise cls.mistake(
                f"{cls.named('spec')} expands to {len(configs)} runs, but the {cls.noun} is "
                f"one run; for a grid over {cls.noun}s give a list: "
                f'"{key}": [{{"spec": ...}}, {{"spec": ...}}]')
        return {k: v for k, v in configs[0].items() if k not in RUN_LOCATION}

    def spec_run(self, naming: RunConfig, registries: Registries) -> RunConfig:
        """The run of ``spec`` as the run ``naming`` trains it (:func:`linked_runs_of`)."""
        (run,) = linked_runs_of(self.model_dump(), naming, registries)
        return run

    def reread(self) -> RunReference:
        """The run of ``dir`` read again, still the one validation pinned.

        Raises:
            UserError: the folder holds no trained run any more, or the run was retrained
                since validation.
        """
        found = read_run(self.dir, self.named("dir"))
        if found.fingerprint != self.run:
            raise UserError(f"{self.path or self.noun}: run {self.dir} was retrained since "
                            f"this run was planned; {self.rerun}")
        return found


def linked_runs_of(ref: dict[str, Any] | None, naming: RunConfig,
                   registries: Registries) -> list[RunConfig]:
    """The run a resolved reference ``ref`` (a :class:`RunRef` as a dict) gives by
    ``spec``, as the run ``naming`` trains it: under naming's ``logs_dir`` and ``name``,
    with ``ref``'s ``run_id``, default naming's run-id (:func:`labkit.spec.inline_run`).
    ``[]`` for a reference by folder, or none. A component declares the runs it trains
    first with it (``linked_runs``: :func:`labkit.cli.commands.common.linked_runs`).

    Raises:
        UserError: the spec does not validate.
    """
    if not ref or ref.get("spec") is None:
        return []
    return [inline_run(ref["spec"], naming.config, ref.get("run_id") or naming.run_id,
                       registries)]

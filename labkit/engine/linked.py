"""Runs another run trains first when they are not finished: a distillation teacher, a
DINO init run, a stitched network given by its spec (a :class:`~labkit.spec.run_ref.RunRef`).

Training one leaves the global random streams as they were, so the run that needs it
draws the same numbers whether or not the other had to be trained first.
"""
from __future__ import annotations

import sys

from labkit.analyses.base import FinishedRun
from labkit.core.errors import RunFailed
from labkit.core.registry import Registries
from labkit.engine.run import train
from labkit.methods.base import RunContext
from labkit.spec.run_ref import RunRef
from labkit.store import checkpoint, runinfo
from labkit.store.identity import RunConfig


def ensure_trained(run: RunConfig, registries: Registries, device: str | None = None,
                   what: str = "linked run", progress: bool = False) -> None:
    """Train ``run`` with the engine (:func:`labkit.engine.train`) unless it is trained
    (its final checkpoint matches its digest: :func:`labkit.store.runinfo.is_trained`),
    saying so on stderr; the global RNG states are left as they were.

    Args:
        run: the run.
        registries: registries to build its components from.
        device: torch device to train it on; ``None``: the run's own ``device``.
        what: how messages name it (``teacher``, ``init run``).
        progress: show progress (:mod:`labkit.training.progress`).

    Raises:
        RunFailed: training it failed (the reason its ``status.json`` records).
    """
    if runinfo.is_trained(run):
        return
    print(f"training the {what} first: {run.directory}", file=sys.stderr, flush=True)
    # the engine's run lock makes runs needing the same one in parallel wait for it
    with checkpoint.kept_rng():
        outcome = train(run, registries, device or run.config["device"], progress)
    if outcome == "failed":
        reason = runinfo.read_status(run.directory).get("reason")
        raise RunFailed(f"{what} {run.directory} failed to train: {reason}")


def finished_link(ref: RunRef, context: RunContext) -> FinishedRun:
    """The finished run ``ref`` names, for the run of ``context`` (a method's teacher or
    init run); nothing is loaded yet.

    By ``dir``: that folder read again, with the verified final checkpoint in it, still
    the run validation pinned (:meth:`RunRef.reread`). By ``spec``: its run as the
    run of ``context`` trains it (:meth:`RunRef.spec_run`), trained first when not
    finished (:func:`ensure_trained`), read at the checkpoint its analyses read.

    Raises:
        UserError: the folder holds no trained run, or one retrained since validation.
        RunFailed: training the run given by spec failed.
    """
    registries, device = context.registries, str(context.device)
    if ref.dir is not None:
        return FinishedRun.from_reference(ref.reread(), registries, device)
    run = ref.spec_run(RunConfig(context.config, context.run_id), registries)
    ensure_trained(run, registries, device, ref.noun)
    return FinishedRun(run, registries, device)

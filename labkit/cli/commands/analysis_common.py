"""Helpers of the commands that analyse trained runs (``extract``, ``probes``,
``saturation``, ``evaluate``, …): the finished run, its analysis under the run's lock,
the analysis's parameters from the spec and the command line. These import torch;
:mod:`labkit.cli.commands.common` does not."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from labkit.analyses import Analysis, FinishedRun
from labkit.cli import plugins
from labkit.core.errors import UserError
from labkit.store import runinfo
from labkit.store.identity import RunConfig, display_labels
from labkit.training.progress import working_on


def finished_run(run: RunConfig, spec: str) -> FinishedRun:
    """The trained run, ready for an analysis.

    Raises:
        UserError: the run is not finished (says how to train it).
    """
    status = runinfo.training_state(run)
    state = status.get("state")
    if state != "finished":
        why = f" ({status['reason']})" if status.get("reason") else ""
        raise UserError(f"run {run.directory} is {state or 'not started'}, not finished{why}; "
                        f"train it first with `labkit run {spec} --run-id {run.run_id}`")
    return FinishedRun(run, plugins.LazyRegistries(), run.config["device"])


def progress_labels(runs: list[RunConfig]) -> list[str]:
    """What progress calls each run: its model and the values that set it apart from the
    other runs (``cnn_s lr=0.1``; a grid of one: its model; see
    :func:`labkit.store.identity.display_labels`)."""
    shown, keys = display_labels([run.config for run in runs])
    named = []
    for run, label in zip(runs, shown):
        model = run.config["model"]["name"]
        named.append(label if not keys or f"={model}" in label else f"{model} {label}")
    return named


def labelled(runs: list[RunConfig]) -> Iterator[RunConfig]:
    """``runs``, each named in the progress shown while the caller works on it
    (:func:`progress_labels`)."""
    for run, label in zip(runs, progress_labels(runs)):
        with working_on(label):
            yield run


def produce(analysis: Analysis, progress: bool = True, *, unless_complete: bool = False) -> bool:
    """Run ``analysis`` holding its run's lock, so that it never races training or
    another command on the same run; returns whether it ran.

    Args:
        unless_complete: skip it when its outputs are complete (checked under the lock).
    """
    with runinfo.exclusive(analysis.run.directory):
        if unless_complete and analysis.is_complete():
            return False
        analysis.produce(progress)
        return True


def analysis_params(run: RunConfig, name: str, analysis: type, **given: Any) -> BaseModel:
    """Parameters of ``analysis``: the spec's entry ``name``, overridden by the ``given``
    command-line values that are not ``None``.

    Raises:
        UserError: a value the analysis does not accept.
    """
    params = next((dict(a) for a in run.config["analyses"] if a["name"] == name), {})
    params.pop("name", None)
    params.update({key: value for key, value in given.items() if value is not None})
    try:
        return analysis.Params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserError(f"{name} parameters: {problems}") from None

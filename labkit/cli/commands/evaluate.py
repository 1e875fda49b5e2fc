"""``labkit evaluate``: finished runs scored on another data set."""
from __future__ import annotations

import json
import numbers

import click

from labkit.analyses.evaluate import KEY, Evaluate
from labkit.cli.commands.analysis_common import analysis_params, finished_run, labelled, produce
from labkit.cli.commands.common import (DEVICE_OPTION, QUIET_OPTION, check_device, grid_arguments,
                                        load_runs)
from labkit.core.errors import UserError


def parse_dataset(text: str) -> str | dict:
    """``mnist`` → ``"mnist"``; ``{"name": "cifar10", "root": "…"}`` → that object."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--on {text!r}: not a JSON object ({exc}); give a data-set name or "
                        f"an object such as '{{\"name\": \"cifar10\", \"root\": \"data\"}}'") from None
    return value


@click.command("evaluate")
@grid_arguments
@click.option("--on", "dataset", required=True,
              help="data set to score on: a name (mnist) or a JSON object with its params")
@click.option("--split", default="eval", show_default=True,
              help="its split: train or an eval split name")
@click.option("--soft-labels", "soft_labels", default=None, type=click.Path(dir_okay=False),
              help="optional .npy of label probabilities (images x classes, the split's "
                   "order, the data set's class order): adds soft-cross-entropy, "
                   "soft-accuracy, soft-top1-agreement")
@DEVICE_OPTION
@QUIET_OPTION
def evaluate_command(spec: str, run_id: str, dataset: str, split: str, soft_labels: str | None,
                     device: str | None, quiet: bool) -> None:
    """Score every finished run of SPEC on a split of another data set (its own
    transforms, classes matched by name): loss and the run's metrics, and with
    --soft-labels the soft-label scores, one row per data set, split and soft-label file
    in each run's evaluations.csv."""
    runs = load_runs(spec, run_id, device)
    check_device(runs[0].config["device"])
    for run in labelled(runs):
        analysis = Evaluate(finished_run(run, spec),
                            analysis_params(run, "evaluate", Evaluate,
                                            dataset=parse_dataset(dataset), split=split,
                                            soft_labels=soft_labels))
        produce(analysis, not quiet, unless_complete=True)
        row = analysis.result()
        scores = ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if k not in KEY and k != "images" and isinstance(v, numbers.Real))
        click.echo(f"{run.name}-{run.hash} on {split} ({int(row['images'])} images): {scores}")


COMMANDS: list[click.Command] = [evaluate_command]

"""``labkit evaluate``: finished runs scored on another data set."""
from __future__ import annotations

import json

import click
import pandas as pd

from labkit.analyses.evaluate import Evaluate
from labkit.commands.common import (analysis_params, check_device, finished_run, load_runs,
                                    produce)
from labkit.errors import UserError


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
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--run-id", required=True, help="run-id the runs were trained under")
@click.option("--on", "dataset", required=True,
              help="data set to score on: a name (mnist) or a JSON object with its params")
@click.option("--split", default="eval", show_default=True,
              help="its split: train or an eval split name")
@click.option("--device", default=None, help="torch device (cpu, cuda:0); overrides the spec")
def evaluate_command(spec: str, run_id: str, dataset: str, split: str, device: str | None) -> None:
    """Score every finished run of SPEC on a split of another data set (its own
    transforms, classes matched by name): loss and the run's metrics, one row per data set
    and split in each run's evaluations.csv."""
    runs = load_runs(spec, run_id, device)
    check_device(runs[0].config["device"])
    for run in runs:
        analysis = Evaluate(finished_run(run, spec),
                            analysis_params(run, "evaluate", Evaluate,
                                            dataset=parse_dataset(dataset), split=split))
        produce(analysis, unless_complete=True)
        table = pd.read_csv(analysis.outputs()[0])
        row = table[table["split"] == split].iloc[-1]
        scores = ", ".join(f"{k} {row[k]:.4f}" for k in table.columns
                           if k not in ("dataset", "split", "images"))
        click.echo(f"{run.name}-{run.hash} on {split} ({int(row['images'])} images): {scores}")


COMMANDS: list[click.Command] = [evaluate_command]

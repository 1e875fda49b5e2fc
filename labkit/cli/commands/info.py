"""``labkit schema``, ``list``, ``plugins`` and ``results``: what labkit knows and has."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from labkit.cli import plugins, spec_cache
from labkit.core.errors import UserError
from labkit.core.registry import KINDS, Registries
from labkit.outputs.layers import results_table
from labkit.outputs.results import LAYERS_TABLE
from labkit.spec import json_schema
from labkit.store.atomic import write_csv


@click.command()
def schema() -> None:
    """Print the JSON schema of a spec (for editor completion)."""
    click.echo(json.dumps(json_schema(), indent=2))


@click.command("list")
@click.argument("kind")
@click.argument("pattern", default="*")
def list_(kind: str, pattern: str) -> None:
    """List registered names of KIND (models, datasets, optimizers, schedulers,
    metrics, methods, analyses) matching a wildcard PATTERN."""
    if kind not in KINDS:
        Registries()[kind]  # raises the error naming the kinds, with "did you mean"
    entries = spec_cache.matching(spec_cache.summary()[kind], pattern)
    for e in entries:
        suffix = "<torchvision model name>" if e["prefix"] else ""
        click.echo(f"{e['name']}{suffix}  [{e['plugin']}]  {e['params']}")
    if not entries:
        raise UserError(f"no {kind} match {pattern!r}; run `labkit list {kind}` for all names")


@click.command("plugins")
def plugins_() -> None:
    """List loaded plugins with their distributions, versions and commands."""
    pm = plugins.plugin_manager()
    commands = {impl.plugin_name: [c.name for c in impl.function()]
                for impl in pm.hook.labkit_commands.get_hookimpls()}
    for info in plugins.plugin_infos(pm):
        added = f"  commands: {', '.join(commands[info.name])}" if commands.get(info.name) else ""
        click.echo(f"{info.name}  {info.distribution} {info.version}{added}")


@click.command()
@click.argument("logs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="CSV file (default: stdout)")
@click.option("--run-id", "run_ids", multiple=True, help="only these run-ids (repeatable)")
@click.option("--table", "table_name", default="log", show_default=True,
              help="which table: log, layers (every per-layer measure, a row per run, "
                   "layer and split), probes, projection, receptive_field, evaluations, "
                   "saturation, intrinsic_dimension, or a plugin's (the stem of its CSV in "
                   "the run directories)")
def results(logs: tuple[str, ...], output: str | None, run_ids: tuple[str, ...],
            table_name: str) -> None:
    """Every run under LOGS (default: logs/) as one tidy CSV: a table of each run (default
    its per-epoch log) with the run's hash, run-id and config values on every row."""
    table = results_table(
        [Path(p) for p in (logs or ("logs",))], table_name, run_ids,
        on_damaged=lambda message: click.echo(f"warning: {message}", err=True),
        plugin_measures=spec_cache.measured_by_plugins() if table_name == LAYERS_TABLE else None)
    if table.empty:
        raise UserError(f"no runs found under {', '.join(logs or ('logs',))}; "
                        f"train with `labkit run SPEC --run-id ID` first")
    if output:
        write_csv(output, table)
        click.echo(f"{len(table)} rows from {table['run_dir'].nunique()} run(s) -> {output}")
    else:
        table.to_csv(sys.stdout, index=False)


COMMANDS: list[click.Command] = [schema, list_, plugins_, results]

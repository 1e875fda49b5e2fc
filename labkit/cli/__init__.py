"""The ``labkit`` command line.

User mistakes raise :class:`labkit.core.errors.UserError`; :class:`LabkitGroup` prints its
message on one line (no traceback) and exits with code 2. A grid in which some run
failed exits with code 1 after every other run has had its turn.

Commands load lazily, so that ``labkit --help`` and commands that need no torch start
fast: this module imports only click. :data:`COMMANDS` names each built-in command's
module and attribute by dotted name, with the one-line help ``--help`` shows; the
module is imported when the command runs (or its own ``--help`` is asked for).
Plugins add commands in two ways:

* the ``labkit.commands`` entry-point group (name: the command, value:
  ``module:attribute`` of the click command) — listed by ``labkit --help`` without
  importing the plugin, loaded when used;
* the ``labkit_commands`` hook (:mod:`labkit.core.hookspecs`) — answering it imports every
  plugin and torch, so it is consulted only for a command name found nowhere else;
  ``labkit plugins`` lists these commands.

``LABKIT_DISABLE_PLUGIN_AUTOLOAD`` and ``LABKIT_PLUGINS`` (:mod:`labkit.cli.plugins`) apply
to both: a declared command is used only when its distribution's plugin is loaded.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from typing import Any

import click

from labkit.core.errors import UserError

# name: ("module:attribute", one-line help); --help lists them in this order
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("labkit.cli.commands.run:run",
            "Train every run of SPEC; finished runs are skipped, unfinished ones resumed."),
    "status": ("labkit.cli.commands.status:status",
               "Per run of SPEC: training state, epoch, analyses, failure reasons."),
    "plan": ("labkit.cli.commands.status:plan",
             "Print the runs of SPEC (hash, status, the values that vary) without running."),
    "schema": ("labkit.cli.commands.info:schema", "Print the JSON schema of a spec."),
    "list": ("labkit.cli.commands.info:list_", "List registered names of KIND matching PATTERN."),
    "plugins": ("labkit.cli.commands.info:plugins_",
                "List loaded plugins with their distributions, versions and commands."),
    "results": ("labkit.cli.commands.info:results", "Every run under LOGS as one tidy CSV."),
    "plot": ("labkit.cli.commands.plot:plot", "Draw the figures of SPEC's runs (PNG and SVG)."),
    "report": ("labkit.cli.commands.report:report",
               "Write one self-contained HTML page of SPEC's runs."),
    "receptive-field": ("labkit.cli.commands.layers:receptive_field",
                        "Receptive field of every layer → receptive_field.csv."),
    "extract": ("labkit.cli.commands.layers:extract",
                "Extract the layer activations of every finished run of SPEC."),
    "probes": ("labkit.cli.commands.layers:probes", "Fit a logistic probe per layer."),
    "probe-run": ("labkit.cli.commands.layers:probe_run",
                  "Train every run of SPEC, then extract latents and fit the probes."),
    "saturation": ("labkit.cli.commands.saturation:saturation",
                   "Saturation of every layer at other deltas, from stored spectra."),
    "project": ("labkit.cli.commands.saturation:project",
                "Accuracy with each layer projected onto its principal directions."),
    "evaluate": ("labkit.cli.commands.evaluate:evaluate_command",
                 "Score every finished run of SPEC on a split of another data set."),
}
ENTRY_POINT_GROUP = "labkit.commands"
# names kept importable from here (labkit.api and older code import them)
MOVED = {"summarize": "labkit.cli.commands.run:summarize",
         "plan_table": "labkit.cli.commands.status:plan_table",
         "SET_OPTION": "labkit.cli.commands.common:SET_OPTION"}


def load(dotted: str) -> Any:
    """The object ``module:attribute`` names, importing its module (the one lazy import
    mechanism of the command line)."""
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)


def __getattr__(name: str) -> Any:
    if name in MOVED:
        return load(MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def declared_commands() -> dict[str, md.EntryPoint]:
    """Commands of the ``labkit.commands`` entry-point group whose distribution's plugin
    is loaded (the rules of :mod:`labkit.cli.plugins`, read without importing it)."""
    allow = {n.strip() for n in os.environ.get("LABKIT_PLUGINS", "").split(",") if n.strip()}
    disabled = os.environ.get("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "").lower() in ("1", "true", "yes")
    if disabled and not allow:
        return {}
    plugins = md.entry_points(group="labkit")
    dists = {ep.dist.name for ep in plugins if ep.dist and (not allow or ep.name in allow)}
    return {ep.name: ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)
            if ep.dist and ep.dist.name in dists and ep.name not in COMMANDS}


class LabkitGroup(click.Group):
    """Loads commands lazily (see the module docstring), turns :class:`UserError` into
    one line on stderr and exit code 2, and a file system that refuses a write or read
    (disk full, read-only, permissions) into one line and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *COMMANDS, *sorted(declared_commands())]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name in COMMANDS:
            return load(COMMANDS[name][0])
        declared = declared_commands()
        if name in declared:
            return declared[name].load()
        taken = {*self.commands, *COMMANDS}
        hooked = load("labkit.cli.commands.plugin_commands:hook_commands")(taken, declared)
        return hooked.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command table from :data:`COMMANDS` and the entry points: no import."""
        rows = [(name, cmd.get_short_help_str(60)) for name, cmd in self.commands.items()]
        rows += [(name, text) for name, (_, text) in COMMANDS.items()]
        rows += [(name, f"(plugin command of {ep.dist.name})")
                 for name, ep in sorted(declared_commands().items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("Commands added by plugins through the labkit_commands hook "
                             "are listed by `labkit plugins`.")

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except BrokenPipeError:  # `labkit plan … | head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes
            sys.exit(0)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}; free space or fix the "
                       f"permissions, then run the command again (finished work is kept)",
                       err=True)
            sys.exit(1)


@click.group(cls=LabkitGroup)
@click.version_option(package_name="labkit")
def cli() -> None:
    """labkit: spec grids of trained networks, measured layer by layer."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="labkit")

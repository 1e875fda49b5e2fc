"""The commands plugins add through the ``labkit_commands`` hook.

Loading them means loading every plugin (and torch), so :mod:`labkit.cli` asks for them
only when a command name is neither built in nor declared in the ``labkit.commands``
entry-point group.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import click

from labkit.cli import plugins
from labkit.core.errors import UserError


def hook_commands(taken: Collection[str],
                  declared: Mapping[str, Any] | None = None) -> dict[str, click.Command]:
    """Every command of ``labkit_commands`` by name.

    Args:
        taken: names of the built-in commands.
        declared: the ``labkit.commands`` entry points by name; a plugin that declares
            a command there and also returns it from the hook (as it should, for an
            older labkit) adds it once.

    Raises:
        UserError: a plugin's command takes a name that is built in, declared by another
            entry point, or another plugin's.
    """
    declared = declared or {}
    found: dict[str, click.Command] = {}
    for commands in plugins.plugin_manager().hook.labkit_commands():
        for command in commands:
            if command.name in declared and declared[command.name].load() is command:
                continue
            if command.name in taken or command.name in declared or command.name in found:
                raise UserError(f"a plugin adds the command {command.name!r}, which already "
                                f"exists; rename it in the plugin")
            found[command.name] = command
    return found

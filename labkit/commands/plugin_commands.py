"""The commands plugins add through the ``labkit_commands`` hook.

Loading them means loading every plugin (and torch), so :mod:`labkit.cli` asks for them
only when a command name is neither built in nor declared in the ``labkit.commands``
entry-point group.
"""
from __future__ import annotations

from collections.abc import Collection

import click

from labkit import plugins
from labkit.errors import UserError


def hook_commands(taken: Collection[str]) -> dict[str, click.Command]:
    """Every command of ``labkit_commands`` by name.

    Raises:
        UserError: a plugin's command takes a name in ``taken`` (a built-in or declared
            command) or another plugin's.
    """
    found: dict[str, click.Command] = {}
    for commands in plugins.plugin_manager().hook.labkit_commands():
        for command in commands:
            if command.name in taken or command.name in found:
                raise UserError(f"a plugin adds the command {command.name!r}, which already "
                                f"exists; rename it in the plugin")
            found[command.name] = command
    return found

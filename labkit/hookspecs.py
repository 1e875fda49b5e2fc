"""Hook specifications: the whole plugin interface of labkit.

A plugin is a module (or object) with functions marked ``@labkit.hookimpl`` whose names
match the functions below. Third-party plugins are found through the entry-point group
``labkit``; labkit's own built-ins register through the very same hooks.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("labkit")


@hookspec
def labkit_register(registries) -> None:
    """Add named components to labkit's registries.

    Args:
        registries: a :class:`labkit.registry.Registries` with one
            :class:`~labkit.registry.Registry` per kind: ``models``, ``datasets``,
            ``optimizers``, ``schedulers``, ``metrics``, ``methods``, ``analyses``.
            Call ``registries.models.register("my_net", factory)``. A name already
            taken by another plugin is an error that names both plugins.
    """


@hookspec
def labkit_commands() -> list:
    """Return click commands to add to the ``labkit`` command line.

    Returns:
        a list of :class:`click.Command`; a name already taken is an error.
    """

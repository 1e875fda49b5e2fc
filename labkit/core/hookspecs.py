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
        registries: a :class:`labkit.core.registry.Registries` with one
            :class:`~labkit.core.registry.Registry` per kind: ``models``, ``datasets``,
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


@hookspec
def labkit_check_run(config, registries) -> list:
    """Return the mistakes in one run that show before it trains.

    ``labkit plan``, ``labkit run --dry-run`` and every command that reads a spec ask
    this of every run of the grid, and of every run a run trains first (a teacher
    given by its spec), once the spec has validated: a mistake found here stops the
    command with exit code 2 before anything trains, instead of failing a run after
    minutes of training. Check only what your components own (e.g. when
    ``config["method"]["name"]`` is your method): files they will read, layer names
    on the network built on the ``meta`` device (``labkit.api.meta_model``), names
    of other components. Nothing may train here, and no data set be loaded.

    Call :func:`labkit.api.note_outside` when a check reads anything but the config
    and the code (a file), so that the grid is checked again by every command rather
    than served from labkit's cache of validated grids. labkit's own checks (device,
    folder data sets, layer patterns, ``best_metric``, ``evaluate`` analyses) answer
    this hook too (:mod:`labkit.training.checks`).

    Args:
        config: the run's resolved config (JSON-ready, defaults filled in).
        registries: the :class:`~labkit.core.registry.Registries` it was resolved with.

    Returns:
        one line per mistake, starting with its JSON path and ending with the fix
        (``"method.soft_labels.file: … not found; give …"``); an empty list (or
        ``None``) when there is none.
    """


@hookspec
def labkit_report_sections(runs) -> list:
    """Return sections to add to the HTML report of a grid (``labkit report``).

    Asked once per report, of grids that use a component of an installed plugin (a
    model, data set, method, … that the plugin registers): a grid of labkit's own
    components is reported without importing any plugin. Answer with what your plugin
    measured of these runs (tables read from their run directories; nothing may train
    or compute for long here), or nothing when the runs are none of yours.

    Build the HTML with :func:`labkit.api.html_table` (a table that scrolls inside its
    own box, never the page) and :func:`labkit.api.figure_html` (a figure embedded as a
    base64 PNG): the page must stay one self-contained file that loads nothing, so no
    ``<script>``, no ``<link>`` and no URL outside the page.

    Args:
        runs: the grid's runs (:class:`labkit.api.RunConfig`, the spec's order), some
            perhaps not started or failed (:mod:`labkit.api.runinfo` tells).

    Returns:
        a list of ``(title, html)`` pairs, each a section of the page under its title
        (``[]`` or ``None`` when there is nothing to add).
    """


@hookspec
def labkit_layer_measures(run_dir, config):
    """Return per-layer measures of one run for the layers table
    (``labkit results --table layers``, :mod:`labkit.outputs.layers`).

    Asked once per run whenever the layers table is built. Read what your plugin wrote
    into the run directory (a CSV of its analysis, say); compute nothing heavy and
    train nothing here. Return ``None`` when the run has none of your measures.

    Args:
        run_dir: the run's directory (:class:`pathlib.Path`).
        config: the run's resolved config (JSON-ready), from its ``config.json``.

    Returns:
        a :class:`pandas.DataFrame` with columns ``layer`` (labkit's layer name,
        ``layer1-0-conv1``), ``split`` (``train`` or an eval split) and one column per
        measure, named so that it says whose it is (``dino_knn_accuracy``); rows are
        joined to the table's rows of the same layer and split, and a layer or split
        the table lacks adds a row. A column labkit's own measures fill is left out,
        with a warning. ``None``: nothing for this run.
    """

"""Specs: the JSON a researcher writes, validated by pydantic and expanded into a grid.

A JSON list given where the schema expects one value is a grid axis, at any depth
(``"lr": [0.1, 0.01]`` inside the optimizer object, a list of objects where one object
is expected). Fields that are lists by type (``metrics``, ``analyses``) are not axes;
a list of lists there is. The grid is the cartesian product of all axes.

Components (model, dataset, method, optimizer, scheduler, analyses) are written as a
name or as an object ``{"name": ..., <params>}``; the params are validated against the
pydantic model the registry holds for that name, which also injects defaults.

Modules: :mod:`~labkit.spec.schema` (the fields), :mod:`~labkit.spec.grid` (axes,
resolution against the registries, identity of inputs), :mod:`~labkit.spec.files`
(reading a spec file), :mod:`~labkit.spec.messages` (validation errors as one line),
:mod:`~labkit.spec.values` (validators components share, loaded here so that parameter
models rebuilt from the command line's cache keep them), and the ``saturation`` and
``batch_augment`` sections. Everything here is torch-free, so
that reading a spec imports no torch. The names below are the spec's public face.
"""
from labkit.spec.files import MAX_DEPTH, check_raw, load_spec_file
from labkit.spec.grid import (MAX_GRID_POINTS, data_identity, expand, inline_run, resolve,
                              resolve_component, weights_identity)
from labkit.spec.messages import validate_json_types
from labkit.spec.values import file_prefix, memory_size, parse_size
from labkit.spec.schema import Component, LauncherConfig, Spec, json_schema

__all__ = ["MAX_DEPTH", "MAX_GRID_POINTS", "Component", "LauncherConfig", "Spec", "check_raw",
           "data_identity", "expand", "inline_run", "json_schema", "load_spec_file",
           "resolve", "resolve_component", "validate_json_types", "weights_identity",
           "file_prefix", "memory_size", "parse_size"]

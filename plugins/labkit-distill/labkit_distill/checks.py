"""What ``labkit plan`` finds wrong with a ``distill`` run before its teacher or the
student trains (the ``labkit_check_run`` hook): a soft-label file that is missing or no
2-D array, layer names that neither network has (checked on both networks built on the
``meta`` device), and a teacher trained at another resolution than the student's data.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from labkit.api import FinishedRun, Registries, UserError, meta_model, note_outside

# the loss parameters naming layers, and which network each names
LAYER_PARAMS = {"student_layer": "student", "teacher_layer": "teacher",
                "student_layers": "student", "teacher_layers": "teacher"}


def distill_problems(config: dict[str, Any], registries: Registries) -> list[str]:
    """One line per mistake of a ``distill`` run's method parameters; ``[]`` for any
    other method."""
    params = config["method"]
    if params["name"] != "distill":
        return []
    problems = soft_label_problems(params.get("soft_labels"))
    teacher = _teacher_config(params["teacher"], registries)
    if teacher is not None:
        problems += resolution_problems(teacher, config)
    problems += layer_problems(params["loss"], config, teacher, registries)
    return problems


def soft_label_problems(soft_labels: dict[str, Any] | None) -> list[str]:
    """``soft_labels.file`` missing, unreadable, or not a 2-D array of numbers (its rows
    and classes are checked against the data when the run starts)."""
    if soft_labels is None:
        return []
    path = Path(soft_labels["file"])
    note_outside(f"soft-label file {path}")
    where = "method.soft_labels.file"
    if not path.is_file():
        return [f"{where}: {str(path)!r} not found; give the path of a .npy file of shape "
                f"(rows, classes)"]
    try:
        probs = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return [f"{where}: {path} is no readable .npy array ({str(exc)[:120]}); write it with "
                f"numpy.save"]
    if probs.ndim != 2 or probs.dtype.kind not in "fiu":
        return [f"{where}: {path} holds a {probs.ndim}-D {probs.dtype} array; give numbers of "
                f"shape (rows, classes)"]
    return []


def _teacher_config(teacher: dict[str, Any], registries: Registries) -> dict[str, Any] | None:
    """The teacher's resolved config: its spec, or the config of its run directory;
    ``None`` when that cannot be read (validation said why)."""
    if teacher.get("spec") is not None:
        return teacher["spec"]
    try:
        return FinishedRun.from_directory(teacher["dir"], registries).config
    except (UserError, KeyError, TypeError):
        return None


def resolution_problems(teacher: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The teacher reads the student's images: both data sets' resolutions must agree."""
    theirs = teacher["dataset"].get("resolution")
    mine = config["dataset"].get("resolution")
    if not isinstance(theirs, int) or not isinstance(mine, int) or theirs == mine:
        return []
    return [f"method.teacher: the teacher is trained on {theirs}x{theirs} images but this run's "
            f"data set gives {mine}x{mine}; distillation feeds the student's images to the "
            f"teacher, so give both data sets one resolution"]


def layer_problems(loss: dict[str, Any], config: dict[str, Any],
                   teacher: dict[str, Any] | None, registries: Registries) -> list[str]:
    """Layer names of the loss that the student's or the teacher's network lacks."""
    named = {key: loss[key] for key in LAYER_PARAMS if loss.get(key)}
    if not named:
        return []
    networks = {"student": meta_model(config, registries),
                "teacher": meta_model(teacher, registries) if teacher is not None else None}
    problems = []
    for key, value in named.items():
        network = networks[LAYER_PARAMS[key]]
        if network is None:  # a plugin's model, or one that needs the real data shape
            continue
        modules = [name for name, _ in network.named_modules() if name]
        for name in [value] if isinstance(value, str) else value:
            if name not in modules:
                close = difflib.get_close_matches(name, modules, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                problems.append(f"method.loss.{key}: {name!r} is not a layer of the "
                                f"{LAYER_PARAMS[key]} network.{hint} Its layers: "
                                f"{', '.join(modules)}")
    return problems

"""What ``labkit plan`` finds wrong with a ``dino`` run before it trains (the
``labkit_check_run`` hook): a ``teacher_model`` no registry knows, and ``t_ckpt`` read
from a run that has no teacher."""
from __future__ import annotations

from typing import Any

from labkit.api import FinishedRun, Registries, UserError

# the method whose checkpoints hold a teacher (modules["teacher"])
TEACHER_METHOD = "dino"


def dino_problems(config: dict[str, Any], registries: Registries) -> list[str]:
    """One line per mistake of a ``dino`` run's method parameters; ``[]`` for any
    other method."""
    params = config["method"]
    if params["name"] != "dino":
        return []
    problems = []
    teacher_model = params.get("teacher_model")
    if teacher_model is not None and teacher_model not in registries.models:
        problems.append(f"method.teacher_model: {registries.models.unknown_message(teacher_model)}")
    if "t_ckpt" in (params.get("teacher_init"), params.get("student_init")):
        method = _init_method(params.get("init_run") or {}, registries)
        if method is not None and method != TEACHER_METHOD:
            problems.append(f"method.init_run: the run has no teacher (its method is "
                            f"{method!r}); t_ckpt reads a {TEACHER_METHOD} run's teacher, "
                            f"s_ckpt takes any run's trained network")
    return problems


def _init_method(init_run: dict[str, Any], registries: Registries) -> str | None:
    """The method of the run ``init_run`` names (a resolved spec, or a directory whose
    config is read); ``None`` when it cannot be read (validation said why)."""
    if init_run.get("spec") is not None:
        return init_run["spec"]["method"]["name"]
    try:
        return FinishedRun.from_directory(init_run["dir"], registries).config["method"]["name"]
    except (UserError, KeyError, TypeError):
        return None

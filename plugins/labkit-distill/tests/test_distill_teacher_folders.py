"""A teacher named by folder is read from that folder: a complete copy of a trained
teacher, shallow or deep, teaches with the weights in the copy, and the student's record
names the copy and the sha256 of its checkpoint; a folder that holds no trained run is
refused in one line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from distill_helpers import revalidate, student_config

from labkit.api import RunConfig, RunContext, UserError, checkpoint, runinfo, train
from labkit.testing import BROKEN_COPIES, broken_copy, copy_run, under_logs
from labkit_distill.teacher import teacher_run


def place(teacher_dir: Path, tmp_path: Path, where: str) -> Path:
    """``where`` under ``tmp_path``; IN_LOGS: :func:`labkit.testing.under_logs`."""
    return under_logs(teacher_dir, tmp_path.name) if where == "IN_LOGS" else tmp_path / where


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("where", ["teachers/t1", "archive/a/b/c/t1", "IN_LOGS"])
def test_a_copied_teacher_teaches_with_the_weights_in_its_folder(registries, teacher_dir,
                                                                tmp_path, where):
    folder = place(teacher_dir, tmp_path, where)
    final = copy_run(teacher_dir, folder)  # other weights than the original's
    config = student_config({"dir": str(folder)}, tmp_path / "logs", registries)
    assert config["method"]["teacher"]["run"] == {
        "hash": runinfo.read_config(teacher_dir)["hash"], "checkpoint": sha256(final)}

    context = RunContext(config, None, None, torch.device("cpu"), None, registries)
    teacher = teacher_run(revalidate(config).teacher, context)
    assert teacher.directory == folder
    weights = checkpoint.read(final)["modules"]["model"]
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in weights.items())


def test_the_students_record_names_the_copy_it_learnt_from(registries, teacher_dir, tmp_path):
    folder = tmp_path / "teachers" / "t1"
    final = copy_run(teacher_dir, folder)
    config = student_config({"dir": str(folder)}, tmp_path / "logs", registries,
                            dataset={"name": "digits", "subset": 300})
    student = RunConfig(config, "S")
    assert train(student, registries, progress=False) == "finished"
    recorded = runinfo.read_config(student.directory)["config"]["method"]["teacher"]
    assert recorded["dir"] == str(folder)
    assert recorded["run"]["checkpoint"] == sha256(final)


@pytest.mark.parametrize("how", list(BROKEN_COPIES))
def test_a_folder_without_a_trained_teacher_is_refused_in_one_line(registries, teacher_dir,
                                                                  tmp_path, how):
    folder = under_logs(teacher_dir, tmp_path.name)  # the original lies where it points
    broken_copy(teacher_dir, folder, how)
    with pytest.raises(UserError, match=BROKEN_COPIES[how]) as caught:
        student_config({"dir": str(folder)}, tmp_path / "logs", registries)
    assert str(caught.value).startswith(f"method.teacher.dir {folder} ")
    assert "\n" not in str(caught.value)

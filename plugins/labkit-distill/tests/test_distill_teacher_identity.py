"""A student's identity follows its teacher's weights: a teacher named by run directory
carries its fingerprint (identity hash, final checkpoint digest) into the student's
resolved config; an untrained directory is refused; a teacher spec on a folder dataset
(whose resolved config holds the derived "data") is validated again and trained."""
from __future__ import annotations

import numpy as np
import pytest
from distill_helpers import STUDENT, TEACHER_SPEC, revalidate, student_config, train_runs
from PIL import Image

from labkit.api import RunConfig, UserError, checkpoint, expand, runinfo, train


def forget_final_checkpoint(run: RunConfig) -> None:
    final = runinfo.final_checkpoint(run)
    final.unlink()
    final.with_name(final.name + ".sha256").unlink()


def test_a_retrained_teacher_directory_gives_the_student_a_new_identity(registries, tmp_path):
    (teacher,) = train_runs({**TEACHER_SPEC, "logs_dir": str(tmp_path / "teachers")},
                            registries)
    ref = {"dir": str(teacher.directory)}
    before = student_config(ref, tmp_path / "logs", registries)
    final = runinfo.final_checkpoint(teacher)
    assert before["method"]["teacher"]["run"] == {
        "hash": runinfo.read_config(teacher.directory)["hash"],
        "checkpoint": checkpoint.digest(final)}
    # validating again gives the same config
    assert student_config(ref, tmp_path / "logs", registries) == before
    revalidate(before)

    # interrupted in its last epoch (no final checkpoint): not trained, so refused
    forget_final_checkpoint(teacher)
    with pytest.raises(UserError, match=r"method\.teacher\.dir .*is not trained .*train it first"):
        student_config(ref, tmp_path / "logs", registries)

    # trained again (from its previous checkpoint): other weights file, so another student
    assert train(teacher, registries, progress=False) == "finished"
    assert checkpoint.digest(final) != before["method"]["teacher"]["run"]["checkpoint"]
    after = student_config(ref, tmp_path / "logs", registries)
    assert after["method"]["teacher"]["run"]["checkpoint"] == checkpoint.digest(final)
    assert RunConfig(after, "S").hash != RunConfig(before, "S").hash
    assert RunConfig(after, "S").directory != RunConfig(before, "S").directory

    # the stale resolved config no longer validates: its student is never trained from
    # the retrained teacher under the old identity
    with pytest.raises(UserError, match=r"method\.teacher\.run: .*retrained since"):
        revalidate(before)
    with pytest.raises(UserError, match=r"method\.teacher\.run: .*leave it out"):
        student_config({**ref, "run": before["method"]["teacher"]["run"]}, tmp_path / "logs",
                       registries)
    with pytest.raises(UserError, match=r"\"run\" is derived from \"dir\""):
        student_config({"spec": TEACHER_SPEC, "run": after["method"]["teacher"]["run"]},
                       tmp_path / "logs", registries)
    # a teacher by spec has no fingerprint, and no "run" key in the student's identity
    by_spec = student_config({"spec": TEACHER_SPEC}, tmp_path, registries)
    assert "run" not in by_spec["method"]["teacher"]


def test_a_teacher_spec_on_a_folder_dataset_is_validated_again_and_trained(registries,
                                                                          tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for label in ("a", "b"):
            folder = tmp_path / "data" / "imagefolder" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    dataset = {"name": "imagefolder", "root": str(tmp_path / "data"), "resolution": 8}
    teacher = {**TEACHER_SPEC, "model": "mlp_s", "dataset": dataset, "epochs": 1}
    spec = {**STUDENT, "dataset": dataset, "logs_dir": str(tmp_path / "logs"),
            "method": {"name": "distill", "teacher": {"spec": teacher}}}
    (config,) = expand(spec, registries)
    assert config["method"]["teacher"]["spec"]["data"]["files"] == 32  # the derived key
    revalidate(config)
    # the engine validates the resolved config again and trains the teacher from it
    (student,) = train_runs(spec, registries)
    (teacher_config,) = expand({**teacher, "logs_dir": str(tmp_path / "logs")}, registries)
    assert runinfo.training_state(RunConfig(teacher_config, "T"))["state"] == "finished"
    assert runinfo.training_state(student)["state"] == "finished"

"""The ``distill`` method through the unchanged engine: teachers named by directory or by
spec, a three-link chain from one spec, identities, exact resume, per-split columns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from distill_helpers import CLI_ENV, TEACHER_SPEC, train_runs

from labkit.api import RunConfig, UserError, checkpoint, expand, run_hash, runinfo, train
from labkit.testing import run_here
from labkit_distill.report import report_sections

STUDENT = {"model": "mlp_s", "dataset": "digits", "epochs": 2, "batch_size": 64,
           "optimizer": {"name": "sgd", "lr": 0.05}, "metrics": ["accuracy"]}


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict to tmp_path/<name>; returns the path."""
    def write(spec: dict, name: str = "spec.json"):
        path = tmp_path / name
        path.write_text(json.dumps(spec))
        return path
    return write


def distill(teacher: dict, **params) -> dict:
    return {"name": "distill", "teacher": teacher, **params}


def test_student_of_a_run_directory_logs_agreement_kl_and_teacher_accuracy(
        registries, teacher_dir, tmp_path):
    spec = {**STUDENT, "logs_dir": str(tmp_path / "logs"),
            "method": distill({"dir": str(teacher_dir)}, loss={"name": "features"})}
    (run,) = train_runs(spec, registries)
    log = pd.read_csv(run.directory / runinfo.LOG_CSV)
    teacher_log = pd.read_csv(teacher_dir / runinfo.LOG_CSV)
    # the teacher column is the teacher's own final eval accuracy, recomputed
    assert log["eval-teacher_accuracy"].tolist() == pytest.approx(
        [teacher_log["eval-accuracy"].iloc[-1]] * 2)
    assert log["eval-agreement"].between(0, 1).all() and (log["eval-teacher_kl"] >= 0).all()
    assert log["eval-agreement"].iloc[-1] > 0.5  # the student learned to agree
    ((title, body),) = report_sections([run])  # its section of `labkit report`
    assert "agreement" in title and f"{log['eval-agreement'].iloc[-1]:.4g}" in body
    assert f"{log['eval-teacher_accuracy'].iloc[-1]:.4g}" in body
    state = checkpoint.load_latest(run.directory / "checkpoints")
    assert set(state["modules"]) == {"model", "heads"}  # regressor kept, teacher left out
    assert "hint.regressor.weight" in state["modules"]["heads"]


def chain_spec(logs: str) -> dict:
    """student (mlp_s) <- assistant (cnn_xs, contrastive + cutmix) <- teacher (cnn_s)."""
    teacher = {**TEACHER_SPEC, "model": "cnn_s"}
    assistant = {**TEACHER_SPEC, "epochs": 1,
                 "method": distill({"spec": teacher}, loss="contrastive", mix={"kind": "cutmix"})}
    return {**STUDENT, "epochs": 1, "logs_dir": logs,
            "method": distill({"spec": assistant}, loss={"name": "jacobian", "top_k": 2})}


def test_three_link_chain_trains_in_order_from_one_spec(registries, tmp_path, write_spec):
    path = write_spec(chain_spec(str(tmp_path / "logs")))
    first = run_here("run", str(path), "--run-id", "A", "--quiet", env=CLI_ENV)
    assert first.returncode == 0, first.stderr
    runs = {p.parent.name.split("-")[0]: p.parent
            for p in (tmp_path / "logs").rglob(runinfo.CONFIG_JSON)}
    assert set(runs) == {"mlp_s", "cnn_xs", "cnn_s"}
    configs = {name: runinfo.read_config(d) for name, d in runs.items()}
    status = {name: runinfo.read_status(d) for name, d in runs.items()}
    assert all(s["state"] == "finished" for s in status.values())
    # a link starts only after the link it learns from finished
    assert status["cnn_s"]["updated"] <= status["cnn_xs"]["updated"] <= status["mlp_s"]["updated"]
    assert first.stderr.count("training the teacher first") == 2
    # each link's identity holds the link before it, whose directory is that config's
    assistant = configs["mlp_s"]["config"]["method"]["teacher"]["spec"]
    assert assistant["model"]["name"] == "cnn_xs"
    assert assistant["method"]["teacher"]["spec"]["model"]["name"] == "cnn_s"
    assert configs["cnn_xs"]["hash"] == run_hash(assistant)
    log = pd.read_csv(runs["mlp_s"] / runinfo.LOG_CSV)
    assert {"eval-agreement", "eval-teacher_kl", "eval-teacher_accuracy"} <= set(log.columns)

    # run again: nothing to do; the first link, from a spec of its own, is the same run
    (student,) = expand(chain_spec(str(tmp_path / "logs")), registries)
    assert train(RunConfig(student, "A"), registries, progress=False) == "skipped"
    (teacher,) = expand({**TEACHER_SPEC, "model": "cnn_s", "logs_dir": str(tmp_path / "logs")},
                        registries)
    assert RunConfig(teacher, "A").directory == runs["cnn_s"]


def test_teacher_spec_is_resolved_into_the_student_identity(registries, tmp_path):
    def student(**teacher_changes):
        spec = {**STUDENT, "method": distill({"spec": {**TEACHER_SPEC, **teacher_changes}})}
        (config,) = expand(spec, registries)
        return config

    base = student()
    teacher = base["method"]["teacher"]["spec"]
    assert teacher["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                    "weight_decay": 5e-4, "nesterov": False}  # defaults in
    assert "logs_dir" not in teacher and "device" not in teacher
    # the teacher's data root stays, or a teacher on data outside ./data is not found
    rooted = student(dataset={"name": "digits", "root": "/data"})
    assert rooted["method"]["teacher"]["spec"]["dataset"]["root"] == "/data"
    hash_of = lambda c: RunConfig(c, "A").hash  # noqa: E731
    assert hash_of(student(epochs=3)) != hash_of(base)
    assert hash_of(student(device="cuda:0", logs_dir="elsewhere")) == hash_of(base)
    assert hash_of(student(model={"name": "cnn_xs"})) == hash_of(base)  # same teacher, spelt out


def test_grids_over_teachers_students_and_losses(registries):
    teachers = [{"spec": TEACHER_SPEC}, {"spec": {**TEACHER_SPEC, "seed": 1}}]
    spec = {**STUDENT, "model": ["mlp_s", "cnn_xs"],
            "method": distill(teachers, loss=["kd", {"name": "jacobian", "top_k": [1, 3]}])}
    configs = expand(spec, registries)
    points = {(c["model"]["name"], c["method"]["teacher"]["spec"]["seed"],
               c["method"]["loss"]["name"], c["method"]["loss"].get("top_k")) for c in configs}
    assert len(configs) == len(points) == 2 * 2 * 3
    assert len({RunConfig(c, "A").hash for c in configs}) == 12


@pytest.mark.parametrize("teacher, message", [
    ({"spec": {**TEACHER_SPEC, "model": "cnn_xxs"}},
     "method.teacher.spec: model.name: unknown model 'cnn_xxs'"),
    ({"spec": {**TEACHER_SPEC, "epochs": [1, 2]}}, "expands to 2 runs"),
    ({"spec": TEACHER_SPEC, "dir": "TEACHER_DIR"}, "exactly one of the two"),
    ({"dir": "no/such/run"}, "no/such/run does not exist"),
])
def test_teacher_mistakes_are_reported_before_anything_runs(registries, teacher_dir, teacher,
                                                             message):
    teacher = {k: str(teacher_dir) if v == "TEACHER_DIR" else v for k, v in teacher.items()}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        expand({**STUDENT, "method": distill(teacher)}, registries)


def test_student_does_not_depend_on_whether_its_teacher_was_trained_already(registries,
                                                                          tmp_path):
    teacher = {**TEACHER_SPEC, "epochs": 1}
    student = {**STUDENT, "epochs": 1, "seed": 3,
               "method": distill({"spec": teacher}, mix={"kind": "mixup"})}
    # once with the teacher trained inside the student's run, once trained before
    (fresh,) = train_runs({**student, "logs_dir": str(tmp_path / "a")}, registries)
    train_runs({**teacher, "logs_dir": str(tmp_path / "b")}, registries)
    (reused,) = train_runs({**student, "logs_dir": str(tmp_path / "b")}, registries)
    weights = [checkpoint.load_latest(r.directory / "checkpoints")["modules"]["model"]
               for r in (fresh, reused)]
    for key, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][key]), key


def test_distill_run_resumes_exactly(registries, teacher_dir, tmp_path, monkeypatch):
    spec = {**STUDENT, "epochs": 4,
            "method": distill({"dir": str(teacher_dir)}, mix={"kind": "cutmix", "prob": 0.5},
                              loss={"name": "contrastive", "dim": 8})}
    (reference,) = train_runs({**spec, "logs_dir": str(tmp_path / "ref")}, registries)
    # interrupted after epoch 2: two epochs follow the resume, so the first epoch of the
    # new process (when the method computes the teacher's eval outputs) must not shift
    # the random stream of the next one
    monkeypatch.setattr(checkpoint, "KEEP", 4)
    (resumed,) = train_runs({**spec, "logs_dir": str(tmp_path / "res")}, registries)
    ckpts = resumed.directory / "checkpoints"
    for epoch in (3, 4):
        path = checkpoint.checkpoint_path(ckpts, epoch)
        path.unlink()
        path.with_name(path.name + ".sha256").unlink()
    (resumed.directory / runinfo.STATUS_JSON).unlink()
    assert train(resumed, registries, progress=False) == "finished"
    expected = checkpoint.read(checkpoint.checkpoint_path(reference.directory / "checkpoints", 4))
    again = checkpoint.read(checkpoint.checkpoint_path(ckpts, 4))
    for name in ("model", "heads"):
        for key, tensor in expected["modules"][name].items():
            assert torch.equal(tensor, again["modules"][name][key]), (name, key)
    pd.testing.assert_frame_equal(
        pd.read_csv(reference.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds"),
        pd.read_csv(resumed.directory / runinfo.LOG_CSV).drop(columns="epoch_seconds"))


def test_teacher_of_other_classes_is_refused(registries, teacher_dir, tmp_path):
    spec = {**STUDENT, "dataset": {"name": "shapes", "classes": 4, "resolution": 8},
            "logs_dir": str(tmp_path / "logs"),
            "method": distill({"dir": str(teacher_dir)})}
    (config,) = expand(spec, registries)
    with pytest.raises(UserError, match="teacher was trained on 10 classes"):
        train(RunConfig(config, "T"), registries, progress=False)


def test_unknown_layer_names_the_layers(registries, teacher_dir, tmp_path):
    spec = {**STUDENT, "logs_dir": str(tmp_path / "logs"),
            "method": distill({"dir": str(teacher_dir)},
                              loss={"name": "features", "teacher_layer": "block9"})}
    (config,) = expand(spec, registries)
    with pytest.raises(UserError, match="teacher_layer 'block9'.*block1.conv1"):
        train(RunConfig(config, "T"), registries, progress=False)


def test_soft_label_rows_must_match_the_training_split(registries, teacher_dir, tmp_path):
    path = tmp_path / "probs.npy"
    np.save(path, np.full((100, 10), 0.1))
    spec = {**STUDENT, "logs_dir": str(tmp_path / "logs"),
            "method": distill({"dir": str(teacher_dir)}, soft_labels={"file": str(path)})}
    (config,) = expand(spec, registries)
    with pytest.raises(UserError, match="100 rows; they must match the 1438 training items "
                                        "or the 1797 items of its source"):
        train(RunConfig(config, "T"), registries, progress=False)

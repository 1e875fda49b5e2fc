"""`labkit plan` finds a distillation run's mistakes before any teacher trains (issue 23):
the shipped specs with one planted mistake each, and the plan of a teacher chain. Real
CLI in process, nothing trained."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from labkit.testing import invoke

SPECS = Path(__file__).resolve().parents[3] / "specs"
TEACHER = {"model": "cnn_xs", "dataset": {"name": "digits", "resolution": 8}, "epochs": 1,
           "batch_size": 64, "metrics": ["accuracy"]}
STUDENT = {**TEACHER, "method": {"name": "distill", "teacher": {"spec": TEACHER}}}


def plan(registries, tmp_path: Path, spec: dict) -> tuple[int, str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"logs_dir": str(tmp_path / "logs"), **spec}))
    result = invoke("plan", path)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def shipped(name: str) -> dict:
    return json.loads((SPECS / name).read_text())


def planted(spec: dict, **method) -> dict:
    return {**spec, "method": {**spec["method"], **method}}


@pytest.mark.parametrize("mistake, fragment", [
    ({"soft_labels": {"file": "nowhere/cifar10h-probs.npy"}}, "method.soft_labels.file"),
    ({"loss": {"name": "features", "student_layer": "block1.conv"}},
     "method.loss.student_layer: 'block1.conv' is not a layer of the student network. "
     "Did you mean 'block1.conv1'?"),
    ({"loss": {"name": "features", "teacher_layer": "fcc"}},
     "method.loss.teacher_layer: 'fcc' is not a layer of the teacher network"),
    ({"loss": {"name": "attention", "student_layers": ["block1", "blok2"]}}, "'blok2'"),
    ({"teacher": {"spec": {**TEACHER, "dataset": {"name": "digits", "resolution": 16}}}},
     "method.teacher: the teacher is trained on 16x16 images but this run's data set gives 8x8"),
    ({"teacher": {"spec": {**TEACHER, "saturation": {"layers": ["conv*"]}}}},
     "(trained first): saturation.layers: layer patterns ['conv*'] match no layer"),
    ({"loss": {"name": "rkd", "distance_wieght": 1}},
     "method.loss.distance_wieght: unknown key 'distance_wieght'. Did you mean "
     "'distance_weight'? Valid keys here: student_layer, teacher_layer, name, weight, "
     "distance_weight, angle_weight."),
])
def test_a_mistake_is_found_before_the_teacher_trains(registries, tmp_path, mistake, fragment):
    code, output = plan(registries, tmp_path, planted(STUDENT, **mistake))
    assert code == 2 and fragment in output, output
    assert not (tmp_path / "logs").exists()  # nothing trained, nothing written


def test_a_soft_label_file_that_is_no_array_is_found(registries, tmp_path):
    (tmp_path / "probs.npy").write_bytes(b"not an array")
    code, output = plan(registries, tmp_path,
                        planted(STUDENT, soft_labels={"file": str(tmp_path / "probs.npy")}))
    assert code == 2 and "no readable .npy array" in output
    np.save(tmp_path / "probs.npy", np.full((5, 10), 0.1))
    code, output = plan(registries, tmp_path,
                        planted(STUDENT, soft_labels={"file": str(tmp_path / "probs.npy")}))
    assert code == 0, output


@pytest.mark.parametrize("name, mistake, fragment", [
    ("distill_feature_losses.json", {"loss": {"name": "similarity", "student_layer": "blok2"}},
     "'blok2' is not a layer of the student network"),
    ("distill_cues.json", {"soft_labels": {"file": "missing.npy"}}, "method.soft_labels.file"),
    ("distill_ladder.json", {"loss": {"name": "pkt", "teacher_layer": "layer9"}},
     "'layer9' is not a layer of the teacher network"),
])
def test_shipped_specs_with_a_planted_mistake_stop_at_plan(registries, tmp_path, name, mistake,
                                                            fragment):
    spec = shipped(name)
    if isinstance(spec["method"], list):  # a grid of methods: plant it in the distill one
        spec["method"] = [planted({"method": m}, **mistake)["method"]
                          if isinstance(m, dict) and m.get("name") == "distill" else m
                          for m in spec["method"]]
    else:
        spec = planted(spec, **mistake)
    code, output = plan(registries, tmp_path, spec)
    assert code == 2 and fragment in output, output


def test_the_plan_of_a_ladder_shows_every_link_in_training_order(registries, tmp_path):
    code, output = plan(registries, tmp_path, shipped("distill_ladder.json"))
    assert code == 0, output
    rows = [line.split() for line in output.splitlines()
            if re.fullmatch(r"\s*\d+ [0-9a-f]{10} .*", line)]
    assert [row[-1] for row in rows] == ["resnet56", "resnet20", "resnet8"]  # teacher first
    assert [row[3] for row in rows] == ["#2", "#3", "-"]  # each link trains for the next
    assert "1 run(s) and 2 linked run(s) they train first" in output

"""`labkit plan` finds a dino run's mistakes before its init run or itself trains (issue
23), and shows the init run it trains first. Real CLI in process, nothing trained."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TINY_HEAD

from labkit.testing import invoke

SPECS = Path(__file__).resolve().parents[3] / "specs"
SUPERVISED = {"model": "mlp_s", "dataset": {"name": "digits", "subset": 100}, "epochs": 1,
              "batch_size": 50}
DINO = {**SUPERVISED, "method": {"name": "dino", **TINY_HEAD}}


def plan(tmp_path: Path, spec: dict) -> tuple[int, str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"logs_dir": str(tmp_path / "logs"), **spec}))
    result = invoke("plan", path)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("method, fragment", [
    ({"teacher_model": "convnet_nope"}, "method.teacher_model: unknown model 'convnet_nope'"),
    ({"teacher_init": "t_ckpt", "init_run": {"spec": SUPERVISED}},
     "method.init_run: the run has no teacher (its method is 'supervised')"),
    ({"teacher_init": "random", "student_init": "t_ckpt", "init_run": {"spec": SUPERVISED}},
     "t_ckpt reads a dino run's teacher"),
    ({"track_grads": 1}, "method.track_grads: Input should be a valid boolean"),
    ({"out_dim": True}, "method.out_dim: Input should be a valid integer"),
    ({"teacher_seed": -1}, "method.teacher_seed"),
])
def test_a_mistake_is_found_before_anything_trains(dino_registries, tmp_path, method, fragment):
    code, output = plan(tmp_path, {**DINO, "method": {**DINO["method"], **method}})
    assert code == 2 and fragment in output, output
    assert not (tmp_path / "logs").exists()


def test_a_shipped_spec_with_a_planted_mistake_stops_at_plan(dino_registries, tmp_path):
    spec = json.loads((SPECS / "dino_ckpt_init.json").read_text())
    spec["method"]["init_run"]["spec"]["method"] = "supervised"  # a run without a teacher
    code, output = plan(tmp_path, spec)
    assert code == 2 and "the run has no teacher" in output, output


def test_the_plan_shows_the_init_run_first(dino_registries, tmp_path):
    code, output = plan(tmp_path, json.loads((SPECS / "dino_ckpt_init.json").read_text()))
    assert code == 0, output
    rows = [line.split() for line in output.splitlines()
            if re.fullmatch(r"\s*\d+ [0-9a-f]{10} .*", line)]
    assert [row[3] for row in rows] == ["#2-#3", "-", "-"]  # trained for both dino runs
    assert "2 run(s) and 1 linked run(s) they train first" in output

"""specs/random_teacher.json validates; the plugin works through the real command line."""
import json
import re
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

from labkit.api import expand, load_spec_file
from labkit.testing import run_cli, run_here

SPEC = Path(__file__).parents[3] / "specs" / "random_teacher.json"
README = Path(__file__).parents[1] / "README.md"
CLI_ENV = {"LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "LABKIT_PLUGINS": "dino"}


def test_random_teacher_spec_expands_to_frozen_teacher_runs(dino_registries):
    configs = expand(load_spec_file(SPEC), dino_registries)
    # 3 seeds x 2 student inits x (distilled student, untrained control)
    assert len(configs) == 12
    for config in configs:
        method = config["method"]
        assert config["dataset"]["name"] == "digits"
        assert method["name"] == "dino" and method["teacher_mode"] == "no_update"
        assert method["teacher_eval"] is True and method["crops"] is None
    assert {c["method"]["student_init"] for c in configs} == {"random", "teacher"}
    assert sorted({c["optimizer"]["lr"] for c in configs}) == [0.0, 0.001]


def test_readme_recipe_is_a_valid_spec_with_dino_top_level_fields(dino_registries, tmp_path):
    text = README.read_text()
    section = text[text.index("### DINO's recipe"):]
    block = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    spec = {**json.loads(block), "logs_dir": str(tmp_path)}
    (config,) = expand(spec, dino_registries)
    assert config["clip_grad_norm"] == 3.0
    assert config["weight_decay_schedule"] == {"shape": "cosine", "start": 0.04, "end": 0.4,
                                               "epochs": None}
    assert config["scheduler_interval"] == "step" and "clip_grad" not in config["method"]


def test_cli_loads_the_plugin_by_its_entry_point_and_plans_the_spec():
    plan = run_cli("plan", str(SPEC), env=CLI_ENV)
    assert plan.returncode == 0, plan.stderr
    assert "12 run(s)" in plan.stdout and "student_init" in plan.stdout


def test_cli_run_and_results_carry_the_probe_columns(tmp_path, dino_registries):
    spec = {"model": "cnn_xs", "dataset": {"name": "digits", "subset": 200}, "epochs": 1,
            "batch_size": 100,
            "optimizer": {"name": "adamw"}, "logs_dir": str(tmp_path / "logs"),
            "method": {"name": "dino", "hidden_dims": [16], "bottleneck_dim": 8,
                       "out_dim": 32, "crops": "2x8+2x4", "crop_augment": "flip"}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**CLI_ENV, "OMP_NUM_THREADS": "1"}
    ran = run_here("run", str(path), "--run-id", "cli", "--quiet", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = run_here("results", str(tmp_path / "logs"), env=env)
    assert results.returncode == 0, results.stderr
    table = pd.read_csv(StringIO(results.stdout))
    assert len(table) == 1 and table["config.method.crops"][0] == "2x8+2x4"
    for column in ("probe-eval-student-knn", "probe-eval-teacher-linear", "dino-kl",
                   "teacher-momentum"):
        assert 0 <= table[column][0] <= 10, column


@pytest.mark.parametrize("name", ["dino_encoders", "dino_ckpt_init", "dino_trackers",
                                  "dino_steps"])
def test_the_dino_specs_expand(dino_registries, name):
    configs = expand(load_spec_file(SPEC.parent / f"{name}.json"), dino_registries)
    assert configs and all(c["method"]["name"] == "dino" for c in configs)
    if name == "dino_ckpt_init":  # the init run's spec is resolved into the identity
        assert {c["method"]["init_run"]["spec"]["model"]["name"] for c in configs} == {"mlp_s"}

"""The command line as a user meets it: messages, exit codes, no tracebacks."""
import json
import re
from pathlib import Path

import pytest

from labkit.testing import run_here

GOOD = {"model": "cnn_xs", "dataset": "digits", "epochs": 1}


@pytest.mark.parametrize("spec, fragment", [
    ({**GOOD, "epoch": 1}, "did you mean 'epochs'"),
    ({**GOOD, "epochs": "one"}, "epochs"),
    ({**GOOD, "model": "resnet81"}, "'resnet18'"),
    ({**GOOD, "optimizer": {"name": "sgd", "momentun": 0.9}}, "did you mean 'momentum'"),
])
def test_spec_mistakes_exit_2_with_one_clear_message(write_spec, spec, fragment):
    result = run_here("run", str(write_spec(spec)), "--run-id", "X")
    assert result.returncode == 2
    assert fragment.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_bad_json_missing_file_and_missing_device(tmp_path, write_spec):
    bad = tmp_path / "bad.json"
    bad.write_text("{'model': 'cnn_xs'}")
    result = run_here("run", str(bad), "--run-id", "X")
    assert result.returncode == 2 and "line 1, column 2" in result.stderr
    result = run_here("plan", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "not found" in result.stderr
    result = run_here("run", str(write_spec(GOOD)), "--run-id", "X", "--device", "cuda:7")
    assert result.returncode == 2 and "--device cpu" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_and_dry_run_show_varying_values_and_create_nothing(tmp_path, write_spec):
    spec = write_spec({**GOOD, "optimizer": {"name": "sgd", "lr": [0.1, 0.01]}})
    plan = run_here("plan", str(spec), "--run-id", "P")
    assert plan.returncode == 0 and "optimizer.lr" in plan.stdout and "2 run(s)" in plan.stdout
    dry = run_here("run", str(spec), "--run-id", "P", "--dry-run")
    assert dry.returncode == 0 and "nothing trained" in dry.stdout
    assert not (tmp_path / "logs").exists()


def test_duplicate_grid_points_are_one_run(write_spec):
    spec = write_spec({**GOOD, "seed": [0, 0, 1], "device": ["cpu", "cuda:0"]})
    plan = run_here("plan", str(spec))
    assert plan.returncode == 0 and "2 run(s)" in plan.stdout


def test_schema_list_and_plugins():
    schema = json.loads(run_here("schema").stdout)
    assert {"model", "dataset", "optimizer", "epochs"} <= set(schema["properties"])
    listing = run_here("list", "models", "vgg1*")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "vgg11", "vgg11_s", "vgg11_xs", "vgg11_xxs", "vgg13", "vgg13_s", "vgg13_xs",
        "vgg13_xxs", "vgg16", "vgg16_s", "vgg16_xs", "vgg16_xxs", "vgg19", "vgg19_s",
        "vgg19_xs", "vgg19_xxs"]
    assert "[labkit]" in listing.stdout
    unknown = run_here("list", "modles")
    assert unknown.returncode == 2 and "did you mean 'models'" in unknown.stderr.lower()
    assert run_here("plugins").stdout.startswith("labkit  labkit ")


def test_set_overrides_spec_values_validated_like_the_file(write_spec, tmp_path):
    spec = write_spec({**GOOD, "optimizer": {"name": "sgd", "lr": 0.1}})
    result = run_here("run", str(spec), "--run-id", "S", "--quiet", "--set", "optimizer.lr=0.02",
                     "--set", "seed=[0, 1]")
    assert result.returncode == 0 and "2 finished" in result.stdout, result.stderr
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "logs").rglob("config.json")]
    assert sorted(c["seed"] for c in configs) == [0, 1]
    assert {c["optimizer"]["lr"] for c in configs} == {0.02}  # echoed in config.json
    typo = run_here("plan", str(spec), "--set", "optimizer.lrr=0.02")
    assert typo.returncode == 2 and "did you mean 'lr'" in typo.stderr.lower()
    bad = run_here("plan", str(spec), "--set", "optimizer.lr")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_the_schema_accepts_every_shipped_spec_and_readme_example_and_catches_typos():
    import jsonschema
    schema = json.loads(run_here("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    root = Path(__file__).resolve().parents[1]
    specs = {str(p): json.loads(p.read_text()) for p in sorted((root / "specs").glob("*.json"))}
    readmes = [root / "README.md", *sorted((root / "plugins").glob("*/README.md")),
               *sorted((root / "docs").rglob("*.md"))]  # the documentation site's pages
    for readme in readmes:
        for i, block in enumerate(re.findall(r"```json\n(.*?)```", readme.read_text(), re.S)):
            try:
                value = json.loads(block)
            except json.JSONDecodeError:
                continue  # a fragment, not a whole spec
            if isinstance(value, dict) and "model" in value:
                specs[f"{readme.name} block {i}"] = value
    assert len(specs) >= 5
    for where, spec in specs.items():
        errors = [e.message for e in validator.iter_errors(spec)]
        assert not errors, (where, errors)
    assert not validator.is_valid({"model": "cnn_s", "epocs": 3})  # a typo
    assert not validator.is_valid({"model": "cnn_s", "epochs": "three"})
    assert validator.is_valid({"model": ["cnn_s", {"name": "resnet18_xxs"}], "seed": [0, 1],
                               "saturation": {"delta": [0.9, 0.99]}})

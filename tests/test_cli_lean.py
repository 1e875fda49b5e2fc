"""The command line's lean start (no torch for status, plan, schema and list once a grid
is validated: labkit.cli.spec_cache), readable run labels, the plan's width and the closing
summary of ``labkit run``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from labkit import hookimpl
from labkit.cli import COMMANDS, cli, plugins, spec_cache
from labkit.cli.commands.common import load_runs
from labkit.cli.commands.run import NextSteps, summarize
from labkit.core.errors import UserError
from labkit.store import runinfo
from labkit.store.identity import display_labels
from labkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_neither_torch_nor_pandas_nor_plugins():
    code = ("import sys\nfrom labkit.cli import main\nsys.argv = ['labkit', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'labkit.cli.plugins', 'labkit.spec') "
            "if m in sys.modules)\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:  # every built-in is listed with its help, none imported
        assert f"  {name} " in out


# runs `labkit ARGS` in a fresh process, then names the heavy modules it imported
PROBE = ("import sys\nfrom labkit.cli import main\nsys.argv = ['labkit', *sys.argv[1:]]\n"
         "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
         "heavy = sorted(m for m in ('torch', 'torchvision', 'labkit.cli.builtins', 'lkplug_mod') "
         "if m in sys.modules)\nprint('HEAVY', heavy)\n")


def labkit_probe(*args: str, env: dict[str, str]) -> tuple[str, str, list[str]]:
    """``(stdout without the probe's line, stderr, heavy modules imported)`` of ``labkit
    ARGS`` run in a fresh process with ``env`` added."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("HEAVY "), done.stdout + done.stderr
    return out, done.stderr, eval(last.removeprefix("HEAVY "))


def test_status_and_plan_of_a_validated_grid_import_no_torch(write_spec, tmp_path):
    spec = write_spec({"model": "cnn_xs", "dataset": "digits", "epochs": 1,
                       "optimizer": {"name": "sgd", "lr": [0.05, 0.1]}, "seed": [0, 1]})
    env = {"LABKIT_CACHE_DIR": str(tmp_path / "cache")}
    first, _, heavy = labkit_probe("status", str(spec), "--run-id", "C", env=env)
    assert "torch" in heavy  # validated with the registries, then cached
    assert "4 not started" in first
    second, _, heavy = labkit_probe("status", str(spec), "--run-id", "C", env=env)
    assert heavy == [] and second == first
    plan, _, heavy = labkit_probe("plan", str(spec), "--run-id", "C", env=env)
    assert heavy == [] and "varies: optimizer.lr, seed" in plan and "4 run(s) under" in plan
    # what the cache gave is what validation gives
    assert [r.hash for r in load_runs(str(spec), "C")] == [
        line.split()[1] for line in first.splitlines()[1:5]]


def test_schema_and_a_cached_list_import_no_torch(tmp_path):
    env = {"LABKIT_CACHE_DIR": str(tmp_path / "cache")}
    schema, _, heavy = labkit_probe("schema", env=env)
    assert heavy == [] and "batch_augment" in json.loads(schema)["properties"]
    first, _, heavy = labkit_probe("list", "models", "resnet1*", env=env)
    assert "torch" in heavy and "resnet18_xxs  [labkit]  noskip=false" in first
    second, _, heavy = labkit_probe("list", "models", "resnet1*", env=env)
    assert heavy == [] and second == first


PLUGIN = """from labkit.api import hookimpl


def tiny_net(num_classes, in_channels, resolution, width: int = {width}):
    raise NotImplementedError  # status and plan never build it


@hookimpl
def labkit_register(registries):
    registries.models.register("tiny_net", tiny_net)
"""


def test_an_edited_plugin_module_is_validated_again(write_spec, tmp_path):
    # a plugin installed as a distribution with an entry point, its module beside it
    site = tmp_path / "site"
    (site / "lkplug-0.1.dist-info").mkdir(parents=True)
    (site / "lkplug-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lkplug\nVersion: 0.1\n")
    (site / "lkplug-0.1.dist-info" / "entry_points.txt").write_text("[labkit]\nlkplug = lkplug_mod\n")
    module = site / "lkplug_mod.py"
    module.write_text(PLUGIN.format(width=4))
    spec = write_spec({"model": "tiny_net", "dataset": "digits", "epochs": 1})
    env = {"LABKIT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(site),
           "LABKIT_PLUGINS": "lkplug"}

    def run_hash() -> tuple[str, list[str]]:
        out, err, heavy = labkit_probe("plan", str(spec), "--run-id", "P", env=env)
        assert "1 run(s) under" in out, err
        return out.splitlines()[1].split()[1], heavy

    first, heavy = run_hash()
    assert "lkplug_mod" in heavy
    assert run_hash() == (first, [])  # cached: neither torch nor the plugin imported
    module.write_text(PLUGIN.format(width=16))  # another default: another identity
    changed, heavy = run_hash()
    assert "lkplug_mod" in heavy and changed != first
    assert run_hash() == (changed, [])


def test_a_grid_on_a_folder_of_files_is_never_served_from_the_cache(write_spec, tmp_path):
    # its identity holds the folder's listing digest: a file added must give a new run
    images = tmp_path / "data" / "shapes" / "train" / "a"
    images.mkdir(parents=True)
    (images / "0.png").write_bytes(b"0" * 10)
    spec = write_spec({"model": "cnn_xs", "epochs": 1, "dataset": {
        "name": "imagefolder", "root": str(tmp_path / "data"), "folder": "shapes",
        "resolution": 8}})
    env = {"LABKIT_CACHE_DIR": str(tmp_path / "cache")}
    first, err, heavy = labkit_probe("status", str(spec), "--run-id", "F", env=env)
    assert "1 not started" in first, err
    (images / "1.png").write_bytes(b"1" * 10)
    second, err, heavy = labkit_probe("status", str(spec), "--run-id", "F", env=env)
    assert "torch" in heavy and "1 not started" in second, err
    assert second.splitlines()[1].split()[1] != first.splitlines()[1].split()[1]
    assert not (tmp_path / "cache" / spec_cache.GRIDS).exists()


def test_a_damaged_cache_is_ignored_and_rewritten(write_spec, tmp_path, monkeypatch):
    spec = write_spec({"model": "cnn_xs", "dataset": "digits", "epochs": 1, "seed": [0, 1]})
    cache = tmp_path / "cache"
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(cache))
    grid = cache / spec_cache.GRIDS / f"{spec_cache.grid_key(json.loads(spec.read_text()))}.json"
    grid.parent.mkdir(parents=True)
    grid.write_text('{"environment": {"format": 1}, "configs": [{"trunc')
    (cache / spec_cache.SUMMARY).write_bytes(b"\x00\xff")
    env = {"LABKIT_CACHE_DIR": str(cache)}
    first, err, heavy = labkit_probe("status", str(spec), "--run-id", "D", env=env)
    assert "torch" in heavy and "2 not started" in first, err
    assert json.loads(grid.read_text())["configs"]  # rewritten whole
    second, _, heavy = labkit_probe("status", str(spec), "--run-id", "D", env=env)
    assert heavy == [] and second == first


def test_invalid_specs_and_in_process_plugins_are_never_cached(write_spec, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(cache))
    spec = write_spec({"model": "tiny_inproc", "dataset": "digits", "epochs": 1})

    class InProcess:
        @hookimpl
        def labkit_register(self, registries):
            registries.models.register("tiny_inproc", lambda num_classes, in_channels,
                                       resolution, width=4: None)

    try:
        plugins.use(InProcess())
        assert len(load_runs(str(spec), "I")) == 1
    finally:
        plugins.use()
    assert not (cache / spec_cache.GRIDS).exists()  # nothing kept while plugins.use() is in force
    env = {"LABKIT_CACHE_DIR": str(cache)}
    errors = [labkit_probe("status", str(spec), "--run-id", "I", env=env)[1] for _ in range(2)]
    assert "unknown model 'tiny_inproc'" in errors[0] and errors[1] == errors[0]
    with pytest.raises(UserError) as exc:  # the same message as in process
        load_runs(str(spec), "I")
    assert str(exc.value) in errors[0]
    assert not (cache / spec_cache.GRIDS).exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_listed_command_loads(name):
    assert cli.get_command(click.Context(cli), name).name == name


def test_hook_commands_load_on_demand_and_may_not_shadow_a_builtin():
    @click.command("hello-lean")
    def hello():
        click.echo("hi from a hook command")

    class Plugin:
        @hookimpl
        def labkit_commands(self):
            return [hello]

    class Clash:
        @hookimpl
        def labkit_commands(self):
            return [click.Command("run")]

    try:
        plugins.use(Plugin())
        result = CliRunner().invoke(cli, ["hello-lean"])
        assert result.exit_code == 0 and "hi from a hook command" in result.output
        plugins.use(Plugin(), Clash())
        result = CliRunner().invoke(cli, ["hello-lean"])
        assert result.exit_code == 2 and "'run', which already exists" in result.output
    finally:
        plugins.use()


def test_labels_are_short_unique_and_made_of_what_varies():
    teacher = {"spec": {"model": {"name": "cnn_s"}, "epochs": 10}}
    configs = [{"model": {"name": "cnn_xs"}, "method": {"name": "supervised"}, "seed": 0}]
    configs += [{"model": {"name": "cnn_xs"}, "seed": 0,
                 "method": {"name": "distill", "teacher": teacher, "loss": {"name": loss}}}
                for loss in ("kd", "jacobian")]
    labels, keys = display_labels(configs)
    assert labels == ["method=supervised", "method=distill loss=kd",
                      "method=distill loss=jacobian"]
    assert keys == ["method.name", "method.loss.name"]  # the teacher adds nothing
    grid = [{"optimizer": {"lr": lr}, "seed": s, "name": "x" * 40}
            for lr in (0.05, 0.1) for s in (0, 1)]
    assert display_labels(grid)[0] == ["lr=0.05 seed=0", "lr=0.05 seed=1", "lr=0.1 seed=0",
                                       "lr=0.1 seed=1"]
    assert display_labels([{"model": {"name": "cnn_s"}, "seed": 0}])[0] == ["cnn_s"]  # one run
    long = [{"tag": "a" * 30 + "1"}, {"tag": "a" * 30 + "2"}]  # cut alike: told apart by #
    labels = display_labels(long)[0]
    assert len(set(labels)) == 2 and all(len(label) < 25 for label in labels)


def test_plan_of_distill_cues_fits_100_columns_and_tells_runs_apart():
    result = run_cli("plan", str(ROOT / "specs" / "distill_cues.json"),
                     env={"LABKIT_PLUGINS": "distill"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    assert "supervised" in result.stdout and "jacobian" in result.stdout
    # the inline teacher (cnn_s) is a row of its own, trained before the students
    assert "varies: model.name, method.name, method.loss.name" in result.stdout
    assert "1 linked run(s) they train first" in result.stdout


def test_closing_summary_shows_metrics_reasons_directories_and_next_commands(
        write_spec, capsys):
    spec = write_spec({"model": "cnn_xs", "dataset": "digits", "epochs": 1,
                       "metrics": ["accuracy"], "seed": [0, 1]})
    runs = load_runs(str(spec), "S")
    runs[0].directory.mkdir(parents=True)
    (runs[0].directory / runinfo.LOG_CSV).write_text(
        "epoch,train-loss,eval-loss,eval-accuracy\n1,2.0,1.25,0.5\n")
    runinfo.write_status(runs[1].directory, "failed", reason="loss is NaN at epoch 1")
    with pytest.raises(SystemExit) as exit_:
        summarize(["finished", "failed"], runs, NextSteps(str(spec), "S"))
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    first, second = [line for line in out.splitlines() if "seed=" in line]
    assert "seed=0" in first and "eval loss 1.2500 accuracy 0.5000" in first
    assert str(runs[0].directory) in first
    assert "seed=1" in second and "failed" in second and "loss is NaN" in second
    for command in ("status", "plot", "report"):
        assert f"labkit {command} {spec} --run-id S" in out
    assert "labkit results" in out
    assert out.splitlines()[-1] == "2 run(s): 1 finished, 0 already finished, 1 failed"


@pytest.mark.parametrize("name", ["run", "probe-run", "extract", "probes", "receptive-field",
                                  "saturation", "project", "evaluate"])
def test_commands_that_compute_take_device_and_quiet(name):
    options = {o for p in cli.get_command(click.Context(cli), name).params for o in p.opts}
    assert {"--device", "--quiet"} <= options


@pytest.mark.parametrize("name", ["plot", "report", "status", "plan", "run"])
def test_commands_reading_a_grid_take_set(name):
    options = {o for p in cli.get_command(click.Context(cli), name).params for o in p.opts}
    assert "--set" in options

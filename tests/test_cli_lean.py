"""The command line's lean start, readable run labels, the plan's width and the closing
summary of ``labkit run``."""
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from labkit import hookimpl, plugins, runinfo
from labkit.cli import COMMANDS, cli
from labkit.commands.common import load_runs
from labkit.commands.run import NextSteps, summarize
from labkit.identity import display_labels
from labkit.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_neither_torch_nor_pandas_nor_plugins():
    code = ("import sys\nfrom labkit.cli import main\nsys.argv = ['labkit', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'labkit.plugins', 'labkit.spec') "
            "if m in sys.modules)\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:  # every built-in is listed with its help, none imported
        assert f"  {name} " in out


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
    assert "varies: method.name, method.loss.name" in result.stdout


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

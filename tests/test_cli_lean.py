"""The command line's lean start (no torch and no plugin for status, plot, report, results,
schema and list of any spec, new or edited, nor for plan of runs checked before: specs are
resolved with the registries rebuilt from labkit.cli.spec_cache), one cache per
installation, readable run labels, the plan's width and the closing summary of ``labkit
run``."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from labkit import hookimpl
from labkit.cli import COMMANDS, cli, plugins, spec_cache
from labkit.cli.commands.common import apply_overrides, load_runs
from labkit.cli.commands.run import NextSteps, summarize
from labkit.core.errors import UserError
from labkit.outputs.figure_sets import MANIFEST, WORKERS_ENV
from labkit.spec import expand
from labkit.store import runinfo
from labkit.store.identity import RunConfig, display_labels
from labkit.testing import invoke, run_here

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
         "heavy = sorted(m for m in ('torch', 'torchvision', 'labkit.cli.builtins', 'lkplug_mod', "
         "'labkit_stitch') "
         "if m in sys.modules)\nprint('HEAVY', heavy)\n")


def labkit_probe(*args: str, env: dict[str, str], cwd: Path | None = None
                 ) -> tuple[str, str, list[str]]:
    """``(stdout without the probe's line, stderr, heavy modules imported)`` of ``labkit
    ARGS`` run in a fresh process with ``env`` added, in ``cwd``."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300, cwd=cwd)
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    assert last.startswith("HEAVY "), done.stdout + done.stderr
    return out, done.stderr, eval(last.removeprefix("HEAVY "))


@pytest.fixture(scope="module")
def installation(tmp_path_factory):
    """The environment of a cache folder holding this installation's summary of the
    registries (``labkit list`` builds it: the one torch import the lean tests need)."""
    env = {"LABKIT_CACHE_DIR": str(tmp_path_factory.mktemp("lean") / "cache")}
    _, err, heavy = labkit_probe("list", "models", "cnn_*", env=env)
    assert "torch" in heavy, err
    return env


def shown_hashes(status_output: str) -> list[str]:
    """The hashes of a ``labkit status`` or ``plan`` table, in order."""
    rows = [line.split() for line in status_output.splitlines()]
    return [row[1] for row in rows if len(row) > 1 and row[0].isdigit() and len(row[1]) == 10]


def resolved_hashes(spec: Path, *overrides: str) -> list[str]:
    """The run hashes of ``spec`` resolved with the registries (built-ins, in process)."""
    raw = apply_overrides(json.loads(spec.read_text()), overrides)
    return list(dict.fromkeys(RunConfig(c, "N").hash for c in expand(raw, plugins.registries())))


LEAN_GRID = {"name": "lean", "model": ["cnn_xs", "resnet18_xxs"], "epochs": 2,
             "dataset": {"name": "digits", "resolution": 12},
             "optimizer": {"name": "adam", "lr": [0.1, 0.01]}, "seed": [0, 1],
             "saturation": {"delta": 0.95},
             "analyses": ["receptive_field",
                          {"name": "probes", "C": [0.5, 2.0], "downsampling": 2, "prefix": "p"},
                          {"name": "projection", "deltas": [0.9, 1.0]}]}


def test_new_and_edited_specs_resolve_without_torch_as_the_registries_do(installation,
                                                                         write_spec):
    spec = write_spec(LEAN_GRID)  # never validated anywhere
    for overrides in ((), ("--set", "optimizer.lr=0.3", "--set", "model=mlp_s"),
                      ("--set", "scheduler=cosine",
                       "--set", 'analyses=[{"name": "probes", "C": 0.1, "memory": "2G"}]')):
        out, err, heavy = labkit_probe("status", str(spec), "--run-id", "N", *overrides,
                                       env=installation)
        assert heavy == [], err
        assert shown_hashes(out) == resolved_hashes(spec, *overrides[1::2]), err
    # a mistake in an edited spec is the message the registries give, without them
    _, err, heavy = labkit_probe("status", str(spec), "--run-id", "N", "--set", "lr=0.2",
                                 env=installation)
    assert heavy == [] and "Did you mean 'optimizer.lr'?" in err
    _, err, heavy = labkit_probe("status", str(spec), "--run-id", "N", "--set",
                                 'analyses=[{"name": "probes", "prefix": "a/b"}]',
                                 env=installation)
    assert heavy == [] and "analyses.0.prefix: the prefix starts the names" in err
    # plan checks each run once (models on the meta device: torch), then never again
    first, err, heavy = labkit_probe("plan", str(spec), "--run-id", "N", env=installation)
    assert "torch" in heavy and "8 run(s) under" in first, err
    again, err, heavy = labkit_probe("plan", str(spec), "--run-id", "N", "--set", "seed=1",
                                     env=installation)
    assert heavy == [] and "4 run(s) under" in again, err
    assert "varies: model.name, optimizer.lr" in again and "noskip" not in again


def test_plot_report_and_results_of_an_edited_grid_import_no_torch(installation, write_spec,
                                                                   tmp_path):
    spec = write_spec({"name": "looks", "model": "mlp_s", "epochs": 1, "metrics": ["accuracy"],
                       "dataset": {"name": "digits", "resolution": 8}, "saturation": {}})
    assert invoke("run", str(spec), "--run-id", "P", "--quiet").exit_code == 0
    edited = ("--set", "optimizer.lr=[0.1, 0.3]")  # the default sgd's lr, and an untrained one
    for command, said in (
            (["plot", str(spec), "--run-id", "P", *edited, "-o", str(tmp_path / "f")], "PNG"),
            (["report", str(spec), "--run-id", "P", *edited, "-o", str(tmp_path / "r.html")],
             "report of 2 run(s)"),
            (["results", str(tmp_path / "logs")], "run_hash")):
        out, err, heavy = labkit_probe(*command, env=installation)
        assert heavy == [] and said in out, (command, err)
    assert (tmp_path / "r.html").stat().st_size > 0 and any((tmp_path / "f").glob("*.png"))
    # the layers table asks only plugins that implement labkit_layer_measures: an
    # installed plugin that measures no layer (stitch) is not even imported
    with_stitch = {"LABKIT_CACHE_DIR": str(tmp_path / "cache"), "LABKIT_PLUGINS": "stitch"}
    _, err, heavy = labkit_probe("list", "models", "mlp_*", env=with_stitch)
    assert "labkit_stitch" in heavy, err
    out, err, heavy = labkit_probe("results", str(tmp_path / "logs"), "--table", "layers",
                                   env=with_stitch)
    assert heavy == [] and "layer_index" in out, err


def test_figures_drawn_on_forked_processes_are_those_drawn_in_this_one(installation,
                                                                        write_spec, tmp_path):
    spec = write_spec({"name": "forked", "model": "mlp_s", "epochs": 1, "seed": [0, 1],
                       "metrics": ["accuracy"], "dataset": {"name": "digits", "resolution": 8},
                       "saturation": {}})
    assert invoke("run", str(spec), "--run-id", "F", "--quiet").exit_code == 0
    past = time.time() - 10  # older than the manifest's racy window: both plots keep entries
    for path in Path(json.loads(spec.read_text())["logs_dir"]).rglob("*"):
        os.utime(path, (past, past))
    here, forked = tmp_path / "here", tmp_path / "forked"
    # this process imported torch: its figures are drawn in it, never on a fork
    drawn = invoke("plot", str(spec), "--run-id", "F", "-o", str(here))
    assert drawn.exit_code == 0 and "figure(s) drawn, " in drawn.output, drawn.output
    out, err, heavy = labkit_probe("plot", str(spec), "--run-id", "F", "-o", str(forked),
                                   env={**installation, WORKERS_ENV: "2"})
    assert heavy == [] and "7 figure(s) drawn on 2 processes" in out, err
    files = sorted(p.relative_to(here) for p in here.rglob("*.png"))
    assert len(files) == 7 and files == sorted(p.relative_to(forked)
                                               for p in forked.rglob("*.png"))
    for name in files:  # the same pixels, the same manifest of what each is drawn from
        assert (here / name).read_bytes() == (forked / name).read_bytes(), name
        assert (forked / name).with_suffix(".svg").stat().st_size > 0
    assert (json.loads((here / MANIFEST).read_text())["figures"].keys()
            == json.loads((forked / MANIFEST).read_text())["figures"].keys())
    again, err, _ = labkit_probe("plot", str(spec), "--run-id", "F", "-o", str(forked),
                                 env={**installation, WORKERS_ENV: "0"})
    assert f"{WORKERS_ENV}='0' is not a number of processes" in err and "Traceback" not in err


def backdate(*paths: Path) -> None:
    """Set the mtime of ``paths`` an hour back (a witness refuses files written in the
    last seconds: labkit.store.witness)."""
    for path in paths:
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 3600))


def test_a_folder_data_set_is_served_from_the_cache_while_its_files_stay(installation,
                                                                       write_spec, tmp_path):
    # its identity holds the folder's content digest: a file added must give a new run
    images = tmp_path / "data" / "shapes" / "train" / "a"
    images.mkdir(parents=True)
    (images / "0.png").write_bytes(b"0" * 10)
    backdate(images / "0.png", images, images.parent, images.parent.parent)
    spec = write_spec({"model": "cnn_xs", "epochs": 1, "dataset": {
        "name": "imagefolder", "root": str(tmp_path / "data"), "folder": "shapes",
        "resolution": 8}})

    def status() -> tuple[str, list[str]]:
        out, err, heavy = labkit_probe("status", str(spec), "--run-id", "F", env=installation)
        assert "1 not started" in out, err
        return shown_hashes(out)[0], heavy

    first, heavy = status()
    assert "torch" in heavy  # the files were never read: torchvision's walk reads them
    assert status() == (first, [])  # witnessed: not read again, no torch
    (images / "1.png").write_bytes(b"1" * 10)
    changed, heavy = status()
    assert "torch" in heavy and changed != first


def test_a_damaged_cache_is_ignored_and_rewritten(installation, write_spec, tmp_path):
    env = {"LABKIT_CACHE_DIR": str(tmp_path / "cache")}
    shutil.copytree(installation["LABKIT_CACHE_DIR"], env["LABKIT_CACHE_DIR"])
    (folder,) = (tmp_path / "cache" / spec_cache.INSTALLATIONS).iterdir()
    (folder / spec_cache.SUMMARY).write_bytes(b"\x00\xff")
    (folder / spec_cache.RESOLUTIONS).write_text('{"token": "x", "items": {"trunc')
    spec = write_spec({"model": "cnn_xs", "dataset": "digits", "epochs": 1, "seed": [0, 1]})
    first, err, heavy = labkit_probe("status", str(spec), "--run-id", "D", env=env)
    assert "torch" in heavy and "2 not started" in first, err
    assert json.loads((folder / spec_cache.SUMMARY).read_text())["kinds"]  # rewritten whole
    second, _, heavy = labkit_probe("status", str(spec), "--run-id", "D", env=env)
    assert heavy == [] and second == first


def test_invalid_specs_and_in_process_plugins_are_never_cached(installation, write_spec,
                                                               tmp_path, monkeypatch):
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
        assert len(load_runs(str(spec), "I", checked=False)) == 1
    finally:
        plugins.use()
    assert not cache.exists()  # nothing kept while plugins.use() is in force
    errors = [labkit_probe("status", str(spec), "--run-id", "I", env=installation)
              for _ in range(2)]
    assert all(heavy == [] for _, _, heavy in errors)  # the summary knows every name
    assert "unknown model 'tiny_inproc'" in errors[0][1] and errors[1][1] == errors[0][1]
    with pytest.raises(UserError) as exc:  # the same message as in process
        load_runs(str(spec), "I")
    assert str(exc.value) in errors[0][1]


def test_two_installations_keep_their_caches_side_by_side(installation, write_spec, tmp_path):
    # a second checkout of labkit, imported first from PYTHONPATH: another installation
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "labkit", checkout / "labkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    other = {**installation, "PYTHONPATH": os.pathsep.join(
        [str(checkout), os.environ.get("PYTHONPATH", "")])}
    spec = write_spec({"model": "cnn_xs", "dataset": "digits", "epochs": 1})
    for env, torch_first in ((other, True), (installation, False), (other, False)):
        # run outside this checkout: python -c imports from the working directory first
        out, err, heavy = labkit_probe("status", str(spec), "--run-id", "T", env=env,
                                       cwd=tmp_path)
        assert ("torch" in heavy) == torch_first and "1 not started" in out, (out, err, heavy)
    folders = list((Path(installation["LABKIT_CACHE_DIR"]) / spec_cache.INSTALLATIONS).iterdir())
    assert len(folders) == 2 and all((f / spec_cache.SUMMARY).is_file() for f in folders)


def test_schema_and_list_import_no_torch(installation):
    schema, _, heavy = labkit_probe("schema", env=installation)
    assert heavy == [] and "batch_augment" in json.loads(schema)["properties"]
    listed, _, heavy = labkit_probe("list", "models", "resnet1*", env=installation)
    assert heavy == [] and "resnet18_xxs  [labkit]  noskip=false" in listed


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


def test_plan_of_distill_cues_fits_100_columns_and_tells_runs_apart(monkeypatch):
    monkeypatch.setenv("LABKIT_PLUGINS", "distill")  # the registries of such a process
    plugins.use()
    try:
        result = run_here("plan", str(ROOT / "specs" / "distill_cues.json"))
    finally:
        monkeypatch.undo()
        plugins.use()
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

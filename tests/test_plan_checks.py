"""What `labkit plan` and `labkit run --dry-run` must find before anything trains (issue
23): strict JSON types in the spec and in every component's parameters, names that
become paths, mistakes the core can know without training, input that is no text.
Nothing here trains except the moved-project test. Real CLI in process, real files."""
import json
import random
import shutil
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from labkit.analyses import latents
from labkit.cli import cli, plugins
from labkit.cli.commands.common import load_runs
from labkit.cli.spec_cache import check_key
from labkit.core.errors import UserError
from labkit.spec import Component, Spec, expand, resolve_component

sys.path.insert(0, str(Path(__file__).parent))
from spec_fuzz import BASES, type_swaps  # noqa: E402

TINY = {"model": "cnn_xs", "dataset": {"name": "digits", "resolution": 8}, "batch_size": 64,
        "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}}


def invoke(*args):
    """The real command line in this process; a traceback would show as ``exception``."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args, result.exception)
    return result


def refused(spec_path, fragment, *extra):
    """``plan`` and ``run --dry-run`` both exit 2 with one error naming ``fragment``."""
    for command in (["plan", spec_path, *extra],
                    ["run", spec_path, "--run-id", "X", "--dry-run", *extra]):
        result = invoke(*command)
        assert result.exit_code == 2, (command, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and fragment in errors[0], result.output


# ---------------------------------------------------------------- strict types

@pytest.mark.parametrize("change, fragment", [
    ({"epochs": True}, "epochs"),
    ({"epochs": 2.0}, "epochs"),
    ({"seed": -0.0}, "seed"),
    ({"batch_size": 64.0}, "batch_size"),
    ({"channels_last": 1}, "channels_last"),
    ({"compile": 0.0}, "compile"),
    ({"optimizer": {"name": "sgd", "lr": True}}, "optimizer.lr"),
    ({"optimizer": {"name": "sgd", "nesterov": 1}}, "optimizer.nesterov"),
    ({"dataset": {"name": "digits", "resolution": 8.0}}, "dataset.resolution"),
    ({"saturation": {"delta": True}}, "saturation.delta"),
    ({"launcher": {"jobs": True}}, "launcher.jobs"),
    ({"analyses": [{"name": "probes", "processes": True}]}, "analyses.0.processes"),
    ({"scheduler": {"name": "cosine", "warmup_epochs": True}}, "scheduler.warmup_epochs"),
])
def test_a_boolean_is_no_number_and_a_float_no_integer(write_spec, change, fragment):
    refused(write_spec({**TINY, **change}), fragment)


def test_an_integer_is_a_float_where_a_float_is_asked(write_spec):
    result = invoke("plan", write_spec({**TINY, "optimizer": {"name": "sgd", "lr": 1}}))
    assert result.exit_code == 0, result.output


def _members(annotation):
    """The alternatives of an annotation (Optional, unions), ``Annotated`` unwrapped."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else (annotation,)
    return [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m
            for m in members]


def _scalar(annotation):
    """``int``, ``bool`` or ``float`` when ``annotation`` (Optional, Annotated or a union
    with models and literals) takes exactly one of them, else ``None``."""
    scalars = [m for m in _members(annotation) if m in (int, bool, float)]
    return scalars[0] if len(scalars) == 1 else None


WRONG = {int: [True, 2.0, -0.0], bool: [1, 0.0], float: [True, False]}


def _fields(model: type[BaseModel], prefix: str = ""):
    """``(dotted path, scalar type)`` of every int / bool / float field of ``model``
    and of the models it nests."""
    for name, field in model.model_fields.items():
        kind = _scalar(field.annotation)
        if kind is not None:
            yield f"{prefix}{name}", kind
        models = [m for m in _members(field.annotation)
                  if isinstance(m, type) and issubclass(m, BaseModel) and m is not Component]
        if len(models) == 1:  # a nested section (saturation, launcher), possibly null
            yield from _fields(models[0], f"{prefix}{name}.")


def _with(path: str, value):
    spec = json.loads(json.dumps(TINY))
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


def test_every_numeric_field_of_the_spec_refuses_other_json_types():
    registries = plugins.use()
    fields = list(_fields(Spec))
    assert len(fields) > 25 and ("saturation.downsampling", int) in fields
    for path, kind in fields:
        for value in WRONG[kind]:
            with pytest.raises(UserError, match=rf"(^|\n){path}: Input should be"):
                expand(_with(path, value), registries)


def test_every_numeric_parameter_of_every_plugin_refuses_other_json_types():
    pytest.importorskip("labkit_distill")
    pytest.importorskip("labkit_dino")
    pytest.importorskip("labkit_stitch")
    import labkit_dino
    import labkit_distill
    import labkit_stitch

    registries = plugins.use(labkit_distill, labkit_dino.plugin_module, labkit_stitch)
    try:
        checked = 0
        for registry in registries:
            for entry in registry.entries():
                name = entry.name + ("resnet18" if entry.prefix else "")
                for path, kind in _fields(entry.params):
                    for value in WRONG[kind]:
                        params = _with(path, value)
                        params = {k: v for k, v in params.items() if k not in TINY}
                        with pytest.raises(UserError, match=rf"{registry.kind}\.{path}: "
                                                             rf"Input should be"):
                            resolve_component(Component(name=name, **params), registry.kind,
                                              registry.kind, registries)
                        checked += 1
        assert checked > 300  # every plugin's parameters are in: dino alone has dozens
    finally:
        plugins.use()


def test_seeded_type_swaps_at_every_leaf_are_refused(tmp_path, monkeypatch):
    """A fuzzer of its own seeds: each numeric or boolean value of the base specs
    replaced by one of another JSON type (true for a number, 2.0 for an integer, 1
    for a boolean) is refused by plan with one line."""
    monkeypatch.chdir(tmp_path)
    swaps = [swap for seed in (23, 2301) for swap in type_swaps(BASES, random.Random(seed))]
    assert len(swaps) > 20
    for i, (spec, path) in enumerate(swaps):
        (tmp_path / f"s{i}.json").write_text(json.dumps(spec))
        result = invoke("plan", tmp_path / f"s{i}.json")
        key = [part for part in path.split(".") if not part.isdigit()][-1]  # axes: no index
        assert result.exit_code == 2 and f"{key}: " in result.output, (spec, result.output)


# ---------------------------------------------------------------- names that become paths

@pytest.mark.parametrize("name", ["../../outside", "", "a/b", "a\\b", "..", ".", "tab\there",
                                  "x" * 101])
def test_the_spec_name_is_one_folder_name(write_spec, name):
    refused(write_spec({**TINY, "name": name}), "name:")


@pytest.mark.parametrize("run_id", ["x" * 101, "a\nb", "a\\b"])
def test_a_run_id_is_one_short_folder_name(write_spec, run_id):
    result = invoke("plan", write_spec(TINY), "--run-id", run_id)
    assert result.exit_code == 2 and "--run-id" in result.output


def test_a_probe_prefix_is_one_file_name(write_spec):
    refused(write_spec({**TINY, "analyses": [{"name": "probes", "prefix": "../../x"}]}),
            "analyses.0.prefix")
    result = invoke("probes", write_spec(TINY), "--run-id", "X", "--prefix", "../../x")
    assert result.exit_code == 2 and "prefix" in result.output


def test_a_moved_project_keeps_its_latents_inside(tmp_path, monkeypatch):
    """Latents point at their folder relative to the run, and the run relative to
    them: after the project moves, extraction and probes use the new place only."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    spec = {**TINY, "dataset": {"name": "digits", "resolution": 8, "subset": 200},
            "logs_dir": "logs", "analyses": [{"name": "latents", "downsampling": 2}]}
    (old / "spec.json").write_text(json.dumps(spec))
    monkeypatch.chdir(old)
    assert invoke("run", "spec.json", "--run-id", "M", "-q").exit_code == 0
    shutil.move(old, new)
    monkeypatch.chdir(new)
    (run,) = load_runs("spec.json", "M")
    pointer = json.loads(latents.pointer_path(run.directory, 2).read_text())
    assert not Path(pointer["directory"]).is_absolute()
    assert latents.locate(run, 2).is_relative_to(new)
    for args in (["extract", "spec.json", "--run-id", "M", "-d", "2", "-q"],
                 ["probes", "spec.json", "--run-id", "M", "-d", "2", "-q"],
                 ["probes", new / "latent_datasets", "-q"]):
        assert invoke(*args).exit_code == 0, args
    assert not old.exists()  # nothing was written back where the project used to be
    assert (run.directory / "probe_performances.csv").exists()


# ---------------------------------------------------------------- found before training

@pytest.mark.parametrize("change, fragment", [
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 32}, "seed"),
    ({"seed": 2 ** 64}, "seed"),
    ({"dataset": {"name": "digits", "split_seed": -1}}, "dataset.split_seed"),
    ({"best_metric": "eval-acc"}, "best_metric: 'eval-acc' is no column"),
    ({"best_metric": "val-accuracy"}, "best_metric"),  # digits has no val split
    ({"best_metric": "eval-saturation_conv*", "saturation": {}}, "best_metric"),
    ({"analysis_checkpoint": "best"}, "best_metric is null"),
    ({"saturation": {"layers": ["conv*"]}}, "saturation.layers: layer patterns ['conv*']"),
    ({"analyses": [{"name": "receptive_field", "layers": ["nope*"]}]}, "analyses.0.layers"),
    ({"analyses": [{"name": "evaluate", "dataset": "nope"}]}, "analyses.0.dataset: unknown"),
    ({"analyses": [{"name": "evaluate", "dataset": {"name": "digits", "resolutoin": 8}}]},
     "analyses.0.dataset.resolutoin"),
    ({"analyses": [{"name": "evaluate", "dataset": "digits", "soft_labels": "nowhere.npy"}]},
     "analyses.0.soft_labels"),
    # a folder data set's identity reads its folder (content identity, issue 23 item 8)
    ({"dataset": {"name": "imagefolder", "root": "/nonexistent-labkit"}}, "dataset: Image folder"),
    ({"analyses": [{"name": "evaluate", "dataset": {"name": "tinyimagenet",
                                                    "root": "/nonexistent-labkit"}}]},
     "analyses.0.dataset: TinyImageNet not found"),
    ({"saturation": {"splits": ["val"]}}, "saturation.splits: unknown pass(es) ['val']"),
    ({"analyses": [{"name": "evaluate", "dataset": "digits", "split": "test"}]},
     "analyses.0.split: digits has no split 'test'"),
    ({"device": "meta"}, "device: meta"),
    ({"device": "cuda:99"}, "cuda:99"),
    ({"device": "mps"}, "'mps'"),
    ({"device": "nonsense"}, "device"),
    ({"batch_augment": {"name": "mixup", "alphaa": 1}},
     "batch_augment.alphaa: unknown key 'alphaa'. Did you mean 'alpha'?"),
])
def test_plan_finds_what_training_would_trip_over(write_spec, change, fragment):
    refused(write_spec({**TINY, **change}), fragment)


@pytest.mark.parametrize("metric", ["eval-accuracy", "train-loss", "epoch_seconds",
                                    "eval-saturation_fc"])
def test_a_best_metric_of_a_real_column_passes(write_spec, metric):
    spec = write_spec({**TINY, "best_metric": metric, "saturation": {}})
    assert invoke("plan", spec).exit_code == 0


def test_a_device_given_on_the_command_line_is_checked_too(write_spec):
    result = invoke("run", write_spec(TINY), "--run-id", "X", "--dry-run", "--device", "meta")
    assert result.exit_code == 2 and "meta" in result.output


def test_a_union_member_is_no_part_of_the_path(write_spec):
    result = invoke("plan", write_spec({**TINY, "batch_augment": [{"name": "cutmix",
                                                                    "alpha": True}]}))
    (line,) = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert line.startswith("error: batch_augment.0.alpha: Input should be a valid number")
    assert "CutMix" not in result.output and "Mixup" not in result.output


# ---------------------------------------------------------------- input that is no text

def test_a_lone_surrogate_anywhere_is_one_message(tmp_path, write_spec):
    for change in ({"name": "\ud800"}, {"optimizer": {"name": "sgd\udfff"}},
                   {"\ud800": 1}):
        path = tmp_path / "s.json"
        path.write_text(json.dumps({**TINY, **change}))  # JSON escapes it: \ud800
        result = invoke("plan", path)
        assert result.exit_code == 2 and "surrogate" in result.output, result.output
    result = invoke("plan", write_spec(TINY), "--set", "name=\udcff")
    assert result.exit_code == 2 and "surrogate" in result.output


def test_a_deeply_nested_set_is_one_message(write_spec):
    for depth in (40, 900, 100_000):
        result = invoke("plan", write_spec(TINY), "--set", "x=" + "[" * depth + "]" * depth)
        assert result.exit_code == 2 and "nested" in result.output, result.output[-300:]


def test_the_spec_cache_keys_any_text():
    assert check_key({"name": "\ud800"}, "A") != check_key({"name": "\ud801"}, "A")


def test_an_existing_soft_label_file_passes_plan(tmp_path, write_spec):
    np.save(tmp_path / "soft.npy", np.full((10, 10), 0.1))
    spec = write_spec({**TINY, "analyses": [{"name": "evaluate", "dataset": "digits",
                                             "soft_labels": str(tmp_path / "soft.npy")}]})
    assert invoke("plan", spec).exit_code == 0


def test_a_grouping_key_never_makes_a_figure_leave_its_folder():
    from labkit.outputs.figures import grid_stem

    assert "/" not in grid_stem(["model.sender.where.a/../../x"])
    assert "\\" not in grid_stem(["a\\b"])

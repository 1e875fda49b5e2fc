"""Teacher and student initialised from a finished run's checkpoint (t_ckpt / s_ckpt)."""
import json

import pytest
import torch
from conftest import TINY_HEAD

from labkit.api import (FinishedRun, RunConfig, UserError, checkpoint, expand, run_fingerprint,
                        runinfo, train)
from labkit_dino.method import INIT_RECORD


def trained(run: RunConfig, registries) -> RunConfig:
    assert train(run, registries, "cpu", progress=False) == "finished"
    return run


@pytest.fixture
def source(dino_registries, dino_run):
    """A finished 1-epoch EMA dino run on 200 digits (student and teacher differ)."""
    run = dino_run(epochs=1, subset=200, logs="source", student_init="random", seed=3)
    return trained(run, dino_registries)


def final_modules(run: RunConfig) -> dict:
    return checkpoint.read(runinfo.final_checkpoint(run))["modules"]


def encoder_part(state: dict, prefix: str = "") -> dict:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}


def test_teacher_and_student_load_the_runs_networks_and_identity_pins_it(source, dino_method):
    method = dino_method(teacher_init="t_ckpt", student_init="s_ckpt", teacher_mode="no_update",
                         init_run={"dir": str(source.directory)}, model="cnn_xs")
    modules = final_modules(source)
    teacher = method.teacher.state_dict()
    for key, value in encoder_part(modules["teacher"], "network.").items():
        assert torch.equal(teacher["network." + key], value), key
    for key, value in modules["teacher"].items():
        if key.startswith("head."):
            assert torch.equal(teacher[key], value), key
    student = method.context.model.state_dict()
    for key, value in encoder_part(modules["model"]).items():
        assert torch.equal(student[key], value), key
    for key, value in modules["head"].items():
        assert torch.equal(method.student.head.state_dict()[key], value), key
    # the source's linear probe is not taken: this run's probe starts at zero
    assert not method.context.model.fc.weight.any()
    # the source's student and teacher differ (random student init, one epoch of EMA)
    first = next(iter(encoder_part(modules["model"])))
    assert not torch.equal(teacher["network." + first], student[first])
    pinned = method.context.config["method"]["init_run"]["run"]
    assert pinned == {"hash": source.hash,
                      "checkpoint": checkpoint.digest(runinfo.final_checkpoint(source))}


def test_student_init_teacher_copies_the_loaded_teacher(source, dino_method):
    method = dino_method(teacher_init="s_ckpt", student_init="teacher",
                         init_run={"dir": str(source.directory)})
    modules = final_modules(source)
    for key, value in encoder_part(modules["model"]).items():
        assert torch.equal(method.teacher.network.state_dict()[key], value), key
    for (name, s), (_, t) in zip(method.student.dino_parameters(),
                                 method.teacher.dino_parameters()):
        assert torch.equal(s, t), name


def test_a_run_that_is_not_trained_is_refused_at_validation(dino_registries, dino_run, tmp_path):
    run = dino_run(epochs=1, subset=200, logs="source")
    run.directory.mkdir(parents=True)
    (run.directory / runinfo.CONFIG_JSON).write_text(json.dumps(
        {"config": run.config, "run_id": run.run_id, "hash": run.hash}))
    with pytest.raises(Exception, match="not trained.*labkit run SPEC --run-id T"):
        dino_run(epochs=1, teacher_init="t_ckpt", init_run={"dir": str(run.directory)})


def test_contradictions_are_spec_errors(source, dino_run):
    with pytest.raises(Exception, match="give init_run"):
        dino_run(student_init="s_ckpt")
    with pytest.raises(Exception, match="init_run is read only by"):
        dino_run(init_run={"dir": str(source.directory)})
    with pytest.raises(Exception, match="drop teacher_model"):
        dino_run(teacher_init="t_ckpt", teacher_model="cnn_xs",
                 init_run={"dir": str(source.directory)})


@pytest.mark.parametrize("init_run, message", [
    ({"spec": {"model": "cnn_xxs", "dataset": "digits"}},
     r"method\.init_run\.spec: model\.name: unknown model 'cnn_xxs'"),
    ({"spec": {"model": "mlp_s", "dataset": "digits", "epochs": [1, 2]}},
     r"method\.init_run\.spec expands to 2 runs.* give a list: \"init_run\": \["),
    ({"spec": {"model": "mlp_s", "dataset": "digits"}, "dir": "x"}, "exactly one of the two"),
])
def test_init_run_mistakes_name_their_json_path(dino_run, init_run, message):
    with pytest.raises(UserError, match=message):
        dino_run(teacher_init="t_ckpt", init_run=init_run)


def test_t_ckpt_of_a_supervised_run_names_the_fix(dino_registries, tmp_path, dino_method):
    spec = {"model": "cnn_xs", "dataset": {"name": "digits", "subset": 200}, "epochs": 1,
            "batch_size": 100, "logs_dir": str(tmp_path / "sup")}
    (config,) = expand(spec, dino_registries)
    run = trained(RunConfig(config, "S"), dino_registries)
    with pytest.raises(UserError, match="has no teacher.*s_ckpt takes any run"):
        dino_method(teacher_init="t_ckpt", init_run={"dir": str(run.directory)})
    # s_ckpt takes the supervised network as the student encoder; the head stays random
    method = dino_method(student_init="s_ckpt", teacher_mode="no_update",
                         init_run={"dir": str(run.directory)})
    supervised = final_modules(run)["model"]
    for key, value in encoder_part(supervised).items():
        assert torch.equal(method.context.model.state_dict()[key], value), key


def test_init_run_by_spec_is_trained_first_and_recorded(dino_registries, dino_run, tmp_path):
    source_spec = {"model": "cnn_xs", "dataset": {"name": "digits", "subset": 200},
                   "epochs": 1, "batch_size": 100,
                   "method": {"name": "dino", **TINY_HEAD, "student_init": "random"}}
    run = dino_run(epochs=1, subset=200, student_init="t_ckpt", teacher_mode="no_update",
                   init_run={"spec": source_spec, "run_id": "src"})
    trained(run, dino_registries)
    record = json.loads((run.directory / INIT_RECORD).read_text())
    source_run = FinishedRun.from_directory(record["directory"], dino_registries).run
    assert source_run.run_id == "src" and source_run.config["method"]["name"] == "dino"
    assert record["run"] == run_fingerprint(source_run).model_dump()
    assert record["student_init"] == "t_ckpt"


def test_a_checkpointed_teacher_of_another_model_names_it(source, dino_method):
    with pytest.raises(UserError, match="teacher from init_run is {'name': 'cnn_xs'}; make"):
        dino_method(model="mlp_s", teacher_init="t_ckpt",
                    init_run={"dir": str(source.directory)})
    # a frozen teacher of another architecture and an independent student are fine
    method = dino_method(model="mlp_s", teacher_init="t_ckpt", student_init="random",
                         teacher_mode="no_update", init_run={"dir": str(source.directory)})
    assert type(method.teacher.network) is not type(method.student.network) or \
        method.teacher.network.state_dict().keys() != method.student.network.state_dict().keys()

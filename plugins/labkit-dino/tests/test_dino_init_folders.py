"""An init run named by folder is read from that folder: a complete copy of a trained run,
shallow or deep, gives the weights in the copy, and dino_init.json names the copy and
the sha256 of its checkpoint; a folder that holds no trained run is refused in one line."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import labkit_dino
from labkit.api import RunConfig, UserError, checkpoint, expand, runinfo, train, use
from labkit.testing import BROKEN_COPIES, broken_copy, copy_run, under_logs
from labkit_dino.method import INIT_RECORD


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The folder of a supervised cnn_xs run on 200 digits, one epoch, trained once."""
    spec = {"model": "cnn_xs", "dataset": {"name": "digits", "subset": 200}, "epochs": 1,
            "batch_size": 100, "logs_dir": str(tmp_path_factory.mktemp("source") / "logs")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
        monkeypatch.delenv("LABKIT_PLUGINS", raising=False)
        registries = use(labkit_dino.plugin_module)
        (config,) = expand(spec, registries)
        run = RunConfig(config, "S")
        assert train(run, registries, progress=False) == "finished"
        use()
    torch.set_num_threads(threads)
    return run.directory


def place(source: Path, tmp_path: Path, where: str) -> Path:
    """``where`` under ``tmp_path``; IN_LOGS: :func:`labkit.testing.under_logs`."""
    return under_logs(source, tmp_path.name) if where == "IN_LOGS" else tmp_path / where


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("where", ["teachers/t1", "archive/a/b/c/t1", "IN_LOGS"])
def test_a_copied_run_initialises_from_the_weights_in_its_folder(source, dino_method, tmp_path,
                                                                 where):
    folder = place(source, tmp_path, where)
    final = copy_run(source, folder)  # other weights than the original's
    method = dino_method(student_init="s_ckpt", teacher_mode="no_update",
                         init_run={"dir": str(folder)})
    assert method.context.config["method"]["init_run"]["run"] == {
        "hash": runinfo.read_config(source)["hash"], "checkpoint": sha256(final)}
    student = method.context.model.state_dict()
    weights = checkpoint.read(final)["modules"]["model"]
    encoder = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    assert encoder and all(torch.equal(student[k], v) for k, v in encoder.items())


def test_the_init_record_names_the_copy_it_read(source, dino_registries, dino_run, tmp_path):
    folder = tmp_path / "teachers" / "t1"
    final = copy_run(source, folder)
    run = dino_run(epochs=1, subset=200, student_init="s_ckpt", teacher_mode="no_update",
                   init_run={"dir": str(folder)})
    assert train(run, dino_registries, progress=False) == "finished"
    record = json.loads((run.directory / INIT_RECORD).read_text())
    assert record["directory"] == str(folder)
    assert record["run"]["checkpoint"] == sha256(final)


@pytest.mark.parametrize("how", list(BROKEN_COPIES))
def test_a_folder_without_a_trained_run_is_refused_in_one_line(source, dino_run, tmp_path, how):
    folder = under_logs(source, tmp_path.name)  # the original lies where it points
    broken_copy(source, folder, how)
    with pytest.raises(UserError, match=BROKEN_COPIES[how]) as caught:
        dino_run(student_init="s_ckpt", teacher_mode="no_update", init_run={"dir": str(folder)})
    assert str(caught.value).startswith(f"method.init_run.dir {folder} ")
    assert "\n" not in str(caught.value)

"""A run named by its folder is read from that folder (labkit.store.run_ref): any complete copy
of a trained run, shallow or deep, is usable and read there; a folder that holds no
trained run is refused in one line saying why."""
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from labkit.analyses import FinishedRun
from labkit.api import RunFingerprint, read_run
from labkit.cli import plugins
from labkit.core.errors import UserError
from labkit.engine import train
from labkit.spec import expand
from labkit.store import checkpoint
from labkit.store.atomic import file_sha256
from labkit.store.identity import RunConfig, run_hash
from labkit.testing import broken_copy, copy_run, under_logs

FINAL = Path("checkpoints") / "epoch_0001.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunConfig:
    """mlp_s on 300 digits at 8 px, one epoch, trained once for the module."""
    registries = plugins.use()
    logs = tmp_path_factory.mktemp("run_ref") / "logs"
    (config,) = expand({"model": "mlp_s", "epochs": 1, "batch_size": 64, "logs_dir": str(logs),
                        "dataset": {"name": "digits", "resolution": 8, "subset": 300}},
                       registries)
    run = RunConfig(config, "A")
    assert train(run, registries, progress=False) == "finished"
    return run


def another_runs_config(folder: Path) -> None:
    """Replace the folder's config.json by a consistent config of another run."""
    info = json.loads((folder / "config.json").read_text())
    info["config"]["optimizer"]["lr"] = 0.5
    info["hash"] = run_hash(info["config"])
    (folder / "config.json").write_text(json.dumps(info))


@pytest.mark.parametrize("where", ["teachers/t1", "RELATIVE", "archive/a/b/c/t1",
                                   "DEEP_IN_LOGS"])
def test_a_complete_copy_is_read_where_it_lies(trained, tmp_path, monkeypatch, where):
    # RELATIVE: teachers/t1 from the working directory (fewer than four parents);
    # DEEP_IN_LOGS: four levels under the original's logs_dir, where a reference that
    # rebuilds the location from config.json finds the original run instead of the copy
    folder = {"DEEP_IN_LOGS": under_logs(trained.directory, tmp_path.name),
              "RELATIVE": Path("teachers/t1")}.get(where, tmp_path / where)
    monkeypatch.chdir(tmp_path)
    copy_run(trained.directory, folder)
    ref = read_run(folder, "RUN")
    assert ref.folder == folder and ref.run.directory == folder
    assert ref.checkpoint == folder / FINAL
    assert ref.sha256 == file_sha256(folder / FINAL) != file_sha256(trained.directory / FINAL)
    assert ref.fingerprint == RunFingerprint(hash=trained.hash, checkpoint=ref.sha256)

    registries = plugins.use()
    model = FinishedRun.from_reference(ref, registries).model
    copied = checkpoint.read(folder / FINAL)["modules"]["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in copied.items())
    assert FinishedRun.from_directory(folder, registries).directory == folder


def _damage(name: str, edit: Callable[[Path], object]) -> Callable[[RunConfig, Path], None]:
    def damage(trained: RunConfig, folder: Path) -> None:
        shutil.copytree(trained.directory, folder)
        edit(folder / name)
    return damage


def _named_for_another(trained: RunConfig, folder: Path) -> None:
    shutil.copytree(trained.directory, folder)
    another_runs_config(folder)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_lr(path: Path) -> None:
    info = json.loads(path.read_text())
    info["config"]["optimizer"]["lr"] = 0.999
    path.write_text(json.dumps(info))


REFUSED = {
    # config.json without the checkpoints, four levels under the original's logs_dir
    "config only": (lambda run, folder: broken_copy(run.directory, folder, "config only"),
                    "is not trained .*train it first"),
    "missing": (lambda trained, folder: None, "does not exist"),
    "a file": (lambda trained, folder: folder.write_text("{}"), "is a file, not a run folder"),
    "empty folder": (lambda trained, folder: folder.mkdir(), "holds no config.json"),
    "garbage config": (_damage("config.json", lambda p: p.write_bytes(b"\xff\x00{garbage")),
                       "damaged config.json"),
    "deep config": (_damage("config.json", lambda p: p.write_text("[" * 100_000)),
                    "damaged config.json"),
    "list config": (_damage("config.json", lambda p: p.write_text("[1, 2]")),
                    "damaged config.json"),
    "config without a run": (_damage("config.json", lambda p: p.write_text('{"hash": "x"}')),
                             "holds no labkit run config"),
    "edited config": (_damage("config.json", _edit_lr), "records hash .* but hashes to"),
    "config of another run": (_damage("config.json", lambda p: another_runs_config(p.parent)),
                              "holds files of two runs"),
    "named for another run": (_named_for_another, "is named for run"),
    "damaged checkpoint": (_damage(str(FINAL), _flip_last_byte),
                           "damaged final checkpoint .*does not match its digest"),
    "truncated checkpoint": (_damage(str(FINAL), lambda p: p.write_bytes(p.read_bytes()[:100])),
                             "damaged final checkpoint .*does not match its digest"),
    "no digest": (_damage(f"{FINAL}.sha256", Path.unlink), "no digest file"),
    "garbage digest": (_damage(f"{FINAL}.sha256", lambda p: p.write_bytes(b"\xff\xfe\x00")),
                       "damaged final checkpoint"),
    "no checkpoints": (_damage("checkpoints", shutil.rmtree), "is not trained"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_folder_that_holds_no_trained_run_is_refused_in_one_line(trained, tmp_path, case):
    make, why = REFUSED[case]
    folder = under_logs(trained.directory, tmp_path.name)  # where the original is found
    if case == "named for another run":
        folder = folder.with_name(trained.directory.name)
    folder.parent.mkdir(parents=True)
    make(trained, folder)
    with pytest.raises(UserError, match=why) as caught:
        read_run(folder, "RUN_A")
    message = str(caught.value)
    assert message.startswith(f"RUN_A {folder} ") and "\n" not in message
    assert "weights_only" not in message and "Traceback" not in message

"""Networks named by folder (a stitch's sender / receiver ``dir``, ``labkit cka RUN_A
RUN_B``) are read from that folder: a complete copy of a trained run, shallow or deep,
gives the weights in the copy, and the stitch config, the provenance records and the CKA
table name the copy and the sha256 of its checkpoint; a folder that holds no trained run
is refused in one line (exit 2 from the command line)."""
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from labkit.api import LabkitGroup, RunConfig, UserError, checkpoint, expand
from labkit.testing import BROKEN_COPIES, broken_copy, copy_run, under_logs
from labkit_stitch import provenance
from labkit_stitch.commands import cka_command
from labkit_stitch.refs import trained_network
from labkit_stitch.tables import stitched_params


def place(net: Path, tmp_path: Path, where: str) -> Path:
    """``where`` under ``tmp_path``; IN_LOGS: :func:`labkit.testing.under_logs`."""
    return under_logs(net, tmp_path.name) if where == "IN_LOGS" else tmp_path / where


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stitch_config(folder: Path, logs: Path, registries) -> dict:
    ref = {"dir": str(folder)}
    (config,) = expand({"model": {"name": "stitched", "sender": ref, "receiver": ref,
                                  "sender_layer": "block1", "receiver_layer": "block2"},
                        "dataset": "digits", "epochs": 1, "logs_dir": str(logs)}, registries)
    return config


def cka(*args: str):
    return CliRunner().invoke(LabkitGroup(commands={"cka": cka_command}), ["cka", *args])


@pytest.mark.parametrize("where", ["teachers/t1", "archive/a/b/c/t1", "IN_LOGS"])
def test_a_copied_network_is_stitched_with_the_weights_in_its_folder(registries, trained,
                                                                   tmp_path, where):
    net = trained("cnn_xs")
    folder = place(net.directory, tmp_path, where)
    final = copy_run(net.directory, folder)  # other weights than the original's
    config = stitch_config(folder, tmp_path / "logs", registries)
    fingerprint = {"hash": net.hash, "checkpoint": sha256(final)}
    assert config["model"]["sender"]["run"] == fingerprint
    sender = stitched_params(RunConfig(config, "S")).sender.run_config()
    assert sender.directory == folder
    # what a stitch-table or cka provenance record names for it
    assert provenance.fingerprints([sender]) == {str(folder): fingerprint}
    network = trained_network(sender).state_dict()
    weights = checkpoint.read(final)["modules"]["model"]
    assert all(torch.equal(network[k], v) for k, v in weights.items())


def test_cka_reads_the_folders_it_is_given_and_records_them(registries, trained, tmp_path,
                                                          monkeypatch):
    net = trained("cnn_xs")
    monkeypatch.chdir(tmp_path)  # a relative folder with fewer than four parents
    shallow, deep = Path("teachers") / "t1", place(net.directory, tmp_path, "IN_LOGS")
    finals = [copy_run(net.directory, folder) for folder in (shallow, deep)]
    out = tmp_path / "cka"
    result = cka(str(shallow), str(deep), "--layers-a", "block2", "--layers-b", "block2",
                 "--max-samples", "100", "-o", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(provenance.record_path(out / "cka_table.csv").read_text())
    assert record["runs"] == {str(folder): {"hash": net.hash, "checkpoint": sha256(final)}
                              for folder, final in zip((shallow, deep), finals)}
    assert (record["parameters"]["run_a"], record["parameters"]["run_b"]) == (str(shallow),
                                                                             str(deep))
    table = pd.read_csv(out / "cka_table.csv")
    assert (table["run_a"] == str(shallow)).all() and (table["run_b"] == str(deep)).all()
    assert (table["source_a"] == "network").all()  # the copies' weights, not the latents


@pytest.mark.parametrize("how", list(BROKEN_COPIES))
def test_a_folder_without_a_trained_run_is_refused_in_one_line(registries, trained, tmp_path,
                                                              how):
    net = trained("cnn_xs")
    folder = under_logs(net.directory, tmp_path.name)  # the original lies where it points
    broken_copy(net.directory, folder, how)
    why = BROKEN_COPIES[how]
    with pytest.raises(UserError, match=f"model.sender: .*run folder {folder} .*{why}"):
        stitch_config(folder, tmp_path / "logs", registries)
    result = cka(str(folder), str(net.directory))
    assert result.exit_code == 2 and not isinstance(result.exception, (IndexError, KeyError))
    (line,) = result.output.strip().splitlines()
    assert f"RUN_A {folder} " in line and why in line

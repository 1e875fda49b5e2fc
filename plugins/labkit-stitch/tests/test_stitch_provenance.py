"""Provenance records of the tables: every table names the runs it was computed from with
their fingerprints (identity hash, final-checkpoint digest), the latents it read, and the
parameters of the command."""
import json

import pandas as pd
import pytest
from stitch_helpers import ENV, nets_file, self_stitch

from labkit.api import (FinishedRun, Latents, RunConfig, RunFingerprint, UserError, expand, latents,
                        run_fingerprint)
from labkit.testing import run_here
from labkit_stitch import provenance
from labkit_stitch.commands import write_stitch_tables
from labkit_stitch.tables import stitched_params

# every measure recorded with all its parameters
CKA_PARAMETERS = {"linear_cka": {}, "rbf_cka": {"threshold": 1.0}, "debiased_linear_cka": {},
                  "debiased_rbf_cka": {"threshold": 1.0}, "minibatch_cka": {"batch_size": 256}}


def read_record(table) -> dict:
    path = provenance.record_path(table)
    assert path.exists(), f"no provenance record {path}"
    assert path.stat().st_mtime_ns >= table.stat().st_mtime_ns  # written after the table
    return json.loads(path.read_text())


def assert_fingerprints(record: dict, runs: list[RunConfig]) -> None:
    """The record names exactly ``runs``, each with what run_fingerprint gives for it."""
    expected = {}
    for run in runs:
        fingerprint = run_fingerprint(run)
        assert fingerprint is not None, f"{run.directory} is not trained"
        expected[str(run.directory)] = fingerprint.model_dump()
    assert record["runs"] == expected


def test_stitch_table_and_cka_records_name_every_input_run_with_its_fingerprint(
        registries, tmp_path, write_spec):
    # network A (= B), trained on demand from a spec file
    spec = write_spec(self_stitch(nets_file(tmp_path, epochs=2), "block1", "block2",
                                  ["trained", "random"], name="prov"))
    out = tmp_path / "tables"
    result = run_here("stitch-table", str(spec), "--run-id", "P", "-o", str(out), "-q",
                     "--max-samples", "300", "--direct-ridge", "0.001",
                     "--diagonal-tolerance", "0.02", env=ENV)
    assert result.returncode == 0, result.stderr

    # (not load_runs: its dry build of the stitched model would read the networks' weights)
    runs = [RunConfig(c, "P") for c in expand(json.loads(spec.read_text()), registries)]
    (net,) = {str(r.directory): r for p in map(stitched_params, runs)
              for r in (p.sender.run_config(), p.receiver.run_config())}.values()
    assert len(runs) == 2

    stitch = read_record(out / "stitch_table.csv")
    assert stitch["command"] == "stitch-table" and stitch["table"] == "stitch_table.csv"
    assert stitch["parameters"] == {"spec": str(spec.resolve()), "run_id": "P",
                                    "split": "eval", "metric": "accuracy",
                                    "average_over": [], "tolerance": 0.01,
                                    "direct_match": {"ridge": 0.001, "batch_size": 256,
                                                     "device": "cpu"},
                                    "diagonal_tolerance": 0.02}
    assert_fingerprints(stitch, [*runs, net])
    table = pd.read_csv(out / "stitch_table.csv")
    named = {table[c].iloc[0] for c in ("sender_run", "receiver_run", "stitch_run",
                                        "random_stitch_run")}
    assert named == set(stitch["runs"])  # the table's directories are the record's
    (group,) = table["group"]
    assert stitch["files"] == ["stitch_table.csv", "stitch_latest.csv", f"stitch_{group}.png"]
    assert stitch["labkit_stitch_version"] and stitch["labkit_version"] and stitch["created"]

    cka = read_record(out / "cka_table.csv")
    assert cka["command"] == "stitch-table"
    assert cka["parameters"] == {"spec": str(spec.resolve()), "run_id": "P", "split": "eval",
                                 "reduction": "none", "max_samples": 300, "batch_size": 256,
                                 "permutations": 0, "seed": 0, "measures": CKA_PARAMETERS,
                                 "device": "cpu"}
    assert_fingerprints(cka, [net])
    (pair,) = cka["pairs"]
    assert pair == {"run_a": str(net.directory), "run_b": str(net.directory),
                    "layers_a": ["block1"], "layers_b": ["block2"],
                    "dataset": runs[0].config["dataset"], "source_a": "network",
                    "latents_a": None, "source_b": "network", "latents_b": None}
    assert len(cka["files"]) == 2 and all((out / f).is_file() for f in cka["files"])

    # `labkit cka` on stored latents: the record carries the manifest's digest
    params = Latents.Params(downsampling="none", dtype="float32",
                            latents_dir=str(tmp_path / "latents"))
    Latents(FinishedRun(net, registries), params).compute(progress=False)
    manifest = latents.read_manifest(latents.locate(net, "none"))
    result = run_here("cka", str(net.directory), str(net.directory), "--layers-a",
                     "block1-conv1,fc", "--layers-b", "fc", "-o", str(tmp_path / "cka"),
                     env=ENV)
    assert result.returncode == 0, result.stderr
    record = read_record(tmp_path / "cka" / "cka_table.csv")
    assert record["command"] == "cka" and record["files"] == ["cka_table.csv", "cka.png"]
    assert record["parameters"] == {
        "run_a": str(net.directory), "run_b": str(net.directory),
        "layers_a": ["block1-conv1", "fc"], "layers_b": ["fc"], "split": "eval",
        "reduction": "none", "max_samples": 2048, "batch_size": 256, "permutations": 0,
        "seed": 0, "measures": CKA_PARAMETERS, "device": "cpu"}
    assert_fingerprints(record, [net])
    (pair,) = record["pairs"]
    assert pair["source_a"] == pair["source_b"] == "latents"
    assert pair["latents_a"] == pair["latents_b"] == manifest["digest"]
    rows = pd.read_csv(tmp_path / "cka" / "cka_table.csv")
    assert (rows["latents_a"] == manifest["digest"]).all()


def untrained_grid(registries, tmp_path) -> list[RunConfig]:
    spec = self_stitch(nets_file(tmp_path), ["block1", "block2"], "block2",
                       ["trained", "random"], logs_dir=str(tmp_path / "logs"))
    return [RunConfig(config, "T") for config in expand(spec, registries)]


def test_an_untrained_run_is_recorded_without_a_checkpoint(registries, tmp_path):
    runs = untrained_grid(registries, tmp_path)
    out = tmp_path / "tables"
    write_stitch_tables(runs, "eval", "accuracy", out, {"run_id": "T"})
    record = read_record(out / "stitch_table.csv")
    net = stitched_params(runs[0]).sender.run_config()
    assert record["runs"] == {str(r.directory): {"hash": r.hash, "checkpoint": None}
                              for r in [*runs, net]}
    assert record["parameters"] == {"run_id": "T", "split": "eval", "metric": "accuracy",
                                    "average_over": [], "tolerance": 0.01,
                                    "direct_match": None, "diagonal_tolerance": 0.0}


def test_a_run_that_changes_while_the_table_is_made_leaves_no_record(registries, tmp_path,
                                                                     monkeypatch):
    runs = untrained_grid(registries, tmp_path)
    table = tmp_path / "tables" / "stitch_table.csv"
    stale = provenance.record_path(table)
    stale.parent.mkdir()
    stale.write_text("{}")
    record = provenance.TableRecord(table, "stitch-table", {}, runs)
    assert not stale.exists()  # an old record never sits beside new outputs
    monkeypatch.setattr(provenance, "run_fingerprint",  # another process trains them
                        lambda run: RunFingerprint(hash=run.hash, checkpoint="0" * 64))
    with pytest.raises(UserError, match="changed while .* was computed"):
        record.write([table])
    assert not stale.exists()

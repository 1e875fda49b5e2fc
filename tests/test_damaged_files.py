"""Every file a finished run holds, damaged every way, then every verb (issue 23, 10).

One tiny run (cnn_s on 256 digits at 8 px, one epoch, saturation, the receptive_field,
latents, probes, saturation and evaluate analyses) is trained once; each case restores
a copy of it at the same path (files hold absolute paths), damages files, and calls the
verbs in this process through the real command line (``labkit.testing.invoke_cli``). No
verb may end in a traceback, relay a library's advice to load a file unsafely, or exit
with another code than 0 (it coped), 1 (a run failed) or 2 (one line naming the
problem); ``labkit run`` must leave every derived file it owns whole again.

What runs where (the whole matrix of every verb after every damage of every file takes
minutes; this keeps the file well under a minute on an idle 2-core machine):

* every damage class of every file (:data:`CASES`): ``status`` and ``results`` (the log,
  and the table the file is, or vouches for). Every reader of every file goes through
  :mod:`labkit.store.readers`, so this drives each reader through each damage class.
* :data:`SCENARIOS`: every file damaged at once in a group, each file in its own way, and
  then every verb that reads the group's files (``plot``, ``report``, ``probes`` on a
  spec and on a folder, ``saturation``, ``receptive-field``, ``evaluate``, ``extract``,
  ``project``), ``run`` last: what differs between damage classes is the reader's
  answer, which the matrix covers; what each verb does with a damaged file is the same
  for every class, and each group is damaged in several classes at once.
"""
import hashlib
import json
import shutil
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest

from labkit.analyses import latents
from labkit.cli.commands.common import load_runs
from labkit.store import runinfo
from labkit.store.output_digests import damaged_outputs
from labkit.store.readers import read_json
from labkit.testing import invoke_cli

SPEC = {"model": "cnn_s", "dataset": {"name": "digits", "resolution": 8, "subset": 256},
        "batch_size": 64, "epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05},
        "saturation": {}, "logs_dir": "logs",
        "analyses": ["receptive_field", {"name": "latents", "downsampling": 2},
                     {"name": "probes", "downsampling": 2, "max_iter": 30}, "saturation",
                     {"name": "evaluate", "dataset": "digits"}]}
UNSAFE = ("allow_pickle", "weights_only", "Traceback", "0.00 GB")


def invoke(*args: str):
    """The real command line in this process: no exception but SystemExit, no
    traceback or unsafe advice in what it prints, exit code 0, 1 or 2."""
    result = invoke_cli(*args)
    for text in UNSAFE:
        assert text not in result.output, (args, result.output)
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    return result


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """``<root>/work``: a trained run; ``<root>/pristine``: a copy to restore it from."""
    root = tmp_path_factory.mktemp("damage")
    work = root / "work"
    work.mkdir()
    (work / "spec.json").write_text(json.dumps(SPEC))
    with chdir(work):
        assert invoke("run", "spec.json", "--run-id", "D", "--quiet").exit_code == 0
    shutil.copytree(work, root / "pristine", symlinks=True)
    return root


class Run:
    """The restored run: where its files are."""

    def __init__(self, work: Path):
        with chdir(work):
            (self.run,) = load_runs("spec.json", "D")
        self.directory = work / self.run.directory
        self.latents = latents.locate(self.run, 2)

    def path(self, name: str) -> Path:
        found = {
            "record": self.directory / "analyses" / "probe_performances.csv-2.json",
            "rf record": self.directory / "analyses" / "receptive_field.csv.json",
            "sha256": self.directory / "checkpoints" / "epoch_0001.pt.sha256",
            "spectra": self.directory / "spectra" / "epoch_0001.npz",
            "manifest": self.latents / latents.MANIFEST,
            "latent npy": self.latents / "train-block2-conv1.npy",
            "labels npy": self.latents / "eval-labels.npy",
            "probe cache": min((self.latents / "probe_cache").glob("*.json"), default=None),
        }
        path = found.get(name) or self.directory / name
        assert path is not None and path.is_file(), name
        return path


@pytest.fixture
def restored(pristine, monkeypatch):
    work = pristine / "work"
    shutil.rmtree(work)
    shutil.copytree(pristine / "pristine", work, symlinks=True)
    monkeypatch.chdir(work)
    return Run(work)


# ---------------------------------------------------------------- the damage classes

def _json_values(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({key: change(value) for key, value in data.items()}))


def _other_type(value):
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "no"
    if isinstance(value, (int, float)):
        return "seven"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"a": 1}
    if isinstance(value, dict):
        return [1, [2]]
    return True


def _surrogate(path: Path) -> None:
    data = json.loads(path.read_text())
    key = next((k for k, v in data.items() if isinstance(v, str)), next(iter(data)))
    data[key] = "x\ud800y"
    data["\udfff"] = 1
    path.write_text(json.dumps(data))  # ensure_ascii: the escapes are plain ASCII


def _csv_lines(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def _renamed_column(lines):
    head = lines[0].split(",")
    return [",".join([head[0] + "_renamed", *head[1:]]), *lines[1:]]


def _cells(lines, replace):
    """The first data row with every numeric cell replaced by ``replace``."""
    cells = lines[1].split(",")
    for i, cell in enumerate(cells):
        try:
            float(cell)
        except ValueError:
            continue
        cells[i] = replace
    return [lines[0], ",".join(cells), *lines[2:]]


def _object_npy(path: Path) -> None:
    """An array of Python objects, the latents' manifest made consistent with it."""
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    manifest = json.loads((path.parent / latents.MANIFEST).read_text())
    manifest["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    body = {k: v for k, v in manifest.items() if k != "digest"}
    manifest["digest"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (path.parent / latents.MANIFEST).write_text(json.dumps(manifest))


def _object_npz(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **{"train/fc": np.array([{"a": 1}], dtype=object)})


ANY = {"json", "jsonl", "csv", "digest", "npy", "npz"}
DAMAGES = {  # name: (the file kinds it applies to, how)
    "empty": (ANY, lambda p: p.write_bytes(b"")),
    "truncated": (ANY, lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])),
    "garbage": (ANY, lambda p: p.write_bytes(bytes(range(256)) * 3)),
    "non-utf8": ({"json", "jsonl", "csv", "digest"},
                 lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()[1:])),
    "deep": ({"json", "jsonl"}, lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
    "nested 1000": ({"json"}, lambda p: p.write_text('{"a": ' * 1000 + "1" + "}" * 1000)),
    "wrong types": ({"json"}, lambda p: _json_values(p, _other_type)),
    "surrogate": ({"json"}, _surrogate),
    "renamed column": ({"csv"}, lambda p: _csv_lines(p, _renamed_column)),
    "nan": ({"csv"}, lambda p: _csv_lines(p, lambda lines: _cells(lines, "nan"))),
    "text for numbers": ({"csv"}, lambda p: _csv_lines(p, lambda lines: _cells(lines, "abc"))),
    "object dtype": ({"npy", "npz"},
                     lambda p: _object_npz(p) if p.suffix == ".npz" else _object_npy(p)),
}

FILES = {  # file -> (kind, the results table it is or vouches for)
    "status.json": ("json", None),
    "config.json": ("json", None),
    "analyses.json": ("json", None),
    "record": ("json", "probes"),
    "rf record": ("json", "receptive_field"),
    "computational_info.json": ("json", None),
    "latents_2.json": ("json", None),
    "manifest": ("json", None),
    "probe cache": ("json", None),
    "provenance.jsonl": ("jsonl", None),
    "log.csv": ("csv", None),
    "probe_performances.csv": ("csv", "probes"),
    "receptive_field.csv": ("csv", "receptive_field"),
    "saturation.csv": ("csv", "saturation"),
    "evaluations.csv": ("csv", "evaluations"),
    "sha256": ("digest", None),
    "spectra": ("npz", None),
    "latent npy": ("npy", None),
    "labels npy": ("npy", None),
}
CASES = [(name, damage) for name, (kind, _) in FILES.items()
         for damage, (kinds, _) in DAMAGES.items() if kind in kinds]


@pytest.mark.parametrize("name, damage", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_status_and_results_read_any_damaged_file(restored, name, damage):
    DAMAGES[damage][1](restored.path(name))
    assert invoke("status", "spec.json", "--run-id", "D").exit_code == 0
    table = FILES[name][1]
    for args in (["-o", "all.csv"], ["--table", table, "-o", "table.csv"] if table else []):
        if args:
            result = invoke("results", "logs", *args)
            assert result.exit_code == 0 or "left out as damaged" in result.output, result.output


VERBS = {
    "plot": ["plot", "spec.json", "--run-id", "D", "-q"],
    "report": ["report", "spec.json", "--run-id", "D", "-q", "-o", "report.html"],
    "probes": ["probes", "spec.json", "--run-id", "D", "-d", "2", "-q"],
    "probes-path": ["probes", "latent_datasets", "-q"],
    "saturation": ["saturation", "spec.json", "--run-id", "D", "-q"],
    "receptive-field": ["receptive-field", "spec.json", "--run-id", "D", "-q"],
    "evaluate": ["evaluate", "spec.json", "--run-id", "D", "--on", "digits", "-q"],
    "extract": ["extract", "spec.json", "--run-id", "D", "-d", "2", "-q"],
    "project": ["project", "spec.json", "--run-id", "D", "--deltas", "0.9", "-q"],
    "run": ["run", "spec.json", "--run-id", "D", "-q"],
}
SCENARIOS = {  # group: ({file: damage}, the verbs that read those files)
    "tables": ({"log.csv": "non-utf8", "probe_performances.csv": "nan",
                "receptive_field.csv": "renamed column", "saturation.csv": "truncated",
                "evaluations.csv": "text for numbers"},
               ["plot", "report", "receptive-field", "evaluate"]),
    "records": ({"record": "wrong types", "rf record": "deep", "analyses.json": "surrogate",
                 "latents_2.json": "garbage"},
                ["plot", "report", "receptive-field", "extract"]),
    "run files": ({"status.json": "deep", "config.json": "wrong types",
                   "computational_info.json": "garbage", "provenance.jsonl": "non-utf8"},
                  ["report", "saturation", "evaluate", "extract", "project"]),
    "digest": ({"sha256": "non-utf8"}, ["report", "probes", "project"]),
    "spectra": ({"spectra": "object dtype"}, ["saturation"]),
    "latents": ({"latent npy": "object dtype"}, ["probes-path", "probes"]),
    "latent files": ({"manifest": "nested 1000", "labels npy": "truncated",
                      "probe cache": "surrogate"}, ["probes-path", "extract", "probes"]),
}


@pytest.mark.parametrize("group", SCENARIOS)
def test_every_verb_copes_with_damaged_files_and_run_repairs_them(restored, group):
    damaged, verbs = SCENARIOS[group]
    for name, damage in damaged.items():
        DAMAGES[damage][1](restored.path(name))
    for verb in verbs:
        invoke(*VERBS[verb])
    # run repairs or recomputes every derived file it owns (spectra are measured while
    # training: nothing rebuilds them, and the saturation table is not read from them
    # again once complete)
    ran = invoke(*VERBS["run"])
    assert ran.exit_code == 0, ran.output
    directory = restored.directory
    assert runinfo.training_state(restored.run)["state"] == "finished"
    assert damaged_outputs(directory) == {}
    assert runinfo.read_log(directory) is not None
    assert set(runinfo.read_analyses(directory)) == {"receptive_field", "latents", "probes",
                                                     "saturation", "evaluate"}
    assert read_json(directory / runinfo.CONFIG_JSON)["hash"] == restored.run.hash
    assert latents.read_manifest(restored.latents) is not None


def test_an_edited_output_is_flagged_then_recomputed(restored):
    """A probe table cut to one row holding NaN: results, status and the report leave it
    out and name it; ``run`` computes it again."""
    path = restored.directory / "probe_performances.csv"
    whole = path.read_text()
    lines = whole.splitlines()
    cells = lines[1].split(",")
    cells[lines[0].split(",").index("eval_accuracy")] = "nan"
    path.write_text("\n".join([lines[0], ",".join(cells)]) + "\n")
    flagged = invoke("results", "logs", "--table", "probes", "-o", "probes.csv")
    assert flagged.exit_code == 2 and "left out" in flagged.output
    assert "was left out as damaged" in flagged.output
    assert "probe_performances.csv" in invoke("status", "spec.json", "--run-id", "D").output
    invoke(*VERBS["report"])
    assert "no longer matches the sha256" in Path("report.html").read_text()
    assert invoke(*VERBS["run"]).exit_code == 0
    assert path.read_text() == whole  # fitted again from the cache: the same numbers


def test_an_edited_probe_cache_entry_is_fitted_again(restored):
    entries = sorted((restored.latents / "probe_cache").glob("*.json"))
    assert entries
    for entry in entries:  # well-formed, plausible, wrong: every layer 0.0123
        data = json.loads(entry.read_text())
        data["result"]["eval_accuracy"] = 0.0123
        entry.write_text(json.dumps(data))
    (restored.directory / "probe_performances.csv").unlink()
    assert invoke(*VERBS["run"]).exit_code == 0
    assert "0.0123" not in (restored.directory / "probe_performances.csv").read_text()

"""Probes without latents (``labkit probes --stream``) against extract-then-probe, on the
same trained runs.

The quickstart's networks (``cnn_s`` and ``resnet18_xxs`` on digits at 16 px, 8 epochs:
specs/quickstart.json without its analyses) are trained once. Then, per run and path, a
fresh process runs ``labkit probes SPEC --run-id bench -d 4 -C 0.1 -C 1`` from nothing
(no latents, no probe cache, no record), ``-mp 1``:

  latents   extract the latents (float16, the default), then fit every layer and C on
            them (the default torch solver)
  stream    fit every layer and C from forward passes, writing no latents

Measured in the child: the command's wall time (after the imports, which both pay:
torch, scikit-learn, labkit and torch's lazily imported optimizer machinery are
imported first), its peak RSS (``resource.getrusage`` maxrss, and the RSS before the
command), the bytes of the files the command left (under latent_datasets/ and the run
directory), and from the CSV the accuracy difference stream − latents per layer and C.
Both paths run on ``--threads`` torch threads (the child reports that many CPUs, so the
probes' own per-worker thread count follows).

    .venv/bin/python benchmarks/bench_probe_stream.py [--models cnn_s resnet18_xxs]
        [--epochs 8] [-d 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

CHILD = r"""
import json, os, resource, sys, time
threads = int(sys.argv[1])
os.cpu_count = lambda: threads  # run_probes gives each worker cpu_count() // workers
import sklearn.linear_model, torch, torch._dynamo  # imported by both paths
torch.set_num_threads(threads)
from labkit.cli import cli
from labkit import logistic_stream, probe_stream, probes  # noqa: F401
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    cli.main(sys.argv[2:], standalone_mode=False)
finally:
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "rss_before_mib": before / 1024,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when absent)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def measure(spec: Path, root: Path, run_dir: Path, mode: str, threads: int,
            downsampling: str, Cs: list[str]) -> dict:
    """Run one path from nothing in a fresh process; its numbers."""
    shutil.rmtree(root / "latent_datasets", ignore_errors=True)
    shutil.rmtree(run_dir / "analyses", ignore_errors=True)
    for name in ("probe_performances.csv", "tail_pattern.png", "tail_pattern.svg"):
        (run_dir / name).unlink(missing_ok=True)
    for pointer in run_dir.glob("latents_*.json"):
        pointer.unlink()
    before = size(run_dir)
    args = ["probes", str(spec), "--run-id", "bench", "-d", downsampling, "-mp", "1",
            "--quiet", "--stream" if mode == "stream" else "--no-stream",
            *(x for C in Cs for x in ("-C", C))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(threads), *args], env=env,
                          capture_output=True, text=True, cwd=root, check=True)
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    numbers["bytes_written"] = size(root / "latent_datasets") + size(run_dir) - before
    numbers["table"] = pd.read_csv(run_dir / "probe_performances.csv",
                                   dtype={"downsampling": str})
    return numbers


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn_s", "resnet18_xxs"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("-d", "--downsampling", default="4")
    parser.add_argument("-C", dest="Cs", nargs="+", default=["0.1", "1"])
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_probe_stream_"))
    quickstart = json.loads((Path(__file__).parents[1] / "specs" / "quickstart.json").read_text())
    spec = root / "spec.json"
    quickstart.pop("saturation")
    spec.write_text(json.dumps({**quickstart, "model": options.models, "epochs": options.epochs,
                                "analyses": [], "logs_dir": str(root / "logs")}))
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    subprocess.run([sys.executable, "-m", "labkit", "run", str(spec), "--run-id", "bench",
                    "--quiet"], env=env, cwd=root, check=True, capture_output=True)
    load = [os.getloadavg()[0]]
    print(f"machine: {machine()}; torch threads {options.threads}")
    print("| model | path | wall s | peak RSS MiB (before the command) | bytes written |")
    print("|---|---|---|---|---|")
    differences = []
    for run_dir in sorted((root / "logs").glob("*/*/bench/*")):
        model = json.loads((run_dir / "config.json").read_text())["config"]["model"]["name"]
        results = {mode: measure(spec, root, run_dir, mode, options.threads,
                                 options.downsampling, options.Cs)
                   for mode in ("latents", "stream")}
        load.append(os.getloadavg()[0])
        for mode, numbers in results.items():
            print(f"| {model} | {mode} | {numbers['seconds']:.1f} | "
                  f"{numbers['peak_rss_mib']:.0f} ({numbers['rss_before_mib']:.0f}) | "
                  f"{numbers['bytes_written']:,} |")
        tables = {mode: numbers["table"].set_index(["probe_C", "layer"])
                  for mode, numbers in results.items()}
        for column in [c for c in tables["stream"] if c.endswith("_accuracy")]:
            gap = tables["stream"][column] - tables["latents"].loc[tables["stream"].index, column]
            differences.append({"model": model, "split": column.removesuffix("_accuracy"),
                                "layers × C": len(gap), "mean": gap.mean(),
                                "max |difference|": gap.abs().max(),
                                "converged": bool(results["stream"]["table"]["converged"].all()
                                                  and results["latents"]["table"]["converged"]
                                                  .all())})
    print()
    print("accuracy, stream − latents (fractions):")
    print("| " + " | ".join(differences[0]) + " |")
    print("|" + "---|" * len(differences[0]))
    for row in differences:
        print("| " + " | ".join(f"{v:+.4f}" if isinstance(v, float) else str(v)
                                for v in row.values()) + " |")
    print(f"\nload average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in load)}")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()

"""CPU time and peak memory of labkit commands that need no training, each in a fresh
process, side by side with ``python -c pass`` and ``python -c "import torch"``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cli.py [--reps 3]

``status`` and ``plan`` run on a generated 100-run grid (10 learning rates × 10 seeds,
nothing trained). labkit caches a grid it validated (and the registries' summary that
``list`` prints: labkit.cli.spec_cache), here in a temporary ``LABKIT_CACHE_DIR``: "cached"
rows run after one unmeasured call of the same command filled it, the "first time" row
with the cache emptied before every repetition (the registries are built, torch and the
plugins imported). Prints a Markdown table: median user+sys CPU seconds and peak RSS
(MB) of each command over the repetitions, and the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(user+sys CPU seconds, peak RSS in MB) of one process running ``argv``."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env["LABKIT_CACHE_DIR"] = str(cache)
        spec = Path(tmp) / "grid100.json"
        spec.write_text(json.dumps({
            "name": "grid100", "model": "cnn_xs", "dataset": "digits", "epochs": 1,
            "logs_dir": str(Path(tmp) / "logs"),
            "optimizer": {"name": "sgd", "lr": [0.01 * (i + 1) for i in range(10)]},
            "seed": list(range(10))}))
        labkit = [py, "-m", "labkit"]
        status = [*labkit, "status", str(spec), "--run-id", "B"]
        # (label, argv, what comes before each repetition: None, "cold" or "warm")
        cases = [("python -c pass", [py, "-c", "pass"], None),
                 ('python -c "import torch"', [py, "-c", "import torch"], None),
                 ("labkit --help", [*labkit, "--help"], None),
                 ("labkit schema", [*labkit, "schema"], None),
                 ("labkit list models (cached)", [*labkit, "list", "models"], "warm"),
                 ("labkit status (100-run grid, first time)", status, "cold"),
                 ("labkit status (100-run grid, cached)", status, "warm"),
                 ("labkit plan (100-run grid, cached)",
                  [*labkit, "plan", str(spec), "--run-id", "B"], "warm")]
        print(f"load average before: {os.getloadavg()[0]:.2f}; {args.reps} repetitions, "
              f"median; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}\n")
        print("| command | CPU s (user+sys) | peak RSS MB |\n|---|---|---|")
        for label, argv, before in cases:
            if before == "warm":
                measure(argv, env)
            runs = []
            for _ in range(args.reps):
                if before == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                runs.append(measure(argv, env))
            cpu = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            print(f"| `{label}` | {cpu:.2f} | {rss:,.0f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

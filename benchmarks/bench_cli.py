"""CPU time, wall time and peak memory of labkit commands that need no training, each in
a fresh process, side by side with ``python -c pass`` and ``python -c "import torch"``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cli.py [--reps 3] [--quickstart]

Targets (issue 25, quiet 2-core machine): the first ``status`` of a new 100-run spec
≤ 1 s CPU (the registries' summary kept, as after any earlier command of this
installation); with ``--quickstart`` (trains ``specs/quickstart.json`` first, a few
minutes) ``plot`` and ``report`` of its grid ≤ 3 s (timed first after ``labkit run``:
their folder emptied, the runs' own figures as ``run`` drew them; and with nothing
changed since the last call; shown too: with the runs' own figures removed, every
figure drawn) and ``probes`` of one of its runs, fitted
afresh on its stored latents, ≤ 5 s wall.

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
import time
from pathlib import Path
from typing import Any


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(user+sys CPU seconds of it and its children, wall seconds, peak RSS in MB) of one
    process running ``argv``."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def new_spec(path: Path, logs: Path, salt: int) -> Path:
    """A 100-run grid (10 learning rates × 10 seeds) never seen before (``salt`` in its
    learning rates), written to ``path``."""
    path.write_text(json.dumps({
        "name": "grid100", "model": "cnn_xs", "dataset": "digits", "epochs": 1,
        "logs_dir": str(logs),
        "optimizer": {"name": "sgd", "lr": [0.01 * (i + 1) + 1e-6 * salt for i in range(10)]},
        "seed": list(range(10))}))
    return path


def quickstart_cases(py: str, tmp: Path, env: dict[str, str]) -> list[tuple[str, list[str], Any]]:
    """Trains the quickstart grid under ``tmp`` (not measured), then the plot, report
    and probes cases on it."""
    spec = Path(__file__).resolve().parents[1] / "specs" / "quickstart.json"
    grid = [str(spec), "--run-id", "Q", "--set", f"logs_dir={tmp / 'logs'}"]
    labkit = [py, "-m", "labkit"]
    subprocess.run([*labkit, "run", *grid, "--quiet"], check=True,
                   env={**env, "LABKIT_RUN_FIGURES": "1"})  # the runs draw their figures
    latents = sorted((tmp / "latent_datasets").rglob("manifest.json"))[0].parent

    def fresh_probes() -> None:  # the fits of one run, none cached
        shutil.rmtree(latents / "probe_cache", ignore_errors=True)

    def no_figures() -> None:  # plot's folder and the report's figure folder emptied
        shutil.rmtree(tmp / "f", ignore_errors=True)
        shutil.rmtree(tmp / "logs" / "figures", ignore_errors=True)

    def none_at_all() -> None:  # the runs' own figures (drawn by `labkit run`) gone too
        no_figures()
        for plots in (tmp / "logs").rglob("plots"):
            shutil.rmtree(plots)

    plot = [*labkit, "plot", *grid, "-o", str(tmp / "f")]
    report = [*labkit, "report", *grid, "-o", str(tmp / "r.html")]
    return [("labkit plot (quickstart grid, first after labkit run)", plot, no_figures),
            ("labkit plot (quickstart grid, nothing changed)", plot, "warm"),
            ("labkit report (quickstart grid, first after labkit run)", report, no_figures),
            ("labkit report (quickstart grid, nothing changed)", report, "warm"),
            ("labkit plot (quickstart grid, every figure drawn: no run's own either)", plot,
             none_at_all),
            ("labkit report (quickstart grid, every figure drawn: no run's own either)",
             report, none_at_all),
            ("labkit probes (one quickstart run, -mp 2, no fit cached)",
             [*labkit, "probes", str(latents), "-mp", "2", "-q"], fresh_probes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quickstart", action="store_true",
                        help="also train the quickstart grid and time plot, report, probes")
    args = parser.parse_args()
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env["LABKIT_CACHE_DIR"] = str(cache)
        logs = Path(tmp) / "logs"
        spec = new_spec(Path(tmp) / "grid100.json", logs, 0)
        labkit = [py, "-m", "labkit"]
        status = [*labkit, "status", str(spec), "--run-id", "B"]
        salts = iter(range(1, 1000))

        def another_spec() -> None:  # a spec never validated, the summary kept
            new_spec(spec, logs, next(salts))

        # (label, argv, what comes before each repetition: None, "cold" (the cache
        # emptied), "warm" (one unmeasured call first) or a function)
        cases = [("python -c pass", [py, "-c", "pass"], None),
                 ('python -c "import torch"', [py, "-c", "import torch"], None),
                 ("labkit --help", [*labkit, "--help"], None),
                 ("labkit schema", [*labkit, "schema"], None),
                 ("labkit list models (cached)", [*labkit, "list", "models"], "warm"),
                 ("labkit status (100-run grid, no cache at all)", status, "cold"),
                 ("labkit status (new 100-run grid, first time)", status, another_spec),
                 ("labkit status (100-run grid, cached)", status, "warm"),
                 ("labkit plan (100-run grid, cached)",
                  [*labkit, "plan", str(spec), "--run-id", "B"], "warm")]
        if args.quickstart:
            cases += quickstart_cases(py, Path(tmp), env)
        print(f"load average before: {os.getloadavg()[0]:.2f}; {args.reps} repetitions, "
              f"median; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}\n")
        print("| command | CPU s (user+sys) | wall s | peak RSS MB |\n|---|---|---|---|")
        for label, argv, before in cases:
            if before == "warm":
                measure(argv, env)
            runs = []
            for _ in range(args.reps):
                if before == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                elif callable(before):
                    before()
                runs.append(measure(argv, env))
            cpu, wall, rss = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"| `{label}` | {cpu:.2f} | {wall:.2f} | {rss:,.0f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

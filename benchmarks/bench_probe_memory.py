"""Probe solvers side by side: peak anonymous memory, time and accuracy against rows.

A probe of a pixelwise layer fits on images × positions rows. This generates such a
layer (float16 ``.npy``, as labkit stores latents: a class-dependent mean plus noise,
``--features`` wide, 10 classes, rows image-major) at several sizes and fits it with

  torch     labkit.measures.logistic.fit: streams the memory map in chunks (labkit's default)
  sklearn   scikit-learn's LogisticRegression (lbfgs) on the layer loaded as float32,
            standardised first: what labkit did before (``solver: "sklearn"``)

each in a fresh process, whose peak anonymous memory (``RssAnon``: not the file pages
of the memory map, which the kernel can drop) is sampled from outside every 10 ms. Both
minimise the same objective, so accuracies should agree.

    .venv/bin/python benchmarks/bench_probe_memory.py --rows 200000 1000000 3000000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
path, solver, positions = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.load(path + "/x.npy", mmap_mode="r"); labels = np.load(path + "/labels.npy")
tx = np.load(path + "/tx.npy", mmap_mode="r"); tlabels = np.load(path + "/tlabels.npy")
started = time.perf_counter(); cpu = time.process_time()
if solver == "torch":
    from labkit import logistic
    probe = logistic.fit(x, labels, 10, positions=positions)
    accuracy = probe.score(tx, tlabels, positions)
else:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(np.asarray(x, dtype=np.float32), np.repeat(labels, positions))
    accuracy = model.score(np.asarray(tx, dtype=np.float32), np.repeat(tlabels, positions))
print(json.dumps({"accuracy": accuracy, "wall_s": time.perf_counter() - started,
                  "cpu_s": time.process_time() - cpu}))
"""


def generate(directory: Path, images: int, positions: int, features: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, features)).astype(np.float32)
    for prefix, count in (("", images), ("t", max(images // 5, 1))):
        labels = rng.integers(0, 10, count)
        x = np.lib.format.open_memmap(directory / f"{prefix}x.npy", mode="w+",
                                      dtype=np.float16, shape=(count * positions, features))
        step = max(1, 200_000 // positions)
        for first in range(0, count, step):
            block = labels[first:first + step]
            rows = np.repeat(centres[block], positions, axis=0)
            x[first * positions:(first + len(block)) * positions] = (
                rows + 3.0 * rng.normal(size=rows.shape)).astype(np.float16)
        x.flush()
        del x
        np.save(directory / f"{prefix}labels.npy", labels)


def peak_anonymous_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def measure(directory: Path, solver: str, positions: int) -> dict:
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(directory), solver,
                                str(positions)], stdout=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, peak_anonymous_kb(process.pid))
        time.sleep(0.01)
    result = json.loads(process.stdout.read())
    return {**result, "peak_anon_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--positions", type=int, default=16, help="rows per image (4x4 map)")
    parser.add_argument("--features", type=int, default=64)
    args = parser.parse_args()
    print(f"{'rows':>9} {'solver':>7} {'peak anon MB':>12} {'wall s':>7} {'cpu s':>7} "
          f"{'accuracy':>8}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), rows // args.positions, args.positions, args.features, seed=0)
            for solver in ("torch", "sklearn"):
                r = measure(Path(tmp), solver, args.positions)
                print(f"{rows:>9} {solver:>7} {r['peak_anon_mb']:>12.0f} {r['wall_s']:>7.1f} "
                      f"{r['cpu_s']:>7.1f} {r['accuracy']:>8.4f}", flush=True)


if __name__ == "__main__":
    main()

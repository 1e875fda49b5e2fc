"""Probes and extraction at the papers' scale: time, peak anonymous memory and bytes on
disk against the number of images; the streamed probe solver against scikit-learn's on
the same stored latents.

Data: a CIFAR-10-format data set generated on disk (``data_batch_1..5``, ``test_batch``,
``batches.meta``: Python pickles of uint8 rows, read by torchvision's own ``CIFAR10``
class through labkit's ``cifar10`` data set). Each class is a colour grating of its own
orientation and frequency, with random phase, contrast and heavy pixel noise, so a
network learns it partly in one epoch and probes of different layers score differently.
torchvision accepts CIFAR files only when their md5 sums are the published ones; the
commands here run through a small launcher that points torchvision's checksum table at
the generated files (as tests/test_data.py does), so its integrity check still runs.

One spec per size (``"subset": N`` of the training images, the eval split fixed at
``--eval-images``), ``resnet18_xxs`` trained for one epoch with ``labkit run`` (kept in
``--work`` for the next call); then, per size and downsampling, each a fresh ``labkit``
process measured from outside (latents extracted anew, probes fitted anew):

  extract   ``labkit extract SPEC --run-id bench -d MODE``
  torch     ``labkit probes SPEC --run-id bench -d MODE --solver torch``  (default solver)
  sklearn   the same with ``--solver sklearn`` (scikit-learn's L-BFGS on the layer loaded
            whole), only for the sizes in ``--sklearn``

Every row reports wall and CPU seconds (the process tree's, from ``getrusage``), the peak
of the summed ``RssAnon`` of the process tree (sampled every 20 ms from /proc: anonymous
memory only, not the file-backed pages of memory maps, which the kernel can drop), and
bytes on disk (the latents folder for extract; the probe cache and CSV for probes). The
probe rows add, when scikit-learn ran too, the largest absolute difference of eval and
train accuracy over all layers, in points.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py \\
        --pooled 2000 10000 50000 --pixelwise 2000 10000 --sklearn 2000 10000
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]

# run labkit's CLI with torchvision's CIFAR-10 checksum table pointed at the generated files
LAUNCHER = r"""
import hashlib, json, sys
from pathlib import Path
from torchvision import datasets
base = Path(sys.argv[1])
md5 = lambda name: hashlib.md5((base / name).read_bytes()).hexdigest()
c = datasets.CIFAR10
c.train_list = [[n, md5(n)] for n, _ in c.train_list]
c.test_list = [[n, md5(n)] for n, _ in c.test_list]
c.meta = {**c.meta, "md5": md5(c.meta["filename"])}
from labkit.cli import cli
cli(sys.argv[2:])
"""


def images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CIFAR rows (``(n, 3072)`` uint8: R, G, B planes of 32×32) of class gratings."""
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    angle = labels * np.pi / 10 + rng.normal(0, 0.15, n)
    frequency = (0.15 + 0.04 * (labels % 5) + rng.normal(0, 0.01, n)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(frequency[:, None, None] * (np.cos(angle)[:, None, None] * xx
                                             + np.sin(angle)[:, None, None] * yy)
                  + phase[:, None, None])
    colour = np.stack([np.cos(labels * 0.6), np.sin(labels * 0.9), np.cos(labels * 1.3)], 1)
    colour = colour + rng.normal(0, 0.5, (n, 3))
    contrast = rng.uniform(20, 60, (n, 1, 1, 1))
    planes = 128 + contrast * colour[:, :, None, None] * wave[:, None]
    planes += rng.normal(0, 45, planes.shape)
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072)


def generate_cifar(base: Path, train: int, test: int, seed: int = 0) -> None:
    """CIFAR-10's python files under ``base`` (``cifar-10-batches-py``): ``train`` images in
    five batches, ``test`` in the test batch."""
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_batch = -(-train // 5)
    names = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]
    counts = [min(per_batch, train - i * per_batch) for i in range(5)] + [test]
    for name, count in zip(names, counts, strict=True):
        labels = rng.integers(0, 10, count)
        batch = {"data": images(labels, rng), "labels": labels.tolist(), "batch_label": name}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the official files are Python 2 pickles
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_vis": 3072}, f, protocol=2)


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.scandir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(task.path, "children").read_text().split()]
        except OSError:
            continue
    return found


def anonymous_kb(root: int) -> int:
    """Summed ``RssAnon`` of ``root`` and all its descendants."""
    return sum(_status_kb(pid, "RssAnon") for pid in _descendants(root))


def measure(base: Path, args: list[str], log: Path) -> dict[str, float]:
    """Run ``labkit ARGS`` (through the launcher) and measure its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "a") as out:
        # built-ins only: no installed plugin's import is timed (or can fail the run)
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(base), *args],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
        peak = 0
        while process.poll() is None:
            peak = max(peak, anonymous_kb(process.pid))
            time.sleep(0.02)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"labkit {' '.join(args)} failed; see {log}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_anon_mb": peak / 1024}


def tree_bytes(path: Path) -> int:
    """Sum of the sizes of the files under ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_spec(work: Path, model: str, images_count: int, data_root: Path) -> Path:
    """A one-run spec: ``model`` trained one epoch on ``images_count`` training images."""
    spec = {"model": model, "epochs": 1, "batch_size": 128, "eval_batch_size": 500,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "dataset": {"name": "cifar10", "root": str(data_root), "subset": images_count},
            "logs_dir": str(work / "logs")}
    path = work / f"{model}_{images_count}.json"
    path.write_text(json.dumps(spec))
    return path


def run_dir(work: Path, model: str, images_count: int) -> Path:
    """The run directory of the spec :func:`write_spec` wrote (its config names the size)."""
    for config in (work / "logs" / model).rglob("config.json"):
        if json.loads(config.read_text())["config"]["dataset"]["subset"] == images_count:
            return config.parent
    raise SystemExit(f"no trained run of {model} on {images_count} images under {work}")


def probe(base: Path, spec: Path, mode: str, solver: str, mp: int, run: Path,
          log: Path) -> tuple[dict[str, float], pd.DataFrame]:
    """Measured ``labkit probes`` with ``solver``; its results table and bytes written."""
    pointer = json.loads((run / f"latents_{mode}.json").read_text())
    cache = Path(pointer["directory"]) / "probe_cache"
    before = tree_bytes(cache) if cache.exists() else 0
    # every layer fitted now, none served from the cache of an earlier run of this script
    for entry in cache.glob("*.json"):
        if json.loads(entry.read_text())["key"][2]["solver"] == solver:
            before -= entry.stat().st_size
            entry.unlink()
    row = measure(base, ["probes", str(spec), "--run-id", "bench", "-d", mode, "--solver", solver,
                         "-mp", str(mp), "--prefix", solver, "-q"], log)
    outputs = [run / f"{solver}_probe_performances.csv", run / f"{solver}_tail_pattern.png"]
    row["disk_mb"] = (tree_bytes(cache) - before + sum(map(tree_bytes, outputs))) / 1e6
    table = pd.read_csv(outputs[0], dtype={"downsampling": str})
    return row, table[table["downsampling"] == mode].set_index("layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pooled", type=int, nargs="*", default=[2000, 10000, 50000],
                        help="training images for pooled (-d) probes")
    parser.add_argument("--pixelwise", type=int, nargs="*", default=[2000, 10000],
                        help="training images for pixelwise probes")
    parser.add_argument("--sklearn", type=int, nargs="*", default=[2000],
                        help="sizes whose probes scikit-learn fits too (every mode)")
    parser.add_argument("-d", type=int, default=4, help="pooled side d")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--model", default="resnet18_xxs")
    parser.add_argument("--full-width", type=int, nargs="*", default=[],
                        help="sizes at which resnet18 (full width) is also probed, pooled")
    parser.add_argument("-mp", type=int, default=2, help="probe worker processes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    args = parser.parse_args()

    work = args.work.absolute()
    sizes = sorted({*args.pooled, *args.pixelwise, *args.full_width})
    base = work / "data" / "cifar10" / "cifar-10-batches-py"
    marker = work / "data" / "generated.json"
    wanted = {"train": max(sizes), "test": args.eval_images}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        # other sizes give other images: runs trained (and latents extracted) on the old
        # files would keep their identity, which names the data set, not its bytes
        for folder in ("data", "logs", "latent_datasets"):
            shutil.rmtree(work / folder, ignore_errors=True)
        generate_cifar(base, max(sizes), args.eval_images)
        marker.write_text(json.dumps(wanted))
    log = work / "labkit.log"
    jobs = [(args.model, n, mode) for n in sizes for mode in
            ([str(args.d)] if n in args.pooled else []) + (["pixelwise"] if n in args.pixelwise
                                                           else [])]
    jobs += [("resnet18", n, str(args.d)) for n in args.full_width]
    print(f"{'model':>13} {'images':>6} {'mode':>9} {'step':>8} {'wall s':>7} {'cpu s':>7} "
          f"{'peak anon MB':>12} {'disk MB':>8} {'max |Δ eval| pt':>15} "
          f"{'max |Δ train| pt':>16}", flush=True)
    peaks: dict[tuple[str, str, str], dict[int, float]] = {}
    for model, n, mode in jobs:
        spec = write_spec(work, model, n, work / "data")
        measure(base, ["run", str(spec), "--run-id", "bench", "--quiet"], log)
        run = run_dir(work, model, n)
        if (run / f"latents_{mode}.json").exists():  # extract anew, not skip
            previous = json.loads((run / f"latents_{mode}.json").read_text())["directory"]
            shutil.rmtree(previous, ignore_errors=True)
        rows = {"extract": measure(base, ["extract", str(spec), "--run-id", "bench", "-d", mode,
                                          "-q"], log)}
        pointer = json.loads((run / f"latents_{mode}.json").read_text())
        rows["extract"]["disk_mb"] = tree_bytes(Path(pointer["directory"])) / 1e6
        rows["torch"], torch_table = probe(base, spec, mode, "torch", args.mp, run, log)
        if n in args.sklearn:
            rows["sklearn"], sklearn_table = probe(base, spec, mode, "sklearn", args.mp, run, log)
            for column, key in (("eval_accuracy", "eval_pt"), ("train_accuracy", "train_pt")):
                rows["torch"][key] = 100 * float(
                    (torch_table[column] - sklearn_table[column]).abs().max())
        for step, r in rows.items():
            peaks.setdefault((model, mode, step), {})[n] = r["peak_anon_mb"]
            extra = (f" {r['eval_pt']:>15.3f} {r['train_pt']:>16.3f}" if "eval_pt" in r else "")
            print(f"{model:>13} {n:>6} {mode:>9} {step:>8} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
                  f"{r['peak_anon_mb']:>12.0f} {r['disk_mb']:>8.1f}{extra}", flush=True)
        if "sklearn" in rows:
            print(f"{'':>13} {n:>6} {mode:>9} sklearn/torch: wall "
                  f"{rows['sklearn']['wall_s'] / rows['torch']['wall_s']:.1f}x, cpu "
                  f"{rows['sklearn']['cpu_s'] / rows['torch']['cpu_s']:.1f}x", flush=True)
    for (model, mode, step), by_size in peaks.items():
        if len(by_size) > 1:
            small, large = min(by_size), max(by_size)
            print(f"peak anon {model} {mode} {step}: {large} / {small} images = "
                  f"{by_size[large] / by_size[small]:.2f}x")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

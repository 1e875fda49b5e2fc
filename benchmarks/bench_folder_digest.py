"""Cost of a folder data set's content identity (labkit.data.image_folder: the sha256 of
every file torchvision's ImageFolder reads, cached by stat in labkit.store.file_digests).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_folder_digest.py [--images 20000]

Writes ``--images`` random 32x32 RGB PNGs (about 3 KB each) in ``--classes`` class
folders of a temporary ``imagefolder/train``, dates them an hour back (digests of files
modified in the last seconds are never cached), and times, in this process, with a
temporary ``LABKIT_CACHE_DIR``: the loader's own walk alone (``ImageFolder``, which
every run does anyway), the identity with an empty digest cache ("first"), the identity
again ("cached"), and the identity after 1 % of the files were rewritten. The files are
in the page cache (just written): a first hash from a cold disk also waits for the
disk. Prints a Markdown table (wall and CPU seconds, median of ``--reps``) and the
machine: CPU model, cores, load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

from labkit.data import DATASETS
from labkit.store.file_digests import DIGESTS
from labkit.store.local_cache import CACHE_ENV, cache_dir


def write_folder(root: Path, images: int, classes: int) -> list[Path]:
    rng = np.random.default_rng(0)
    past = time.time() - 3600
    paths = []
    for i in range(images):
        path = root / "imagefolder" / "train" / f"c{i % classes:03d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        os.utime(path, (past, past))
        paths.append(path)
    return paths


def timed(work: Callable[[], object], reps: int, before: Callable[[], None] = lambda: None
          ) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of ``work`` over ``reps``, ``before`` untimed."""
    walls, cpus = [], []
    for _ in range(reps):
        before()
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ[CACHE_ENV] = str(root / "cache")
        started = time.perf_counter()
        paths = write_folder(root / "data", args.images, args.classes)
        print(f"wrote {args.images} PNGs in {time.perf_counter() - started:.0f} s")
        params = {"root": str(root / "data"), "folder": "imagefolder"}
        identity = DATASETS["imagefolder"].data_identity

        def empty_cache() -> None:
            for file in (cache_dir() / DIGESTS).glob("*.json"):
                file.unlink()

        def touch_one_percent() -> None:
            past = time.time() - 3600
            for path in paths[:: 100]:
                path.write_bytes(path.read_bytes())
                os.utime(path, (past, past))

        rows = [
            ("loader's walk alone (ImageFolder)",
             timed(lambda: ImageFolder(str(root / "data" / "imagefolder" / "train")), args.reps)),
            ("identity, first (empty digest cache)", timed(lambda: identity(params), args.reps,
                                                          empty_cache)),
            ("identity, cached", timed(lambda: identity(params), args.reps)),
            ("identity, 1 % of files rewritten", timed(lambda: identity(params), args.reps,
                                                      touch_one_percent)),
        ]
        size = sum(f.stat().st_size for f in (cache_dir() / DIGESTS).glob("*.json"))
    print(f"\n{args.images} images in {args.classes} classes; digest cache file "
          f"{size / 1e6:.1f} MB\n")
    print("| step | wall s | CPU s |\n|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{cpu_model()}, {os.cpu_count()} cores, load average {load}")


if __name__ == "__main__":
    main()

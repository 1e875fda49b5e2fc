"""Images per second of the per-image DataLoader path vs the device-resident loader.

Generated CIFAR-format data: ``--images`` RGB 32x32 uint8 images held as CIFAR-10 holds
them (a NumPy array, one PIL image made per item), through labkit's own bundle assembly
(``build_bundle``) with CIFAR-10's normalisation and the ``flip_crop`` preset (or
``--augment``). One epoch of each loader is timed, consuming every batch on the device
(a sum, so lazy work is forced); repetitions are interleaved, alternating which goes
first, in one process; the result is the ratio of medians. The device loader's one-off
load (reading every image once) is timed and reported apart.

    .venv/bin/python benchmarks/bench_loader.py [--images 20000] [--batch-size 512]
        [--reps 3] [--workers 0] [--device cpu] [--augment flip_crop]

Results (2-core CPU shared with other jobs, 1 torch thread, DataLoader without workers):

* ``--images 20000 --reps 3``, load average 3.8: DataLoader 1,025 images/s, device
  loader 46,541 images/s, **45x**; one-off load 2.05 s.
* ``--images 10000 --reps 3``, load average 4.35: 1,451 vs 49,144 images/s, **34x**.
* ``--images 10000 --reps 3 --augment none``, load average 4.33: 3,448 vs 102,529
  images/s, **30x** (the per-image path's PIL conversion, ToImage and normalisation
  alone).
* ``--images 5000 --reps 1``, load average 1.9: 2,313 vs 40,837 images/s, 18x.
* Per-image draws (each image's from its own seed; before: one generator per batch),
  ``--images 10000 --reps 3``: before 386 vs 20,339 images/s (52.6x, load 4.39), after
  467 vs 21,838 (46.8x, load 6.02); the device loader alone, old and new interleaved in
  one process, 11 epochs each, CPU time: 1.01x the old speed (``flip_crop``), 1.02x
  (``flip_crop_cutout``); wall time on the loaded machine 0.88-0.96x.

The DataLoader figures move with the machine's load far more than the device loader's;
on a GPU (``--device cuda``) the comparison was not run (no device lent to this task).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from labkit.data.device_loader import device_loader
from labkit.data.seeded import SeededSampler, SeededSamples
from labkit.data.splits import Source, build_bundle

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class GeneratedCifar(Dataset):
    """Items as torchvision's CIFAR10 gives them: ``(PIL image, int label)``."""

    def __init__(self, images: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, images).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return Image.fromarray(self.data[i]), self.targets[i]


def bundle(images: int, augment: str):
    raw = GeneratedCifar(images)
    source = Source(name="generated", root=None, train=raw, train_labels=np.asarray(raw.targets),
                    test=GeneratedCifar(100, seed=1), classes=[str(c) for c in range(10)],
                    in_channels=3, native=32, mean=CIFAR_MEAN, std=CIFAR_STD, pil_input=True)
    return build_bundle(lambda: source, resolution=32, augment=augment, normalize=True,
                        eval_fraction=0.0, split_seed=0, subset=None)


def epoch(loader, device: torch.device) -> float:
    """Seconds for one pass, every batch on ``device`` and touched there."""
    started = time.perf_counter()
    total = torch.zeros((), device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        total += images.sum() + labels.to(device, non_blocking=True).sum()
    total.item()  # waits for the device
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--augment", default="flip_crop")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = bundle(args.images, args.augment)

    started = time.perf_counter()
    fast = device_loader(data.train, args.batch_size, torch.Generator().manual_seed(0), device)
    load_seconds = time.perf_counter() - started
    per_image = DataLoader(SeededSamples(data.train), batch_size=args.batch_size,
                           sampler=SeededSampler(len(data.train), torch.Generator().manual_seed(0)),
                           num_workers=args.workers, pin_memory=device.type == "cuda")
    epoch(fast, device)  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"dataloader": [], "device": []}
    for rep in range(args.reps):
        order = ["dataloader", "device"] if rep % 2 == 0 else ["device", "dataloader"]
        for name in order:
            times[name].append(epoch(per_image if name == "dataloader" else fast, device))
    rate = {name: args.images / statistics.median(t) for name, t in times.items()}
    print(f"{args.images} generated 32 px RGB images, augment {args.augment}, batch "
          f"{args.batch_size}, device {device}, DataLoader workers {args.workers}, torch "
          f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}")
    for name, t in times.items():
        print(f"  {name:10s} {rate[name]:10.0f} images/s  (epochs: "
              f"{', '.join(f'{s:.2f}' for s in t)} s)")
    print(f"  device loader one-off load: {load_seconds:.2f} s")
    print(f"  device / dataloader images/s: {rate['device'] / rate['dataloader']:.1f}x")


if __name__ == "__main__":
    main()

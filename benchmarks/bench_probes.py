"""labkit's probes against PHD-LAB's configuration, side by side in one process on the
same latents; latent storage against PHD-LAB's pickled float32.

One network is trained on digits (resolution 32, so that deep layers keep a 4x4 map),
then its latents are extracted once in float16 (labkit's default) and once in float32.
On every layer, with the same worker count over layers:

  phd-lab      scikit-learn LogisticRegression(solver="saga", max_iter=100), raw
               float32 features (PHD-LAB's probe_training.py, minus the removed
               ``multi_class`` argument, which was multinomial already; SAGA's sample
               order seeded for repeatable numbers)
  labkit       labkit.analyses.probes.run_probes on the float16 latents (standardised, L-BFGS),
               first call with an empty cache, then a second, cached call
  labkit-f32   the same on the float32 latents: what float16 storage costs in accuracy

Storage: the .npy files of both dtypes against PHD-LAB's format, a pickle.dump per
extraction batch of float32 arrays into one .p file per split and layer.

    .venv/bin/python benchmarks/bench_probes.py [--model vgg11_xs] [--epochs 10] [-d 4] [-mp 2]
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from labkit import engine
from labkit.analyses import FinishedRun, latents
from labkit.analyses.probes import run_probes
from labkit.cli import plugins
from labkit.spec import expand
from labkit.store.identity import RunConfig


def train(model: str, epochs: int, logs: Path) -> FinishedRun:
    registries = plugins.registries()
    (config,) = expand({"model": model, "dataset": {"name": "digits", "resolution": 32},
                        "epochs": epochs, "batch_size": 64, "scheduler": "cosine",
                        "optimizer": {"name": "sgd", "lr": 0.05}, "logs_dir": str(logs)},
                       registries)
    run = RunConfig(config, "bench")
    assert engine.train(run, registries, progress=False) == "finished"
    return FinishedRun(run, registries)


def extract(run: FinishedRun, mode: latents.Mode, dtype: str, root: Path) -> Path:
    directory = root / dtype
    data = run.data
    latents.extract(run.model, {"train": data.train_plain, **data.evals}, directory, mode,
                    source={"run_dir": str(run.directory)}, dtype=dtype, progress=False)
    return directory


def phd_lab_fit(directory: Path, layer: str) -> tuple[float, float, float, bool]:
    """PHD-LAB's probe on one layer: train accuracy, eval accuracy, fit seconds, and
    whether SAGA converged before max_iter."""
    x = np.load(latents.array_path(directory, "train", layer))
    y = np.load(latents.array_path(directory, "train", "labels"))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # random_state only fixes SAGA's sample order, so that reruns agree
        model = LogisticRegression(solver="saga", max_iter=100, random_state=0).fit(x, y)
    seconds = time.perf_counter() - started
    eval_x = np.load(latents.array_path(directory, "eval", layer))
    eval_y = np.load(latents.array_path(directory, "eval", "labels"))
    return model.score(x, y), model.score(eval_x, eval_y), seconds, model.n_iter_.max() < 100


def pickled_size(directory: Path, manifest: dict, batch_size: int, root: Path) -> int:
    """Bytes of PHD-LAB's storage: per split and layer, float32 batches pickled one by one."""
    total = 0
    for split in manifest["plan"]["splits"]:
        for layer in ["labels", *manifest["plan"]["layers"]]:
            array = np.load(latents.array_path(directory, split, layer))
            path = root / f"{split}-{layer}.p"
            with open(path, "wb") as handle:
                for start in range(0, len(array), batch_size):
                    chunk = array[start:start + batch_size]
                    pickle.dump(chunk if layer == "labels" else chunk.astype(np.float32), handle)
            total += path.stat().st_size
    return total


def npy_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.npy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg11_xs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("-d", default="4", help="downsampling (as in labkit extract -d)")
    parser.add_argument("-mp", type=int, default=2, help="worker processes over layers")
    args = parser.parse_args()
    mode = latents.parse_mode(args.d)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = train(args.model, args.epochs, root / "logs")
        half = extract(run, mode, "float16", root / "latents")
        full = extract(run, mode, "float32", root / "latents")
        manifest = latents.read_manifest(full)
        layers = manifest["plan"]["layers"]

        started = time.perf_counter()
        phd = Parallel(n_jobs=args.mp)(delayed(phd_lab_fit)(full, layer) for layer in layers)
        phd_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours = run_probes(half, args.mp)
        ours_seconds = time.perf_counter() - started
        started = time.perf_counter()
        cached = run_probes(half, args.mp)
        cached_seconds = time.perf_counter() - started
        pd.testing.assert_frame_equal(cached, ours)  # served from the cache, not refitted
        ours32 = run_probes(full, args.mp)

        table = pd.DataFrame({
            "layer": layers, "features": ours["features"],
            "phd_eval": [p[1] for p in phd], "labkit_eval": ours["eval_accuracy"],
            "labkit_f32_eval": ours32["eval_accuracy"],
            "phd_fit_s": [p[2] for p in phd], "labkit_fit_s": ours["fit_seconds"],
            "phd_converged": [p[3] for p in phd], "labkit_converged": ours["converged"]})
        pd.set_option("display.width", 200)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

        gap = (table["labkit_eval"] - table["phd_eval"]) * 100
        f16 = (table["labkit_eval"] - table["labkit_f32_eval"]) * 100
        pickles = root / "pickles"
        pickles.mkdir()
        pickled = pickled_size(full, manifest, run.config["eval_batch_size"], pickles)
        print(f"\nmodel {args.model}, {args.epochs} epochs, digits at 32 px, "
              f"downsampling {args.d}, "
              f"{len(layers)} layers, -mp {args.mp}, "
              f"train/eval images {manifest['plan']['splits']}")
        print(f"eval accuracy, labkit − phd-lab (points): mean {gap.mean():+.2f}, "
              f"mean |.| {gap.abs().mean():.2f}, max |.| {gap.abs().max():.2f}")
        print(f"eval accuracy, float16 − float32 latents (points): max |.| {f16.abs().max():.2f}")
        print(f"wall time over all layers: phd-lab {phd_seconds:.2f} s, "
              f"labkit {ours_seconds:.2f} s "
              f"(x{phd_seconds / ours_seconds:.1f} faster), cached rerun {cached_seconds:.3f} s")
        print(f"storage: phd-lab pickles {pickled / 1e6:.2f} MB, labkit float32 .npy "
              f"{npy_size(full) / 1e6:.2f} MB, labkit float16 .npy {npy_size(half) / 1e6:.2f} MB "
              f"({npy_size(half) / pickled:.2f} of the pickles)")


if __name__ == "__main__":
    main()

"""Per-layer CPU time of the streamed probe solver on stored latents, in one process.

For every layer of an extraction (a latents folder with ``manifest.json``, e.g. one that
``benchmarks/bench_scale.py`` left in its ``--work`` folder), fits
:func:`labkit.measures.logistic.fit` on the train split with the default parameters, scores the
eval split, and prints the layer's shape, CPU seconds (fit and scoring), L-BFGS
iterations, passes over all rows after the survey, whether the gradient test passed, and
the train and eval accuracy; with ``--sklearn`` also scikit-learn's ``LogisticRegression``
(lbfgs) behind a ``StandardScaler`` on the layer loaded as float32, its CPU seconds and
iterations (``--sklearn-tol``: its stopping tolerance, default scikit-learn's 1e-4; a
smaller one shows where its default fit stopped short of the optimum). Used to choose the sample sizes of the solver (docs/probes.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_layers.py LATENTS_DIR \\
        [--layers conv1 layer4-1-conv2] [--sklearn [--sklearn-tol 1e-6]]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from labkit.measures import logistic
from labkit.store.latent_layout import array_path, read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", nargs="*", help="only these layers (default: all)")
    parser.add_argument("--sklearn", action="store_true")
    parser.add_argument("--sklearn-tol", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = read_manifest(args.directory)
    if manifest is None:
        raise SystemExit(f"{args.directory} holds no complete extraction")
    labels = {split: np.load(array_path(args.directory, split, "labels"))
              for split in ("train", "eval")}
    total = 0.0
    for layer in args.layers or manifest["plan"]["layers"]:
        x, ex = (np.load(array_path(args.directory, split, layer), mmap_mode="r")
                 for split in ("train", "eval"))
        start = time.process_time()
        probe = logistic.fit(x, labels["train"], 10, positions=len(x) // len(labels["train"]))
        eval_accuracy = probe.score(ex, labels["eval"], positions=len(ex) // len(labels["eval"]))
        seconds = time.process_time() - start
        total += seconds
        line = (f"{layer:24s} {str(x.shape):18s} cpu {seconds:7.2f} it {probe.n_iter:4d} "
                f"passes {probe.passes:2d} converged {probe.converged!s:5s} "
                f"train {probe.train_accuracy:.5f} eval {eval_accuracy:.5f}")
        if args.sklearn:
            line += "  |  sklearn " + _sklearn(x, ex, labels, args.sklearn_tol)
        print(line, flush=True)
    print(f"total CPU s (torch): {total:.1f}")


def _sklearn(x: np.ndarray, ex: np.ndarray, labels: dict[str, np.ndarray], tol: float) -> str:
    """scikit-learn's fit of the same layer: CPU seconds, iterations, accuracies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.repeat(labels["train"], len(x) // len(labels["train"]))
    ey = np.repeat(labels["eval"], len(ex) // len(labels["eval"]))
    start = time.process_time()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, tol=tol))
    model.fit(np.asarray(x, dtype=np.float32), y)
    train, evaluated = model.score(np.asarray(x, dtype=np.float32), y), model.score(
        np.asarray(ex, dtype=np.float32), ey)
    seconds = time.process_time() - start
    return (f"cpu {seconds:7.2f} it {int(model[-1].n_iter_.max()):4d} train {train:.5f} "
            f"eval {evaluated:.5f}")


if __name__ == "__main__":
    main()

"""Many multinomial logistic regressions fitted together on rows that are never stored.

The rows come from a *pass*: a function that, called again, delivers the same rows once
more, a batch at a time, for several feature sets at once (the layers of a network, run
forward over a data set). Each feature set is fitted for several regularisation
strengths ``C``; every (feature set, ``C``) is one problem with scikit-learn's objective,
as :mod:`labkit.measures.logistic` states it (standardised features, mean loss plus
``||W||² / (2 C n)``, stop when the largest absolute gradient entry is at most ``tol``)::

    f(W, b) = 1/n · Σ_i  -log softmax(W x_i + b)[y_i]  +  ||W||² / (2 C n)

A fit is:

1. **Statistics**, one pass: per feature set, the mean and variance of every feature
   (``StandardScaler``'s population variance), the per-class sums and counts
   (:class:`labkit.measures.logistic.RowStats`).
2. **Full-batch L-BFGS in lockstep**: every problem runs its own L-BFGS (history
   :data:`HISTORY`, backtracking line search with the sufficient-decrease test),
   written as a generator that hands out the next point it needs evaluated. A pass
   evaluates the loss, gradient and train accuracy of every problem at its point, for
   all feature sets and all ``C`` from the same batches: passes are shared, and a
   problem that has converged drops out of the next ones. The number of passes is
   that of the slowest problem.
3. **Scoring**, one pass per other split: the accuracy of every problem's final point.

L-BFGS starts from zero, as scikit-learn's does, and stops when the gradient test
passes, after ``max_iter`` iterations, or when the objective no longer decreases
(scipy's relative-reduction test, ``64 ε``); ``converged`` is the gradient test at the
returned point. The line search differs from scipy's (More–Thuente): the minimiser, and
so the accuracy, agree to within the tolerance, not the iteration counts.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from labkit.measures.logistic import RowData, RowStats, Terms, count_correct, logit_terms, objective

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]
"""One batch of a pass: feature set → float32 rows ``(images · positions, features)``
(each image's rows consecutive), and the images' int64 labels, on one device."""
Pass = Callable[[str], Iterable[Batch]]
"""``passes(split)``: the batches of ``split`` (``"train"`` and the scored splits)."""

HISTORY = 10
"""Pairs of steps and gradient changes L-BFGS keeps (scipy's and torch's default)."""
ARMIJO = 1e-4
"""Sufficient decrease a step must bring: ``f(x + t d) <= f(x) + ARMIJO · t · g·d``."""
MAX_BACKTRACKS = 30
"""Most shortened steps of one line search before the problem stops where it is."""
FTOL = 64 * float(np.finfo(float).eps)
"""Relative reduction of the objective under which L-BFGS stops (scikit-learn's ftol)."""


@dataclass
class _Evaluation:
    """The objective at a point: value, flat float64 gradient, rows predicted right."""

    point: torch.Tensor
    value: float
    grad: torch.Tensor
    correct: int


def _lbfgs(start: torch.Tensor, tol: float, max_iter: int
           ) -> Generator[torch.Tensor, _Evaluation, int]:
    """L-BFGS from ``start`` (flat float64): yields each point to evaluate, receives its
    :class:`_Evaluation`, returns the iterations done. The caller keeps the best
    evaluation, which is the last accepted point (the sufficient-decrease test makes
    every accepted point lower than the ones before)."""
    current = yield start
    steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / y·s)
    for iteration in range(1, max_iter + 1):
        grad = current.grad
        if float(grad.abs().max()) <= tol:
            return iteration - 1
        direction = _two_loop(grad, steps)
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from the gradient
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        # scipy's first step is 1 / ||d||: the unscaled gradient may be far too long
        step = 1.0 if steps else min(1.0, 1.0 / float(direction.norm()))
        for _ in range(MAX_BACKTRACKS):
            trial = yield current.point + step * direction
            if trial.value <= current.value + ARMIJO * step * slope:
                break
            # the minimum of the quadratic through f(0), f'(0) and f(step), kept within
            # [0.1, 0.5] of the step
            curvature = trial.value - current.value - step * slope
            shorter = -slope * step * step / (2 * curvature) if curvature > 0 else step / 2
            step = min(max(shorter, 0.1 * step), 0.5 * step)
        else:
            return iteration  # no step lowers the objective enough: stop here
        s, y = trial.point - current.point, trial.grad - grad
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):  # curvature information worth keeping
            steps.append((s, y, 1.0 / sy))
            del steps[:-HISTORY]
        reduction = (current.value - trial.value) / max(abs(current.value), abs(trial.value), 1.0)
        current = trial
        if reduction <= FTOL:
            return iteration
    return max_iter


def _two_loop(grad: torch.Tensor, steps: list[tuple[torch.Tensor, torch.Tensor, float]]
              ) -> torch.Tensor:
    """The L-BFGS direction ``-H g`` from the kept ``(s, y, 1 / y·s)`` pairs."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(steps):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if steps:
        s, y, _ = steps[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), alpha in zip(steps, reversed(alphas), strict=True):
        q += (alpha - rho * float(y @ q)) * s
    return -q


@dataclass
class StreamFit:
    """One fitted problem.

    Attributes:
        weight: ``(classes, features)``; bias: ``(classes,)`` (float32, on the device);
        mean, scale: ``(features,)`` standardisation (float32); converged: the gradient
        test passed at this point; n_iter: L-BFGS iterations; train_accuracy: share of
        the train rows predicted right; scores: split → accuracy (filled by
        :func:`fit`).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    converged: bool
    n_iter: int
    train_accuracy: float
    scores: dict[str, float]


@dataclass
class StreamResult:
    """What :func:`fit` returns: ``fits`` by ``(feature set, C)``, the ``passes`` made
    over each split, and the wall ``seconds`` of the whole fit (shared by all problems)."""

    fits: dict[tuple[str, float], StreamFit]
    passes: dict[str, int]
    seconds: float


class _Problem:
    """One (feature set, C) problem being fitted: its L-BFGS and its best evaluation."""

    def __init__(self, classes: int, width: int, C: float, data: RowData, tol: float,
                 max_iter: int, device: torch.device):
        self.shape, self.C, self.data = (classes, width), C, data
        self.solver = _lbfgs(torch.zeros(classes * (width + 1), dtype=torch.float64,
                                         device=device), tol, max_iter)
        self.point: torch.Tensor | None = next(self.solver)
        self.best: _Evaluation | None = None
        self.n_iter = 0

    def split(self, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of a flat point, float32."""
        classes, width = self.shape
        return (point[:classes * width].reshape(classes, width).float(),
                point[classes * width:].float())

    def update(self, terms: Terms) -> None:
        """Hand the terms of a pass at :attr:`point` to L-BFGS; ``point`` becomes the next
        point it asks for, ``None`` once it has stopped."""
        weight, bias = self.split(self.point)
        value, grad_w, grad_b = objective(terms, self.data, weight, bias, self.C, self.data.rows)
        evaluation = _Evaluation(self.point, value, torch.cat([grad_w.flatten(), grad_b]),
                                 terms.correct)
        if self.best is None or value < self.best.value:
            self.best = evaluation
        try:
            self.point = self.solver.send(evaluation)
        except StopIteration as stop:
            self.point, self.n_iter = None, stop.value


def _rows(labels: torch.Tensor, count: int) -> torch.Tensor:
    """A label per row for ``count`` rows of ``len(labels)`` images."""
    return torch.repeat_interleave(labels, count // len(labels))


def fit(passes: Pass, splits: list[str], classes: int, Cs: list[float], *,
        max_iter: int = 1000, tol: float = 1e-4, standardize: bool = True,
        device: str | torch.device = "cpu") -> StreamResult:
    """Fit every feature set of ``passes`` for every ``C`` (module docstring).

    Args:
        passes: see :data:`Pass`; ``passes("train")`` is fitted on.
        splits: the other splits to score (``passes(split)`` each, once).
        classes: number of classes (labels in ``[0, classes)``).
        Cs: inverse regularisation strengths, as scikit-learn's ``C``.
        max_iter: most L-BFGS iterations of each problem (scikit-learn's ``max_iter``).
        tol: converged when the largest absolute gradient entry is at most ``tol``.
        standardize: scale features to mean 0, variance 1 (train statistics) first.
        device: where the arithmetic runs (the batches' device).
    """
    started = time.perf_counter()
    device = torch.device(device)
    stats: dict[str, RowStats] = {}
    for rows, labels in passes("train"):
        for name, x in rows.items():
            if name not in stats:
                stats[name] = RowStats(x.shape[1], classes, device)
            stats[name].add(x, labels, len(x) // len(labels))
    scaling = {name: stat.finish(standardize) for name, stat in stats.items()}
    standard = {name: (mean.float(), scale.float()) for name, (mean, scale, _) in scaling.items()}
    problems = {(name, C): _Problem(classes, len(mean), C, data, tol, max_iter, device)
                for name, (mean, _, data) in scaling.items() for C in Cs}
    done = 1
    while running := {key: p for key, p in problems.items() if p.point is not None}:
        terms: dict[tuple[str, float], Terms] = {}
        points = {key: p.split(p.point) for key, p in running.items()}
        for rows, labels in passes("train"):
            for name, x in rows.items():
                if not any((name, C) in running for C in Cs):
                    continue
                x = torch.sub(x, standard[name][0]).div_(standard[name][1])
                y = _rows(labels, len(x))
                for C in Cs:
                    if (name, C) in running:
                        terms[name, C] = logit_terms([(x, y)], *points[name, C],
                                                     into=terms.get((name, C)))
        for key, problem in running.items():
            problem.update(terms[key])
        done += 1
    fits = {}
    for (name, C), problem in problems.items():
        weight, bias = problem.split(problem.best.point)
        converged = float(problem.best.grad.abs().max()) <= tol
        fits[name, C] = StreamFit(weight, bias, *standard[name], converged, problem.n_iter,
                                  problem.best.correct / problem.data.rows, {})
    for split in splits:
        correct = dict.fromkeys(fits, 0)
        seen = dict.fromkeys(stats, 0)
        for rows, labels in passes(split):
            for name, x in rows.items():
                x = torch.sub(x, standard[name][0]).div_(standard[name][1])
                y = _rows(labels, len(x))
                seen[name] += len(x)
                for C in Cs:
                    model = fits[name, C]
                    logits = torch.addmm(model.bias[:, None], model.weight, x.T)
                    correct[name, C] += count_correct(logits, logits.amax(0), y)
        for (name, C), model in fits.items():
            model.scores[split] = correct[name, C] / max(seen[name], 1)
    counts = {"train": done}
    for split in splits:
        counts[split] = counts.get(split, 0) + 1
    return StreamResult(fits, counts, time.perf_counter() - started)

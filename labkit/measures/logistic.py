"""Multinomial logistic regression on memory-mapped arrays, streamed in chunks.

The objective is scikit-learn's ``LogisticRegression(C=C)`` with the L-BFGS solver
(multinomial, L2 penalty on the weights, none on the intercept), on standardised features
(mean 0, variance 1 from the training rows, as ``StandardScaler``), divided by the number
of rows ``n``, which leaves its minimiser unchanged::

    f(W, b) = 1/n · Σ_i  -log softmax(W x_i + b)[y_i]  +  ||W||² / (2 C n)

so a probe's numbers keep scikit-learn's meaning, and it stops as scikit-learn's does:
when the largest absolute entry of the gradient of ``f`` is at most ``tol``.

The rows are never all in memory (a pixelwise layer of 50 M rows included). A fit is:

1. **Survey**, one pass over the rows: per-feature mean and variance and per-class sums
   (float64), and a seeded uniform sample of the rows kept in memory, standardised (an
   eighth of them, between :data:`SAMPLE_MIN_ROWS` and :data:`SAMPLE_ROWS` rows and at
   most :data:`SAMPLE_BYTES`). A layer of at most twice :data:`SAMPLE_ROWS` rows that
   fits in :data:`SAMPLE_BYTES` is kept whole: the fit is then plain full-batch L-BFGS
   in memory, scikit-learn's procedure, and step 2 is skipped.
2. **Sample-preconditioned passes.** L-BFGS to convergence on the sample's objective
   (its mean loss plus the full penalty) gives a starting point; then each pass over all
   rows computes the exact loss, gradient and train accuracy, stops when the gradient
   test passes, and otherwise minimises the sample's objective plus the linear term that
   makes its gradient equal the full gradient at the current point (a DANE step: the
   sample's curvature, the full data's gradient). A sample of 10⁵ rows for ``classes ·
   (features + 1)`` parameters has nearly the full Hessian, so each pass shrinks the gradient by a large
   factor and two or three passes usually do. Should a pass not lower the loss, or the
   gradient not pass after :data:`MAX_PASSES`, L-BFGS takes over on the streamed
   full objective from the best point.

Every pass works on ``(classes, rows)`` logits, whose per-column softmax torch computes
several times faster on CPU than the row-major ``cross_entropy`` (docs/probes.md), and
needs no autograd: the gradient is ``(P - Y) X``, with ``Y X`` (the per-class sums) known
from the survey. Everything runs on the given device (a GPU when the run has one).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_ROWS = 1 << 16
"""Most rows read and computed at a time."""
CHUNK_BYTES = 4 << 20
"""Most bytes (float32) of a chunk: wide layers read fewer rows at a time. 4 MiB rather
than 8: a worker's peak on a pooled layer of 50,000 × 1,024 was 17 MB lower (the heap
keeps what a chunk's temporaries needed) and its fit no slower (0.77× the CPU time
there; pixelwise layers within noise). One-off measurement: 100 L-BFGS iterations on
three layers, peak RssAnon sampled in the process; the benchmark that keeps the effect
in view is ``benchmarks/bench_scale.py`` (docs/probes.md)."""
SAMPLE_ROWS = 1 << 17
"""Most rows of the in-memory sample (the whole layer when it has no more)."""
SAMPLE_SHARE = 8
SAMPLE_MIN_ROWS = 1 << 15
"""A sample holds an eighth of the rows, at least :data:`SAMPLE_MIN_ROWS` and at most
:data:`SAMPLE_ROWS`: where a pass over all rows is cheap (640 k rows × 32 features), a
smaller sample makes its fits cheaper at no more passes (docs/probes.md)."""
SAMPLE_BYTES = 256 << 20
"""Most bytes (float32) of the in-memory sample: wide layers keep fewer rows. A pooled
layer of 50,000 images × 1,024 features (205 MB) is then fitted whole in memory: with a
sample of a third of its rows (64 MiB), the sample-preconditioned passes did not
contract for its 10,250 parameters and streamed L-BFGS took 588 passes (115 CPU s, where
the whole layer in memory takes 631 iterations, 42 CPU s; docs/probes.md)."""
FLOAT32_WHOLE_BYTES = 64 << 20
"""A layer kept whole whose rows take more than this as float32, and are float16 as
stored (labkit's latents), is kept as stored and standardised a chunk at a time: half
the memory (a pooled layer of 50,000 × 1,024: 102 MB instead of 205), each evaluation
about 1.6× the time (the cast from float16). Smaller layers are kept standardised in
float32."""
MAX_PASSES = 10
"""Sample-preconditioned passes before streamed L-BFGS takes over."""
SEED = 0
"""Seed of the sample: a fit is repeatable."""
INNER_TOL = 0.3
"""The sample's fits stop at ``INNER_TOL · tol``: the passes over all rows decide."""


def _chunk_rows(width: int) -> int:
    """Rows of a chunk of ``width`` features."""
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // (4 * width)))


def _sample_rows(rows: int, width: int) -> int:
    """Rows of the in-memory sample of a layer of ``rows`` rows and ``width`` features.

    All of them (the layer is fitted whole, in memory) when it has at most twice
    :data:`SAMPLE_ROWS` rows and :data:`SAMPLE_BYTES` as float32: the sample-preconditioned
    passes fit the sample about twice over (a start, then a DANE step), so below about
    twice the sample's rows one full-batch fit costs less (160 k rows × 64 features:
    3.4 CPU s where the passes took 6.5)."""
    if rows <= 2 * SAMPLE_ROWS and rows * width * 4 <= SAMPLE_BYTES:
        return rows
    keep = min(SAMPLE_ROWS, max(SAMPLE_MIN_ROWS, rows // SAMPLE_SHARE))
    return min(rows, keep, max(1, SAMPLE_BYTES // (4 * width)))


def peak_bytes(rows: int, width: int, classes: int) -> int:
    """Upper estimate of the memory :func:`fit` allocates for a layer of ``rows`` rows,
    ``width`` features and ``classes`` classes, beyond the process itself: the sample
    (float32 rows and int64 labels) next to a chunk's temporaries (float32 rows, centred
    or standardised copies, logits and their comparisons), and half again for what the
    allocator keeps of earlier chunks (measured in tests/test_probe_scale.py). Bounded
    whatever ``rows``."""
    sample = _sample_rows(rows, width) * (width * 4 + 8)
    chunk = _chunk_rows(width) * (3 * width + 3 * classes + 2) * 4
    return (sample + chunk) * 3 // 2 + (1 << 20)


def _chunks(features: np.ndarray, labels: np.ndarray, device: torch.device,
            positions: int = 1) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(first row, x, image labels)``: float32 rows and int64 labels of the whole images
    they hold, on ``device``, about :data:`CHUNK_ROWS` rows at a time. ``labels`` holds one
    label per image, whose ``positions`` rows are consecutive (a pixelwise layer's rows
    are image-major), so no per-row label array is ever built for the whole layer.
    ``x`` may share memory with ``features``: never write into it."""
    images = max(1, _chunk_rows(features.shape[1]) // positions)
    for first in range(0, len(labels), images):
        rows = np.asarray(features[first * positions:(first + images) * positions])
        with warnings.catch_warnings():
            # a read-only memory map: the tensor is only ever read (and torch casts
            # float16 several times faster than numpy)
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(rows)
        y = torch.from_numpy(np.asarray(labels[first:first + images], dtype=np.int64))
        yield first * positions, x.to(device).float(), y.to(device)


def count_correct(logits: torch.Tensor, top: torch.Tensor, y: torch.Tensor) -> int:
    """Columns of ``(classes, rows)`` logits whose first largest entry (``argmax(0)``) is
    ``y``; ``top`` is their maximum. Compares the label's logit with the maximum, and
    settles the (rare) tied columns with ``argmax``, which torch computes slowly along a
    short first dimension."""
    at_top = logits == top
    correct = at_top.gather(0, y[None])[0]
    tied = at_top.sum(0) > 1
    if bool(tied.any()):
        correct[tied] = logits[:, tied].argmax(0) == y[tied]
    return int(correct.sum())


@dataclass
class Terms:
    """Sums over rows at one point: ``Σ logsumexp(W x + b)``, ``P X`` (``(classes,
    features)``), ``Σ P`` (``(classes,)``), all float64, and the correctly predicted rows
    (when counted)."""

    log_partition: torch.Tensor
    px: torch.Tensor
    p: torch.Tensor
    correct: int = 0


def logit_terms(chunks: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                weight: torch.Tensor, bias: torch.Tensor, into: Terms | None = None) -> Terms:
    """:class:`Terms` of standardised ``(x, row labels or None)`` chunks, added to
    ``into`` when given (a pass delivered a chunk at a time); rows are counted as correct
    only when their labels are given."""
    classes, width = weight.shape
    device = weight.device
    total = into if into is not None else Terms(
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros(classes, width, dtype=torch.float64, device=device),
        torch.zeros(classes, dtype=torch.float64, device=device))
    for x, y in chunks:
        # float64 weights (an L-BFGS fit's last iterations, _lbfgs): float64 logits
        x = x.to(weight.dtype)
        logits = torch.addmm(bias[:, None], weight, x.T)  # (classes, rows)
        top = logits.amax(0)
        if y is not None:
            total.correct += count_correct(logits, top, y)
        logits -= top
        logits.exp_()
        norm = logits.sum(0)
        logits /= norm  # now the probabilities P
        total.log_partition += (norm.log_().sum() + top.sum()).double()
        total.px += (logits @ x).double()
        total.p += logits.sum(1).double()
    return total


@dataclass
class RowData:
    """What the objective needs of a set of rows besides the rows: their count, the
    per-class sums of the standardised rows and the per-class counts (float64)."""

    rows: int
    class_sums: torch.Tensor
    counts: torch.Tensor


def objective(terms: Terms, data: RowData, weight: torch.Tensor, bias: torch.Tensor,
              C: float, n: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss over ``data``'s rows plus ``||W||² / (2 C n)``: value, and the gradient
    with respect to ``weight`` and ``bias`` (float64)."""
    w, b = weight.double(), bias.double()
    linear = (w * data.class_sums).sum() + (b * data.counts).sum()  # Σ_i z_i[y_i]
    value = (terms.log_partition - linear) / data.rows + (w * w).sum() / (2 * C * n)
    grad_w = (terms.px - data.class_sums) / data.rows + w / (C * n)
    grad_b = (terms.p - data.counts) / data.rows
    return float(value), grad_w, grad_b


@dataclass
class _Survey:
    """Result of the survey pass: standardisation, the full data's class sums, and the
    in-memory sample (its rows, standardised unless ``standardized`` is false, then as
    stored; row labels; its own class sums)."""

    mean: torch.Tensor
    scale: torch.Tensor
    full: RowData
    sample_x: torch.Tensor
    sample_y: torch.Tensor
    sample: RowData
    standardized: bool = True

    def sample_chunks(self, labels: bool = False
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The sample's standardised float32 rows (and labels when ``labels``), a chunk at
        a time. Rows kept as stored are standardised into one buffer, overwritten by the
        next chunk (a fresh tensor per chunk let the heap grow by about 80 MB over an
        L-BFGS fit): use each chunk before asking for the next."""
        step = _chunk_rows(self.sample_x.shape[1])
        buffer = None if self.standardized else torch.empty(
            min(step, len(self.sample_x)), self.sample_x.shape[1], device=self.sample_x.device)
        for first in range(0, len(self.sample_x), step):
            x = self.sample_x[first:first + step]
            if buffer is not None:  # float16 - float32: float32
                x = torch.sub(x, self.mean, out=buffer[:len(x)]).div_(self.scale)
            yield x, self.sample_y[first:first + step] if labels else None


class RowStats:
    """Statistics of rows streamed a chunk at a time (float64): per-feature sums and sums
    of squares, per-class sums and counts; what the standardisation and the objective's
    linear term need.

    Sums are of the rows minus the first chunk's mean (float32 within a chunk, float64
    across chunks), so that the variance does not come from the difference of two large
    numbers.
    """

    def __init__(self, width: int, classes: int, device: torch.device):
        self.rows = 0
        self.shift: torch.Tensor | None = None
        self.total = torch.zeros(width, dtype=torch.float64, device=device)
        self.squares = torch.zeros(width, dtype=torch.float64, device=device)
        self.class_sums = torch.zeros(classes, width, dtype=torch.float64, device=device)
        self.counts = torch.zeros(classes, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, image_labels: torch.Tensor, positions: int = 1) -> None:
        """Count float32 rows ``x`` ``(images · positions, features)`` (each image's
        ``positions`` rows consecutive) of images labelled ``image_labels``."""
        # one chunk-sized temporary besides x (the heap keeps what the peak needed)
        if self.shift is None:
            self.shift = x.mean(0)
        centred = x - self.shift
        self.total += centred.sum(0).double()
        per_image = (centred if positions == 1
                     else centred.reshape(len(image_labels), positions, x.shape[1]).sum(1))
        self.class_sums += torch.zeros_like(self.class_sums, dtype=x.dtype).index_add_(
            0, image_labels, per_image).double()
        self.squares += centred.square_().sum(0).double()
        self.counts += torch.bincount(image_labels, minlength=len(self.counts)).double() * positions
        self.rows += len(x)

    def finish(self, standardize: bool) -> tuple[torch.Tensor, torch.Tensor, RowData]:
        """``(mean, scale, data)``: the standardisation (float64; as ``StandardScaler``:
        population variance, a constant feature scaled by 1; zeros and ones without
        ``standardize``) and the rows' :class:`RowData` once standardised."""
        offset = self.total / self.rows  # the mean minus the shift
        width = len(self.total)
        if standardize:
            mean = self.shift.double() + offset
            scale = (self.squares / self.rows - offset * offset).clamp_min(0).sqrt()
            scale[scale == 0] = 1.0  # a constant feature, as StandardScaler
        else:
            mean = torch.zeros(width, dtype=torch.float64, device=self.total.device)
            scale = torch.ones(width, dtype=torch.float64, device=self.total.device)
        # Σ over each class's rows of (x - mean) / scale
        sums = (self.class_sums + self.counts[:, None] * (self.shift.double() - mean)) / scale
        return mean, scale, RowData(self.rows, sums, self.counts)


def _survey(features: np.ndarray, labels: np.ndarray, classes: int, positions: int,
            standardize: bool, device: torch.device) -> _Survey:
    """One pass: statistics of every row (:class:`RowStats`) and the seeded sample (see
    the module docstring)."""
    n, width = features.shape
    keep = _sample_rows(n, width)
    rng = np.random.default_rng(SEED)
    chosen = np.sort(rng.choice(n, keep, replace=False)) if keep < n else None
    stats = RowStats(width, classes, device)
    # filled as the chunks pass: the sample is in memory once (a large whole layer of
    # float16 as stored, FLOAT32_WHOLE_BYTES)
    as_stored = (keep == n and features.dtype == np.float16
                 and n * width * 4 > FLOAT32_WHOLE_BYTES)
    sample_x = torch.empty(keep, width, device=device,
                           dtype=torch.float16 if as_stored else torch.float32)
    sample_y = torch.empty(keep, dtype=torch.int64, device=device)
    filled = 0
    for first, x, image_labels in _chunks(features, labels, device, positions):
        stats.add(x, image_labels, positions)
        if chosen is None:
            sample_x[first:first + len(x)] = x
            sample_y[first:first + len(x)] = torch.repeat_interleave(image_labels, positions)
        else:
            start, stop = np.searchsorted(chosen, [first, first + len(x)])
            index = torch.from_numpy(chosen[start:stop] - first).to(device)
            torch.index_select(x, 0, index, out=sample_x[filled:filled + len(index)])
            sample_y[filled:filled + len(index)] = image_labels[index // positions]
            filled += len(index)
    mean, scale, full = stats.finish(standardize)
    mean32, scale32 = mean.float(), scale.float()
    if as_stored:  # the sample is every row: its sums are the full data's
        return _Survey(mean32, scale32, full, sample_x, sample_y, full, standardized=False)
    x, y = sample_x.sub_(mean32).div_(scale32), sample_y
    sample = RowData(len(x),
                     torch.zeros(classes, width, device=device).index_add_(0, y, x).double(),
                     torch.bincount(y, minlength=classes).double())
    return _Survey(mean32, scale32, full, x, y, sample)


def _lbfgs(evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor,
                                                                   torch.Tensor]],
           weight: torch.Tensor, bias: torch.Tensor, tol: float,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise ``evaluate`` (value, gradients) from ``weight``, ``bias`` with scipy's
    L-BFGS-B as scikit-learn's ``lbfgs`` solver runs it (history 10, at most 50
    line-search steps, stop when the largest gradient entry is at most ``tol``); returns
    the point (float32) and the iterations used.

    ``evaluate`` computes at float32 weights first. Near the minimum, float32 logits
    (their rounding about 1e-6 of a logit) hide the decrease a step still makes, and
    scipy stops before the gradient test passes (one layer of 21 in
    ``benchmarks/bench_probe_layers.py``); the fit then goes on from there at float64
    weights, so that the logits are computed in float64 (the rows cast a chunk at a
    time, :func:`logit_terms`).

    scipy rather than ``torch.optim.LBFGS``: building any torch optimizer imports
    ``torch._dynamo`` (1.3 s, a quarter of ``labkit probes`` on one run).
    """
    # imported here: scipy.optimize takes 0.3 s to import, which every process that
    # imports the analyses (each training process) would pay without fitting a probe
    from scipy.optimize import minimize

    size, shape, device = weight.numel(), weight.shape, weight.device

    def value_and_gradient(at: np.ndarray, precision: torch.dtype) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(at).to(device=device, dtype=precision)
        value, grad_w, grad_b = evaluate(x[:size].reshape(shape), x[size:])
        gradient = torch.cat([grad_w.reshape(-1), grad_b]).to("cpu", torch.float64)
        return float(value), gradient.numpy()

    point = torch.cat([weight.reshape(-1), bias]).to("cpu", torch.float64).numpy()
    used = 0
    for precision in (torch.float32, torch.float64):
        result = minimize(value_and_gradient, point, args=(precision,), jac=True,
                          method="L-BFGS-B",
                          options={"maxiter": max_iter - used, "gtol": tol, "maxls": 50,
                                   "ftol": 64 * np.finfo(float).eps})
        used += int(result.nit)
        point = result.x
        if np.abs(result.jac).max() <= tol or used >= max_iter:
            break
    at = torch.from_numpy(point).to(device=device, dtype=torch.float32)
    return at[:size].reshape(shape).clone(), at[size:].clone(), used


@dataclass
class StreamedLogistic:
    """A fitted probe: ``predict`` and ``score`` stream too.

    Attributes:
        weight: ``(classes, features)``; bias: ``(classes,)``; mean, scale:
        ``(features,)`` standardisation (zeros and ones without it); n_iter: L-BFGS
        iterations used, all fits together; passes: passes over all rows after the
        survey; converged: the gradient test passed at the returned point;
        train_accuracy: share of the training rows predicted right there.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    n_iter: int
    passes: int
    converged: bool
    train_accuracy: float

    def score(self, features: np.ndarray, labels: np.ndarray, positions: int = 1) -> float:
        """Accuracy (share of rows whose first largest logit is their label), streamed;
        ``labels`` and ``positions`` as for :func:`fit`."""
        correct = 0
        with torch.no_grad():
            for _, x, image_labels in _chunks(features, labels, self.weight.device, positions):
                logits = torch.addmm(self.bias[:, None], self.weight,
                                     torch.sub(x, self.mean).div_(self.scale).T)
                rows = torch.repeat_interleave(image_labels, positions)
                correct += count_correct(logits, logits.amax(0), rows)
        return correct / max(len(features), 1)


def _streamed(features: np.ndarray, labels: np.ndarray, positions: int, survey: _Survey,
              count: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Standardised chunks of every row, with row labels when ``count``."""
    for _, x, image_labels in _chunks(features, labels, survey.mean.device, positions):
        rows = torch.repeat_interleave(image_labels, positions) if count else None
        yield torch.sub(x, survey.mean).div_(survey.scale), rows


def fit(features: np.ndarray, labels: np.ndarray, classes: int, *, positions: int = 1,
        C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, standardize: bool = True,
        device: str | torch.device = "cpu") -> StreamedLogistic:
    """Fit the objective of the module docstring to its stopping test.

    Args:
        features: ``(rows, features)`` array, typically a read-only memory map (any
            float dtype; read in chunks as float32).
        labels: integer labels in ``[0, classes)``, one per image.
        classes: number of classes.
        positions: rows per image (``features`` has ``len(labels) * positions`` rows,
            each image's consecutive).
        C: inverse regularisation strength, as scikit-learn's.
        max_iter: most iterations of each L-BFGS fit (as scikit-learn's).
        tol: converged when the largest absolute gradient entry is at most ``tol``.
        standardize: scale features to mean 0, variance 1 first.
        device: where the arithmetic runs.
    """
    device = torch.device(device)
    n, width = features.shape
    survey = _survey(features, labels, classes, positions, standardize, device)
    sample = survey.sample

    def on_sample(correction: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable:
        """The objective on the in-memory sample (plus the DANE term)."""
        def evaluate(weight, bias):
            terms = logit_terms(survey.sample_chunks(), weight, bias)
            value, grad_w, grad_b = objective(terms, sample, weight, bias, C, n)
            if correction is not None:  # <correction, (W, b)>
                value += float((correction[0] * weight.double()).sum()
                               + (correction[1] * bias.double()).sum())
                grad_w, grad_b = grad_w + correction[0], grad_b + correction[1]
            return value, grad_w, grad_b
        return evaluate

    weight = torch.zeros(classes, width, device=device)
    bias = torch.zeros(classes, device=device)
    if sample.rows == n:  # the whole layer is in memory: plain L-BFGS
        weight, bias, n_iter = _lbfgs(on_sample(), weight, bias, tol, max_iter)
        terms = logit_terms(survey.sample_chunks(labels=True), weight, bias)
        _, grad_w, grad_b = objective(terms, survey.full, weight, bias, C, n)
        converged = max(float(grad_w.abs().max()), float(grad_b.abs().max())) <= tol
        return StreamedLogistic(weight, bias, survey.mean, survey.scale, n_iter, 0,
                                converged, terms.correct / n)

    passes = 0

    def on_all(count: bool) -> Callable:
        def evaluate(weight, bias):
            nonlocal passes
            passes += 1
            terms = logit_terms(_streamed(features, labels, positions, survey, count), weight, bias)
            return (*objective(terms, survey.full, weight, bias, C, n), terms.correct)
        return evaluate

    n_iter, correction, best = 0, None, None
    converged = False
    while passes < min(MAX_PASSES, max_iter):
        weight, bias, used = _lbfgs(on_sample(correction), weight, bias, tol * INNER_TOL,
                                    max_iter)
        n_iter += used
        value, grad_w, grad_b, correct = on_all(True)(weight, bias)
        if best is not None and value >= best[0]:
            break  # the sample misleads: stream from the best point
        best = (value, weight, bias, correct)
        if max(float(grad_w.abs().max()), float(grad_b.abs().max())) <= tol:
            converged = True
            break
        _, sample_w, sample_b = on_sample()(weight, bias)
        correction = (grad_w - sample_w, grad_b - sample_b)
    value, weight, bias, correct = best
    if not converged:
        stream = on_all(False)
        weight, bias, used = _lbfgs(lambda w, b: stream(w, b)[:3], weight, bias, tol, max_iter)
        n_iter += used
        value, grad_w, grad_b, correct = on_all(True)(weight, bias)
        converged = max(float(grad_w.abs().max()), float(grad_b.abs().max())) <= tol
    return StreamedLogistic(weight, bias, survey.mean, survey.scale, n_iter, passes, converged,
                            correct / n)

"""Representational similarity measures beside CKA: the CCA family, Procrustes shape
distances, linear regression, nearest-neighbour alignment and RSA.

Conventions shared by every function (docs/measures.md gives the formulas and the
references, and where the authors' code differs):

* ``x`` is ``(n, p1)`` and ``y`` is ``(n, p2)``: rows are examples (row i of both is the
  same image), columns are features (units, or a conv map's C·H·W values flattened);
  p1 and p2 may differ. Anything numpy reads (a CPU tensor too), computed in float64.
* *centred* means that each column's mean over the n examples is subtracted; *rows
  normalised* means that each example's feature vector is scaled to unit length.
* A *similarity* is larger for more similar representations; a *distance* is 0 for
  representations that are the same up to the measure's invariances.
* A measure undefined for its input (a constant representation: no variance) is NaN.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from labkit_stitch import cka


def _rankdata(values: np.ndarray) -> np.ndarray:
    """scipy's ``rankdata`` (ties averaged)."""
    # imported here: scipy.stats takes about a second to import, which every labkit
    # process that loads this plugin would pay without computing an RSA
    from scipy.stats import rankdata
    return rankdata(values)


def as_matrix(x: ArrayLike | Representation) -> np.ndarray:
    """``x`` as a float64 numpy matrix ``(n, p)`` (a :class:`Representation`'s
    activations); ValueError for another number of axes."""
    if isinstance(x, Representation):
        return x.x
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"activations must be a matrix (examples, features), got shape "
                         f"{array.shape}")
    return array


def _svd(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors ``(n, r)`` and singular values ``(r,)`` of the centred ``xc``,
    r its numerical rank (numpy's ``matrix_rank`` tolerance)."""
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    if not s.size or s[0] == 0:
        return u[:, :0], s[:0]
    keep = s > s[0] * max(xc.shape) * np.finfo(np.float64).eps
    return u[:, keep], s[keep]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (platonic-rep's ``F.normalize``: a zero row stays 0)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Representation:
    """Activations ``(n, p)`` with what the measures derive from them, each derived once:
    the centred matrix, its thin SVD, the kernel and neighbours of the rows, the RDMs and
    their ranks.

    Every measure takes a :class:`Representation` wherever it takes a matrix. A table of
    many pairs, or a permutation null, prepares each layer once: :meth:`rows` reorders
    the examples of everything already derived (a permutation of the rows permutes the
    left singular vectors and both axes of a kernel or RDM) instead of deriving it again.
    """

    def __init__(self, x: ArrayLike) -> None:
        self.x = as_matrix(x)
        self._derived: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return len(self.x)

    def _get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    @property
    def centred(self) -> np.ndarray:
        """``(n, p)``, each column's mean over the examples subtracted."""
        return self._get(("centred",), lambda: self.x - self.x.mean(axis=0))

    @property
    def svd(self) -> tuple[np.ndarray, np.ndarray]:
        """``U`` ``(n, r)`` and ``S`` ``(r,)`` of the centred matrix, r its numerical rank."""
        return self._get(("svd",), lambda: _svd(self.centred))

    def kernel(self, normalize: bool) -> np.ndarray:
        """Inner products ``(n, n)`` of the rows, scaled to unit length first when
        ``normalize``."""
        def kernel() -> np.ndarray:
            rows = _unit_rows(self.x) if normalize else self.x
            return rows @ rows.T
        return self._get(("kernel", normalize), kernel)

    def neighbours(self, k: int, normalize: bool) -> np.ndarray:
        """Boolean ``(n, n)``: row i marks the k other examples of largest kernel."""
        return self._get(("neighbours", k, normalize),
                         lambda: _neighbours(self.kernel(normalize), k))

    def rdm(self, kind: str) -> np.ndarray:
        """The full ``(n, n)`` RDM of ``kind`` (see :func:`rdm`)."""
        return self._get(("rdm", kind), lambda: _full_rdm(self.x, kind))

    def rdm_ranks(self, kind: str) -> np.ndarray:
        """``(n, n)``: the ranks of the RDM's n(n−1)/2 pairs (ties averaged), symmetric."""
        def ranks() -> np.ndarray:
            upper = np.triu_indices(len(self), k=1)
            full = np.zeros((len(self), len(self)))
            full[upper] = _rankdata(self.rdm(kind)[upper])
            return full + full.T
        return self._get(("rdm_ranks", kind), ranks)

    def rows(self, order: np.ndarray) -> Representation:
        """The same representation with its examples in ``order`` (an index array)."""
        permuted = Representation(self.x[order])
        both = np.ix_(order, order)
        for key, value in self._derived.items():
            if key[0] == "centred":
                permuted._derived[key] = value[order]
            elif key[0] == "svd":
                permuted._derived[key] = (value[0][order], value[1])
            else:  # kernels, neighbour masks, RDMs: both axes are examples
                permuted._derived[key] = value[both]
        return permuted


def representation(x: ArrayLike | Representation) -> Representation:
    """``x`` as a :class:`Representation` (itself when it is one)."""
    return x if isinstance(x, Representation) else Representation(x)


Activations = ArrayLike | Representation


def _pair(x: Activations, y: Activations) -> tuple[Representation, Representation]:
    x, y = representation(x), representation(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same examples (rows): {len(x)} != {len(y)}")
    return x, y


def _cca(x: Representation, y: Representation) -> tuple[np.ndarray, np.ndarray]:
    """X's canonical variates ``(n, c)`` (unit length) and the canonical correlations
    ``(c,)``, descending, c = min(rank x, rank y)."""
    qx, qy = x.svd[0], y.svd[0]
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return qx @ u, np.clip(rho, 0.0, 1.0)


def canonical_correlations(x: Activations, y: Activations) -> np.ndarray:
    """Canonical correlations of ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, descending.

    Both are centred; the correlations are the cosines of the principal angles between
    the spans of their columns (Björck and Golub 1973), one per dimension of the smaller
    span: ``min(rank x, rank y)`` values in [0, 1]. With ``p ≥ n − 1`` a centred
    representation spans every centred direction and every correlation is 1: use
    :func:`svcca` for wide layers.
    """
    return _cca(*_pair(x, y))[1]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def mean_cca(x: Activations, y: Activations) -> float:
    """Mean canonical correlation ρ̄ (similarity in [0, 1], symmetric) of ``x`` ``(n, p1)``
    and ``y`` ``(n, p2)``, rows the same examples, both centred.

    The mean of the ``c = min(rank x, rank y)`` canonical correlations; for full-rank
    ``x`` with ``p1 ≤ p2`` it is Kornblith et al.'s (2019) ``ρ̄_CCA = ‖Q_yᵀ Q_x‖_* / p1``.
    Invariant to any invertible linear map of either side.
    """
    return _mean(canonical_correlations(x, y))


def r2_cca(x: Activations, y: Activations) -> float:
    """Mean squared canonical correlation R²_CCA (similarity in [0, 1], symmetric) of
    ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, rows the same examples, both centred.

    ``Σ ρ_i² / c`` over the ``c = min(rank x, rank y)`` canonical correlations: Kornblith
    et al.'s (2019) ``R²_CCA = ‖Q_yᵀ Q_x‖_F² / p1`` for full-rank ``x`` with ``p1 ≤ p2``.
    """
    return _mean(canonical_correlations(x, y) ** 2)


def svd_reduce(x: Activations, keep: int | float = 0.99) -> np.ndarray:
    """The centred ``x`` ``(n, p)`` on its top singular directions: ``U_k S_k`` ``(n, k)``.

    Args:
        keep: an int k ≥ 1 keeps the k largest directions (at most the rank); a float in
            (0, 1] keeps the fewest that explain at least that share of the variance
            (the sum of squared singular values), as Raghu et al. (2017) keep 99 %.
    """
    u, s = representation(x).svd
    if isinstance(keep, (int, np.integer)) and not isinstance(keep, bool):
        if keep < 1:
            raise ValueError(f"keep: a count of directions must be at least 1, got {keep}")
        k = min(int(keep), len(s))
    else:
        if not 0 < keep <= 1:
            raise ValueError(f"keep: a share of variance must lie in (0, 1], got {keep}")
        explained = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(explained, keep * (1 - 1e-12))) + 1  # rounding at keep = 1
    return u[:, :k] * s[:k]


def svcca(x: Activations, y: Activations, keep: int | float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017; similarity in [0, 1], symmetric) of ``x`` ``(n, p1)`` and
    ``y`` ``(n, p2)``, rows the same examples.

    Each side is centred and reduced to its top singular directions (:func:`svd_reduce`
    with ``keep``: a count, or a share of variance, 0.99 as in the paper); the result is
    the mean canonical correlation of the two reductions (:func:`mean_cca`).
    """
    x, y = _pair(x, y)
    return mean_cca(_reduced(x, keep), _reduced(y, keep))


def _reduced(x: Representation, keep: int | float) -> Representation:
    """:func:`svd_reduce` as a :class:`Representation` whose SVD is known (``U_k``,
    ``S_k``: the reduction is centred already), so nothing is decomposed again."""
    reduced = Representation(svd_reduce(x, keep))
    u, s = x.svd
    k = reduced.x.shape[1]
    reduced._derived[("centred",)] = reduced.x
    reduced._derived[("svd",)] = (u[:, :k], s[:k])
    return reduced


def pwcca(x: Activations, y: Activations) -> float:
    """Projection-weighted CCA (Morcos et al. 2018; similarity in [0, 1], not symmetric) of
    ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, rows the same examples, both centred.

    The paper's definition, weighted on ``x``'s side: with ``h_i`` the canonical variates
    of ``x`` (unit-length n-vectors, i ≤ c = min(rank x, rank y)), ``ρ_i`` their canonical
    correlations and ``x_j`` the centred columns (units) of ``x``,
    ``α̃_i = Σ_j |⟨h_i, x_j⟩|`` and ``PWCCA = Σ_i α̃_i ρ_i / Σ_i α̃_i``. The authors'
    released code (google/svcca ``compute_pwcca``) differs; docs/measures.md says how.
    """
    x, y = _pair(x, y)
    variates, rho = _cca(x, y)
    weights = np.abs(variates.T @ x.centred).sum(axis=1)
    return float(weights @ rho / weights.sum()) if weights.size else float("nan")


def _procrustes_cosine(x: Activations, y: Activations) -> float:
    """``max_Q ⟨X̂Q, Ŷ⟩`` over orthogonal Q (zero-padding the narrower side), X̂ and Ŷ
    centred with unit Frobenius norm: the nuclear norm of ``X̂ᵀŶ``, in [0, 1]."""
    x, y = _pair(x, y)
    (ux, sx), (uy, sy) = x.svd, y.svd
    if not sx.size or not sy.size:
        return float("nan")
    # X̂ᵀŶ has the singular values of (Ux Sx)ᵀ(Uy Sy), a matrix of at most n × n
    cross = (ux * sx).T @ (uy * sy) / (np.linalg.norm(sx) * np.linalg.norm(sy))
    return float(np.clip(np.linalg.svd(cross, compute_uv=False).sum(), 0.0, 1.0))


def procrustes_angular(x: Activations, y: Activations) -> float:
    """Angular Procrustes distance (Williams et al. 2021, netrep's ``LinearMetric(alpha=1,
    score_method="angular")``) of ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, rows the same
    examples: a metric, in radians in [0, π/2].

    Both centred and scaled to unit Frobenius norm; the narrower one zero-padded;
    ``arccos max_Q ⟨X̂Q, Ŷ⟩_F`` over orthogonal Q, i.e. ``arccos ‖X̂ᵀŶ‖_*``.
    """
    return float(np.arccos(_procrustes_cosine(x, y)))


def procrustes_distance(x: Activations, y: Activations) -> float:
    """Normalised Procrustes distance of ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, rows the
    same examples: a metric in [0, √2].

    Both centred and scaled to unit Frobenius norm, the narrower one zero-padded:
    ``min_Q ‖X̂Q − Ŷ‖_F = sqrt(2 − 2‖X̂ᵀŶ‖_*)`` over orthogonal Q. Its square is the
    Procrustes distance of Ding et al. (2021), which is not a metric.
    """
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * _procrustes_cosine(x, y))))


def linear_r2(x: Activations, y: Activations) -> float:
    """R² of the least-squares linear prediction of ``y`` ``(n, p2)`` from ``x``
    ``(n, p1)``, with an intercept, rows the same examples (similarity ≤ 1, not
    symmetric; fitted and scored on the same rows).

    ``R² = 1 − ‖Y − Ŷ‖_F² / ‖Y − Ȳ‖_F²``: the outputs pooled, weighted by their variance
    (scikit-learn's ``r2_score(..., multioutput="variance_weighted")``). With ``p1 ≥
    n − 1`` the fit is exact and R² = 1. Invariant to any invertible linear map of ``x``.
    """
    x, y = _pair(x, y)
    basis, target = x.svd[0], y.centred
    total = np.sum(target**2)
    if total == 0:
        return float("nan")
    residual = target - basis @ (basis.T @ target)
    return float(1.0 - np.sum(residual**2) / total)


def _neighbours(kernel: np.ndarray, k: int) -> np.ndarray:
    """Boolean ``(n, n)``: row i marks the k other examples with the largest kernel."""
    n = len(kernel)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, n - 1] = [1, {n - 1}], got {k}")
    scores = kernel.copy()
    np.fill_diagonal(scores, -np.inf)  # an example is not its own neighbour
    nearest = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, nearest, True, axis=1)
    return mask


def mutual_knn(x: Activations, y: Activations, k: int = 10, normalize: bool = True) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, platonic-rep's
    ``mutual_knn``) of ``x`` ``(n, p1)`` and ``y`` ``(n, p2)``, rows the same examples: a
    symmetric similarity in [0, 1].

    Neighbours by the inner product of the rows (no centring), the rows normalised first
    when ``normalize`` (cosine similarity, as platonic-rep's ``compute_score`` prepares
    features); an example is not its own neighbour. The mean over examples of
    ``|N_x(i) ∩ N_y(i)| / k``.
    """
    x, y = _pair(x, y)
    shared = x.neighbours(k, normalize) & y.neighbours(k, normalize)
    return float(shared.sum(axis=1).mean() / k)


def cknna(x: Activations, y: Activations, k: int = 10, normalize: bool = True) -> float:
    """Centered kernel nearest-neighbour alignment (Huh et al. 2024) of ``x`` ``(n, p1)``
    and ``y`` ``(n, p2)``, rows the same examples, n ≥ 4: a similarity, 1 for identical
    inputs, not exactly symmetric (below).

    As platonic-rep's ``cknna`` (``unbiased=True``) computes it: linear kernels
    ``K = XXᵀ``, ``L = YYᵀ`` of the rows (no centring; rows normalised first when
    ``normalize``), the mask ``M_ij = [j ∈ N_K(i) and j ∈ N_L(i)]`` of shared k nearest
    neighbours (by the kernel, self excluded), ``A(K, L) = HSIC₁(M∘K, M∘L)`` with Song et
    al.'s unbiased HSIC₁ applied to these non-symmetric matrices, and
    ``CKNNA = A(K, L) / sqrt(A(K, K) · A(L, L))``. The term ``1ᵀK̃L̃1`` of HSIC₁ is not
    symmetric in K and L for non-symmetric masks, so swapping x and y can change the
    value slightly. The authors' code adds 1e-6 to the denominator; this does not.
    """
    if k < 2:
        raise ValueError(f"CKNNA needs k ≥ 2, got {k}")
    x, y = _pair(x, y)
    kernels = [x.kernel(normalize), y.kernel(normalize)]
    masks = [x.neighbours(k, normalize), y.neighbours(k, normalize)]

    def align(a: int, b: int) -> float:
        mask = masks[a] & masks[b]
        grams = [torch.from_numpy(np.where(mask, kernels[i], 0.0))[None] for i in (a, b)]
        return float(cka.unbiased_hsic_matrix(*grams)[0, 0])

    return align(0, 1) / float(np.sqrt(align(0, 0) * align(1, 1)))


RDMS = ("euclidean", "correlation")
COMPARISONS = ("spearman", "pearson", "cosine")


def _full_rdm(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "euclidean":
        norms = np.sum(x**2, axis=1)
        full = np.maximum(norms[:, None] + norms[None, :] - 2 * x @ x.T, 0.0) / x.shape[1]
    elif kind == "correlation":
        rows = x - x.mean(axis=1, keepdims=True)
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        full = 1.0 - rows @ rows.T
    else:
        raise ValueError(f"rdm: kind must be one of {', '.join(RDMS)}, got {kind!r}")
    np.fill_diagonal(full, 0.0)
    return full


def rdm(x: Activations, kind: str = "euclidean") -> np.ndarray:
    """Representational dissimilarity matrix of ``x`` ``(n, p)`` (rows: examples), as the
    condensed vector of its upper triangle ``(n(n−1)/2,)`` in scipy's ``pdist`` order.

    Args:
        kind: ``"euclidean"``: the squared Euclidean distance divided by p (rsatoolbox's
            ``euclidean``, Walther et al. 2016); ``"correlation"``: 1 − Pearson
            correlation of the two examples' feature vectors (rsatoolbox's, scipy's
            ``correlation``).
    """
    x = representation(x)
    return x.rdm(kind)[np.triu_indices(len(x), k=1)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare_rdms(a: np.ndarray, b: np.ndarray, method: str = "spearman") -> float:
    """Similarity of two condensed RDMs of the same examples (rsatoolbox's
    ``compare_spearman``, ``compare_correlation``, ``compare_cosine``).

    Args:
        method: ``"spearman"`` (Pearson correlation of the ranks, ties averaged),
            ``"pearson"`` (of the values), ``"cosine"`` (of the values, not centred).
    """
    if method == "spearman":
        a, b = _rankdata(a), _rankdata(b)
    elif method not in COMPARISONS:
        raise ValueError(f"method must be one of {', '.join(COMPARISONS)}, got {method!r}")
    if method == "cosine":
        return _cosine(a, b)
    return _cosine(a - a.mean(), b - b.mean())


def rsa(x: Activations, y: Activations, rdm_kind: str = "euclidean",
        method: str = "spearman") -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008) of ``x`` ``(n, p1)``
    and ``y`` ``(n, p2)``, rows the same examples (the conditions): a symmetric similarity
    in [−1, 1].

    Each side's RDM (:func:`rdm` of ``rdm_kind``, over the n(n−1)/2 pairs of examples),
    compared by ``method`` (:func:`compare_rdms`).
    """
    x, y = _pair(x, y)
    upper = np.triu_indices(len(x), k=1)
    if method == "spearman":  # the ranks of a reordered RDM are the reordered ranks
        a, b = x.rdm_ranks(rdm_kind)[upper], y.rdm_ranks(rdm_kind)[upper]
        return compare_rdms(a, b, "pearson")
    return compare_rdms(x.rdm(rdm_kind)[upper], y.rdm(rdm_kind)[upper], method)

"""Centered kernel alignment (CKA) between layer representations.

Every function takes activations as matrices ``(n, p)`` (torch tensors or anything numpy
reads), computed in float64: n samples (the same samples, in the same order, for both
representations; rows are examples), each flattened to p features. All of them are
similarities: 1 for identical representations.

* Linear CKA (Kornblith et al. 2019): with centred Gram matrices ``Kc = H X Xᵀ H`` and
  ``Lc = H Y Yᵀ H`` (``H = I - 11ᵀ/n``),
  ``CKA = <Kc, Lc>_F / (||Kc||_F ||Lc||_F)``, i.e. the biased HSIC estimator normalised.
* RBF CKA: the same with ``K_ab = exp(-||x_a - x_b||² / (2σ²))``. Bandwidth rule (the
  median heuristic of Kornblith et al.'s reference code): ``σ² = threshold² · m`` with
  ``m`` the median of the squared distances over all n² ordered pairs, the zero
  diagonal included; ``threshold`` defaults to 1.
* Minibatch CKA (Nguyen, Raghu and Kornblith 2021): linear kernel, the unbiased HSIC
  estimator of Song et al. (2012) on each minibatch,
  ``HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))``
  with ``K̃``, ``L̃`` the Gram matrices with zeroed diagonals, averaged over minibatches:
  ``CKA = mean HSIC₁(K, L) / sqrt(mean HSIC₁(K, K) · mean HSIC₁(L, L))``.
* Debiased CKA (Kornblith et al. 2019, the ``debiased=True`` option of their reference
  code; Nguyen et al. 2021): the linear or RBF CKA above with the biased HSIC replaced
  by the unbiased HSIC₁ on all n samples at once,
  ``CKA₁ = HSIC₁(K, L) / sqrt(HSIC₁(K, K) · HSIC₁(L, L))``. The biased estimator
  makes CKA of unrelated representations grow with their width when n is small
  (features ≫ samples); HSIC₁'s expectation is the population HSIC, so debiased CKA of
  independent representations stays near 0. It may be slightly negative.

All of them are invariant to orthogonal transforms, isotropic scaling, translation and
permutation of the features of either representation (declared in
:mod:`labkit_stitch.catalogue`, tested with every other measure). Functions named
``*_matrix`` compare every layer of one list with every layer of another at once, from
stacked Gram matrices ``(layers, n, n)``; ``*_table`` do the same from activations.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` ``(n, n)`` of activations ``(n, p)``."""
    return x @ x.T


def gram_rbf(x: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """RBF Gram matrix ``(n, n)`` of activations ``(n, p)``, median-heuristic bandwidth.

    ``σ² = threshold² · median`` of the squared distances over all n² ordered pairs.
    """
    dots = x @ x.T
    norms = dots.diagonal()
    squared = (norms[:, None] + norms[None, :] - 2 * dots).clamp_min(0)
    # numpy's median: the mean of the two middle values for an even count, as published
    median = float(np.median(squared.cpu().numpy()))
    return torch.exp(-squared / (2 * threshold**2 * median))


def center(grams: torch.Tensor) -> torch.Tensor:
    """``H K H`` for Gram matrices ``(..., n, n)``: rows and columns with zero mean."""
    grams = grams - grams.mean(dim=-1, keepdim=True)
    return grams - grams.mean(dim=-2, keepdim=True)


def _normalise(cross: torch.Tensor, self_a: torch.Tensor, self_b: torch.Tensor) -> torch.Tensor:
    return cross / torch.sqrt(self_a[:, None] * self_b[None, :])


def cka_matrix(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """CKA (biased HSIC) between every pair of Gram matrices.

    Args:
        grams_a: ``(A, n, n)`` Gram matrices of A's layers on n samples.
        grams_b: ``(B, n, n)`` Gram matrices of B's layers on the same samples.

    Returns:
        ``(A, B)`` CKA values in [0, 1].
    """
    a, b = center(grams_a), center(grams_b)
    return _normalise(torch.einsum("ixy,jxy->ij", a, b), (a * a).sum((1, 2)), (b * b).sum((1, 2)))


def unbiased_hsic_matrix(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC₁ (Song et al. 2012) between every pair of Gram matrices.

    Written for any square matrices, symmetric or not (CKNNA's masked kernels):
    ``tr(K̃L̃)`` and ``1ᵀK̃L̃1`` as they stand, not as their symmetric shortcuts.

    Args:
        grams_a: ``(A, n, n)``; grams_b: ``(B, n, n)``; n ≥ 4 samples.

    Returns:
        ``(A, B)`` estimates (may be slightly negative: the estimator is unbiased).
    """
    n = grams_a.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    off = 1 - torch.eye(n, dtype=grams_a.dtype, device=grams_a.device)
    k, l = grams_a * off, grams_b * off  # noqa: E741 (the paper's name)
    trace = torch.einsum("ixy,jyx->ij", k, l)  # tr(K̃ L̃)
    sum_k, sum_l = k.sum((1, 2)), l.sum((1, 2))
    ones_k_l_ones = k.sum(1) @ l.sum(2).T  # 1ᵀ K̃ L̃ 1 = (1ᵀK̃)·(L̃1)
    return (trace + sum_k[:, None] * sum_l[None, :] / ((n - 1) * (n - 2))
            - 2 * ones_k_l_ones / (n - 2)) / (n * (n - 3))


def debiased_cka_matrix(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Debiased CKA (unbiased HSIC₁ on all n samples) between every pair of Gram matrices.

    Args:
        grams_a: ``(A, n, n)``; grams_b: ``(B, n, n)`` on the same n ≥ 4 samples.

    Returns:
        ``(A, B)`` values, 1 for identical representations, near 0 for independent ones
        (possibly slightly negative).
    """
    self_a = unbiased_hsic_matrix(grams_a, grams_a).diagonal()
    self_b = unbiased_hsic_matrix(grams_b, grams_b).diagonal()
    return _normalise(unbiased_hsic_matrix(grams_a, grams_b), self_a, self_b)


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021) between A's and B's layers, fed batch by batch.

    Args:
        layers_a: number of A's layers; layers_b: number of B's layers.
    """

    def __init__(self, layers_a: int, layers_b: int):
        self.cross = torch.zeros(layers_a, layers_b, dtype=torch.float64)
        self.self_a = torch.zeros(layers_a, dtype=torch.float64)
        self.self_b = torch.zeros(layers_b, dtype=torch.float64)
        self.batches = 0

    def update(self, grams_a: torch.Tensor, grams_b: torch.Tensor) -> None:
        """Add one minibatch's linear Gram matrices ``(A, b, b)`` and ``(B, b, b)``, b ≥ 4."""
        self.cross += unbiased_hsic_matrix(grams_a, grams_b).cpu()
        self.self_a += unbiased_hsic_matrix(grams_a, grams_a).diagonal().cpu()
        self.self_b += unbiased_hsic_matrix(grams_b, grams_b).diagonal().cpu()
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """``(A, B)`` minibatch CKA over the batches added (the 1/k means cancel)."""
        if not self.batches:
            raise ValueError("minibatch CKA needs at least one batch of 4 or more samples")
        return _normalise(self.cross, self.self_a, self.self_b)


def as_activations(x: ArrayLike) -> torch.Tensor:
    """Activations ``(n, p)`` (a tensor or anything numpy reads) as a float64 tensor."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"activations must be a matrix (examples, features), got shape "
                         f"{tuple(x.shape)}")
    return x


def grams(xs: Sequence[ArrayLike], kernel: str = "linear", threshold: float = 1.0
          ) -> torch.Tensor:
    """Stacked Gram matrices ``(len(xs), n, n)`` of activations ``(n, p_i)``.

    Args:
        kernel: ``"linear"`` (``X Xᵀ``) or ``"rbf"`` (:func:`gram_rbf` with ``threshold``).
    """
    if kernel == "linear":
        return torch.stack([gram_linear(as_activations(x)) for x in xs])
    if kernel == "rbf":
        return torch.stack([gram_rbf(as_activations(x), threshold) for x in xs])
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")


def cka_table(xs: Sequence[ArrayLike], ys: Sequence[ArrayLike], kernel: str = "linear",
              debiased: bool = False, threshold: float = 1.0) -> np.ndarray:
    """CKA between every representation of ``xs`` and every one of ``ys``.

    Args:
        xs: activations ``(n, p_i)``; ys: activations ``(n, q_j)`` of the same n examples.
        kernel: ``"linear"`` or ``"rbf"`` (median-heuristic bandwidth times ``threshold``).
        debiased: the unbiased HSIC₁ (n ≥ 4) instead of the biased HSIC.

    Returns:
        ``(len(xs), len(ys))`` float64 array.
    """
    table = debiased_cka_matrix if debiased else cka_matrix
    return table(grams(xs, kernel, threshold), grams(ys, kernel, threshold)).numpy()


def minibatch_cka_table(xs: Sequence[ArrayLike], ys: Sequence[ArrayLike],
                        batch_size: int = 256) -> np.ndarray:
    """Minibatch CKA between every representation of ``xs`` and every one of ``ys``, over
    consecutive batches of ``batch_size`` rows; a last batch of fewer than 4 rows is left
    out. Returns a ``(len(xs), len(ys))`` float64 array."""
    xs, ys = [as_activations(x) for x in xs], [as_activations(y) for y in ys]
    accumulator = MinibatchCKA(len(xs), len(ys))
    for start in range(0, len(xs[0]), batch_size):
        if len(xs[0]) - start >= 4:
            accumulator.update(grams([x[start:start + batch_size] for x in xs]),
                               grams([y[start:start + batch_size] for y in ys]))
    return accumulator.compute().numpy()


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA (similarity in [0, 1]) of ``x`` ``(n, p)`` and ``y`` ``(n, q)``, rows the
    same examples; features centred over the examples (through ``H``), no other scaling."""
    return float(cka_table([x], [y])[0, 0])


def rbf_cka(x: ArrayLike, y: ArrayLike, threshold: float = 1.0) -> float:
    """RBF CKA (similarity in [0, 1]) of ``x`` ``(n, p)`` and ``y`` ``(n, q)``, rows the
    same examples; Gram matrices of Euclidean distances (bandwidth rule in the module
    doc), centred through ``H``; no other scaling."""
    return float(cka_table([x], [y], "rbf", threshold=threshold)[0, 0])


def debiased_linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Debiased linear CKA of ``x`` ``(n, p)`` and ``y`` ``(n, q)``, rows the same
    examples, n ≥ 4: the unbiased HSIC₁ of Song et al. (2012) with linear kernels (it
    centres implicitly), normalised (see the module doc); a similarity, 1 for identical
    inputs, possibly slightly negative."""
    return float(cka_table([x], [y], debiased=True)[0, 0])


def debiased_rbf_cka(x: ArrayLike, y: ArrayLike, threshold: float = 1.0) -> float:
    """Debiased RBF CKA of ``x`` ``(n, p)`` and ``y`` ``(n, q)``, rows the same examples,
    n ≥ 4: the unbiased HSIC₁ with RBF kernels (bandwidth rule in the module doc),
    normalised; a similarity, 1 for identical inputs, possibly slightly negative."""
    return float(cka_table([x], [y], "rbf", debiased=True, threshold=threshold)[0, 0])


def minibatch_cka(x: ArrayLike, y: ArrayLike, batch_size: int = 256) -> float:
    """Minibatch CKA of ``x`` ``(n, p)`` and ``y`` ``(n, q)``, rows the same examples, over
    consecutive batches of ``batch_size`` rows (in the given order); a last batch of
    fewer than 4 rows is left out. Linear kernels, the unbiased HSIC₁ per batch (it
    centres implicitly). A similarity, 1 for identical inputs."""
    return float(minibatch_cka_table([x], [y], batch_size)[0, 0])

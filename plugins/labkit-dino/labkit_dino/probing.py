"""Probing encoder embeddings: k-nearest neighbours and a linear probe (scikit-learn).

Both probes are fitted on the embeddings of the un-augmented training split and scored
(accuracy in [0, 1]) on every eval split, with the network in eval mode. With
``standardize`` every embedding dimension is scaled to zero mean and unit variance over
the training split first (scikit-learn's ``StandardScaler``; constant dimensions are
left unscaled). k-NN: Euclidean distance, majority vote of the ``k`` nearest training
samples. Linear probe: multinomial logistic regression (L2 penalty ``C = 1``, L-BFGS).
The linear probe is returned folded into one affine map of the raw embeddings, so a
:class:`~labkit_dino.networks.ProbeClassifier` reproduces its decisions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit_dino.networks import embed

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

# logit bias of a class absent from the probe's training labels: never predicted
ABSENT_CLASS_BIAS = -1e4


@torch.no_grad()
def embeddings(network: nn.Module, dataset: Dataset, batch_size: int,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)`` (float64) and labels ``(N,)`` of ``dataset``, in order.

    The caller puts ``network`` in eval mode.
    """
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        features.append(embed(network, images.to(device)).double().cpu())
        labels.append(torch.as_tensor(targets))
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


@dataclass
class ProbeResult:
    """Accuracies per eval split and the linear probe as ``logits = weight @ x + bias``.

    Attributes:
        knn: split -> k-NN accuracy.
        linear: split -> linear-probe accuracy.
        weight: ``(C, D)`` float32.
        bias: ``(C,)`` float32.
    """

    knn: dict[str, float]
    linear: dict[str, float]
    weight: torch.Tensor
    bias: torch.Tensor


Split = tuple[np.ndarray, np.ndarray]  # embeddings (N, D), labels (N,)


def fit_probes(train: Split, evals: dict[str, Split], num_classes: int, k: int = 20,
               standardize: bool = True, max_iter: int = 1000) -> ProbeResult:
    """Fit k-NN and the linear probe on ``train`` = ``(X (N, D), y (N,))``, score ``evals``."""
    # imported here: scikit-learn takes about 2 s to import, which every labkit process
    # that loads this plugin (each training process and rank) would pay without probing
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = train
    scaler = StandardScaler(with_mean=standardize, with_std=standardize).fit(x_train)
    z_train = scaler.transform(x_train)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y_train))).fit(z_train, y_train)
    linear = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        # an unconverged L-BFGS fit is still a linear classifier; its accuracy is reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        linear.fit(z_train, y_train)
    knn_scores, linear_scores = {}, {}
    for split, (x, y) in evals.items():
        z = scaler.transform(x)
        knn_scores[split] = float(knn.score(z, y))
        linear_scores[split] = float(linear.score(z, y))
    weight, bias = _fold(linear, scaler, num_classes, x_train.shape[1])
    return ProbeResult(knn_scores, linear_scores, weight, bias)


def _fold(linear: LogisticRegression, scaler: StandardScaler, num_classes: int,
          dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W x + b`` equal to ``linear`` applied to ``scaler(x)``, over all ``num_classes``."""
    coef, intercept = linear.coef_, linear.intercept_
    if len(linear.classes_) == 2:
        # binary logistic regression scores class 1 against a zero logit for class 0
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(dim)
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(dim)
    weight = np.zeros((num_classes, dim))
    bias = np.full(num_classes, ABSENT_CLASS_BIAS)
    weight[linear.classes_] = coef / scale
    bias[linear.classes_] = intercept - (coef / scale) @ mean
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()

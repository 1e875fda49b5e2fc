"""Distillation losses on tensors, each one published formula (stated in its docstring).

Shapes: logits ``(N, C)``; probabilities ``(N, C)`` with rows summing to 1; images
``(N, channels, H, W)``. Every loss is the mean over the batch of a per-sample value
(PyTorch's ``batchmean``), so it does not grow with the batch size. Directions follow
Hinton et al. (2015): the target distribution (teacher or human) comes first,
KL(target ‖ student), scaled by T² so that gradients keep their size across temperatures.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["kl", "ce"]


def soft_term(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float,
              divergence: Divergence = "kl") -> torch.Tensor:
    """T² · D(p ‖ q_T) with q_T = softmax(student_logits / T), averaged over the batch.

    ``divergence="kl"``: D = Σ_c p_c (log p_c − log q_c) (relative entropy, 0 when q = p);
    ``"ce"``: D = −Σ_c p_c log q_c (soft cross-entropy = KL + entropy of p; same gradient).

    Args:
        student_logits: ``(N, C)`` raw student outputs.
        target_probs: ``(N, C)`` target distribution, already at temperature T.
        temperature: T > 0.
        divergence: ``"kl"`` or ``"ce"``.
    """
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    per_sample = -(target_probs * log_q).sum(dim=1)
    if divergence == "kl":
        per_sample = per_sample + torch.xlogy(target_probs, target_probs).sum(dim=1)
    return temperature ** 2 * per_sample.mean()


def tempered(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T): a distribution flattened (T > 1) or sharpened (T < 1).

    How HKD brings human soft labels to the temperature T_h; zero probabilities stay 0
    (log 0 = −inf, exp(−inf) = 0), equal to p^(1/T) / Σ p^(1/T).
    """
    return F.softmax(torch.log(probs) / temperature, dim=1)


def input_gradients(outputs: torch.Tensor, inputs: torch.Tensor, classes: torch.Tensor,
                    create_graph: bool) -> torch.Tensor:
    """∂ outputs[n, classes[n, j]] / ∂ inputs[n], for every sample n and column j.

    Args:
        outputs: ``(N, C)`` logits computed from ``inputs`` (which requires grad).
        inputs: ``(N, ...)`` network inputs.
        classes: ``(N, K)`` class index per sample and column.
        create_graph: keep the graph (the student's gradients are trained through).

    Returns:
        ``(N, K, D)`` with D the number of input values per sample. Each column is one
        backward pass of the summed selected logits: exact per sample for networks that
        treat samples independently (eval mode, no BatchNorm statistics of the batch).
    """
    columns = [torch.autograd.grad(outputs.gather(1, classes[:, j:j + 1]).sum(), inputs,
                                   create_graph=create_graph, retain_graph=True)[0]
               for j in range(classes.shape[1])]
    return torch.stack(columns, dim=1).flatten(2)


def jacobian_loss(student_grads: torch.Tensor, teacher_grads: torch.Tensor) -> torch.Tensor:
    """Jacobian matching (Srinivas & Fleuret 2018): normalised input-gradients.

    L = (1/N) Σ_n Σ_k ‖ J_t[n,k] / ‖J_t[n,k]‖₂ − J_s[n,k] / ‖J_s[n,k]‖₂ ‖₂²

    Args:
        student_grads, teacher_grads: ``(N, K, D)`` from :func:`input_gradients`, the
            same K classes for both (all classes, or the teacher's top-k).
    """
    diff = F.normalize(teacher_grads, dim=2) - F.normalize(student_grads, dim=2)
    return diff.pow(2).sum(dim=(1, 2)).mean()


def contrastive_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor,
                     tau: float) -> torch.Tensor:
    """Contrastive representation distillation with in-batch negatives (InfoNCE).

    L = −(1/N) Σ_n log( exp(ŝ_n·t̂_n / τ) / Σ_m exp(ŝ_n·t̂_m / τ) ),
    ŝ, t̂ the L2-normalised embeddings: each student embedding must pick its own sample's
    teacher embedding among the batch's (Tian et al. 2020, without the memory bank).

    Args:
        student_emb, teacher_emb: ``(N, E)`` embeddings.
        tau: temperature τ > 0.
    """
    logits = F.normalize(student_emb, dim=1) @ F.normalize(teacher_emb, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


# Feature losses compared in RepDistiller (Tian et al. 2020, github.com/HobbitLong/RepDistiller).
# Features are one layer's outputs, ``(N, ...)``; the teacher's carry no gradient.

def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (2017): Q = vec(Σ_c |A_c|^p / C),
    L2-normalised per sample.

    Args:
        features: ``(N, C, H, W)`` activations A.
        p: the power (the paper's and RepDistiller's default: 2).

    Returns:
        ``(N, H·W)``, each row of unit length.
    """
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (AT, Zagoruyko & Komodakis 2017) of one pair of maps.

    L = mean over (n, position) of (Q_s[n] − Q_t[n])², Q from :func:`attention_map`; the
    larger map is average-pooled to the smaller one's size first (RepDistiller's
    ``distiller_zoo/AT.py``, ``Attention.at_loss``).

    Args:
        student, teacher: ``(N, C_s, H_s, W_s)`` and ``(N, C_t, H_t, W_t)``; channels may
            differ.
    """
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if student.shape[-2:] != size:
        student = F.adaptive_avg_pool2d(student, size)
    if teacher.shape[-2:] != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (SP, Tung & Mori 2019).

    G = F Fᵀ over the batch's flattened features F ``(N, D)``, each row of G L2-normalised;
    L = ‖G_t − G_s‖_F² / N² (RepDistiller's ``distiller_zoo/SP.py``,
    ``Similarity.similarity_loss``).
    """
    n = len(student)
    s, t = student.flatten(1), teacher.flatten(1)
    gram_s, gram_t = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
    return (gram_t - gram_s).pow(2).sum() / (n * n)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (PKT, Passalis & Tefas 2018), cosine kernel.

    With x̂ = x / (‖x‖ + ε) and K_ij = (x̂_i·x̂_j + 1) / 2, the conditional probabilities are
    P_ij = K_ij / Σ_j K_ij; L = (1/N²) Σ_ij P^t_ij · log((P^t_ij + ε) / (P^s_ij + ε))
    (RepDistiller's ``distiller_zoo/PKT.py``, ``PKT.cosine_similarity_loss``: the mean over
    all N² pairs, ε = 1e-7).

    Args:
        student, teacher: ``(N, ...)`` features, flattened per sample.
    """
    def probabilities(features: torch.Tensor) -> torch.Tensor:
        x = features.flatten(1)
        x = x / (x.norm(dim=1, keepdim=True) + eps)
        kernel = (x @ x.T + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)

    p_s, p_t = probabilities(student), probabilities(teacher)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances ``(N, N)``, squared distances clamped at ``eps`` before the root
    (a finite gradient), the diagonal exactly 0."""
    squared = (x[:, None, :] - x[None, :, :]).pow(2).sum(dim=2).clamp_min(eps)
    return squared.sqrt() * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos ∠(x_j, x_i, x_k) = e_ij·e_ik with e_ij the unit vector from x_i to x_j, ``(N, N, N)``
    (0 where j = i or k = i)."""
    unit = F.normalize(x[None, :, :] - x[:, None, :], dim=2)
    return unit @ unit.transpose(1, 2)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Relational KD (RKD, Park et al. 2019): distance and angle terms.

    ψ_D(i, j) = ‖x_i − x_j‖₂ / μ with μ the mean of the batch's non-zero distances;
    ψ_A(i, j, k) = cos of the angle at x_i between x_j and x_k; ℓ the smooth-L1 (Huber,
    δ = 1) averaged over all pairs / triplets:

        L = w_D · ℓ(ψ_D^s, ψ_D^t) + w_A · ℓ(ψ_A^s, ψ_A^t)

    with w_D = 25, w_A = 50 by default (RepDistiller's ``distiller_zoo/RKD.py``,
    ``RKDLoss``). The teacher's side carries no gradient.

    Args:
        student, teacher: ``(N, ...)`` features, flattened per sample.
    """
    s, t = student.flatten(1), teacher.flatten(1).detach()
    d_s, d_t = _distances(s), _distances(t)
    d_s, d_t = d_s / d_s[d_s > 0].mean(), d_t / d_t[d_t > 0].mean()
    distance = F.smooth_l1_loss(d_s, d_t)
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance_weight * distance + angle_weight * angle

"""Gradient clipping and frozen parameters inside the training step.

labkit's engine calls ``loss.backward()`` and ``optimizer.step()`` itself, with nothing
in between that a method controls. DINO needs two things there: clip the gradient norm,
and give the last layer no gradient during the first epochs. :func:`with_gradients`
does both without an engine change: it computes the gradients in the training step,
shapes them, and returns a stand-in loss whose value is the loss's and whose gradient,
when the engine back-propagates it, is exactly the shaped gradient:

    stand-in = loss.detach() + Σ_p ⟨p, g_p⟩ - detach(Σ_p ⟨p, g_p⟩)

(``∂ stand-in / ∂p = g_p`` because ``g_p`` is a constant). A frozen parameter is not in
the sum, so it ends the backward pass with ``grad = None`` and the optimizer skips it,
weight decay and momentum included, as DINO's ``cancel_gradients_last_layer`` does.
"""
from __future__ import annotations

import torch
from torch import nn


def clip_coefficient(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``min(1, max_norm / (‖g‖₂ + 1e-6))`` with ``‖g‖₂`` the norm of all ``grads`` joined.

    The formula of ``torch.nn.utils.clip_grad_norm_`` (and so of Lightning's
    ``gradient_clip_val``, which the random-teacher codebase uses).
    """
    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
    total = torch.linalg.vector_norm(norms)
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def with_gradients(loss: torch.Tensor, params: list[nn.Parameter],
                   frozen: set[nn.Parameter], max_norm: float) -> torch.Tensor:
    """A stand-in for ``loss`` whose gradient is the clipped gradient of ``loss``.

    Args:
        loss: scalar with a graph reaching ``params``.
        params: the parameters the optimizer updates.
        frozen: parameters that get no gradient (left out of the clipping norm too,
            as their gradient is discarded before clipping).
        max_norm: clip the joint L2 norm of the other gradients to this; 0: no clipping.

    Returns:
        A scalar equal to ``loss`` whose backward pass writes the shaped gradients.
    """
    live = [p for p in params if p not in frozen]
    grads = torch.autograd.grad(loss, live, allow_unused=True)
    pairs = [(p, g) for p, g in zip(live, grads) if g is not None]
    if not pairs:
        return loss.detach().requires_grad_()
    if max_norm > 0:
        coefficient = clip_coefficient([g for _, g in pairs], max_norm)
        pairs = [(p, g * coefficient) for p, g in pairs]
    inner = torch.stack([(p * g).sum() for p, g in pairs]).sum()
    return loss.detach() + (inner - inner.detach())

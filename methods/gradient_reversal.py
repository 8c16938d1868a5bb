"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, gradient times -weight backward.

Placed between a representation and an adversary, it lets one backward pass
train the adversary to predict the group while pushing the representation to
hide it. Reusable by any adversarial method (domain-adversarial training, LAFTR).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """`x` unchanged; the gradient flowing back through it is multiplied by `-weight`."""
    if weight < 0:
        raise ValueError(f"gradient reversal weight must be >= 0, got {weight}")
    return _ReverseGradient.apply(x, float(weight))


class GradientReversal(nn.Module):
    """Module form of `reverse_gradient`, with a settable `weight`."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"

"""The DiV-INR training objective (paper Sec. 3.4, Eq. 5).

    z_t = (1 - t) z0 + t eps,   t ~ logit-normal
    L_flow = || DiT(z_t, t, concat(y, M)) - (eps - z0) ||^2
    L_cond = || y - z0 ||^2
    L = (1 - lambda) L_flow + lambda L_cond,  lambda cosine-annealed from high to low

so the INR learns to predict the latents first and the flow-matching loss takes over later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossConfig:
    """Weights and timestep density of the dual loss.

    Args:
        lambda_start: weight of L_cond at the first step (INR dominates early).
        lambda_end: weight of L_cond at the last step; the paper only says "cosine annealed",
            a small floor keeps y tied to the latents it is meant to predict.
        logit_mean, logit_std: parameters of the logit-normal timestep density
            (t = sigmoid(n), n ~ N(mean, std^2), as in SD3 / rectified-flow training).
    """

    lambda_start: float = 1.0
    lambda_end: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0


def cosine_lambda(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1).

    >>> cosine_lambda(0.0, 1.0, 0.0), cosine_lambda(1.0, 1.0, 0.0)
    (1.0, 0.0)
    """
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_logit_normal(
    n: int, mean: float, std: float, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Timesteps t in (0, 1) from a logit-normal density (favours mid-range noise levels)."""
    normal = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(normal)


def noisy_latents(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified-flow interpolation z_t = (1 - t) z0 + t eps, with t of shape (B,)."""
    t = t.view(-1, *([1] * (z0.dim() - 1))).to(z0.dtype)
    return (1.0 - t) * z0 + t * eps


def dual_loss(
    velocity: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (total, L_flow, L_cond); mean-squared errors, computed in float32."""
    flow = torch.mean((velocity.float() - (eps - z0).float()) ** 2)
    cond = torch.mean((y.float() - z0.float()) ** 2)
    return (1.0 - lam) * flow + lam * cond, flow, cond

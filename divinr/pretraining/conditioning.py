"""Conditioning drawn from a mixture, to pretrain a DiT the way Fun-InP models are trained.

A DiV-INR decoder gives the DiT an INR's imperfect latents ``y`` and a confidence mask ``M``
in [0, 1]. A model pretrained only on clean or empty conditioning has never seen that case, so
every training sample draws one of four kinds:

    first     y = z0 on the first latent frame, 0 elsewhere, M = 1 there     (image-to-video)
    blocks    y = z0 inside random spatio-temporal boxes, 0 outside, M = 1 there (inpainting)
    degraded  y = z0 after noise / spatial blur / low-pass / temporal blur   (an imperfect INR)
              M = 1 everywhere, or (with probability ``confidence``) the confidence
              M = 1 / (1 + mse(y, z0)): the weight a Wiener filter gives y for unit-variance
              latents, so that a mask below 1 tells the DiT how far to trust y
    none      y = 0, M = 0                                                    (unconditional)

Why confidence masks and a quarter of exact ``y``: a 3,000-step DiT trained with binary masks
only (``confidence=0, clean=0.1``, weights 0.15 / 0.15 / 0.55 / 0.15) copied exact latents less
faithfully (18.1 instead of 20.0 dB on the demo clip's first GoP), and over three codec
training seeds the demo coded on it scored 14.20 dB on average (13.75-14.69) against
14.61 dB (14.46-14.82) for the shipped 6,000-step DiT trained with the defaults below.
With ``confidence=0`` the mixture draws exactly the random stream it drew before the option
existed, so the older recipe stays reproducible.

All tensors are normalised latents shaped (B, C, T', h, w); the mask has ``MASK_CHANNELS``
identical channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divinr.models.backbone import MASK_CHANNELS

KINDS = ("first", "blocks", "degraded", "none")


@dataclass(frozen=True)
class ConditioningMixture:
    """Probabilities of the four kinds and the strength of the degradations.

    Attributes:
        first, blocks, degraded, none: relative weights of the kinds (normalised on use).
        max_noise: largest standard deviation of the additive noise, in latent std units.
        clean: probability that a ``degraded`` sample is left exact (a perfect INR).
        confidence: probability that a ``degraded`` sample's mask is its Wiener confidence
            ``1 / (1 + mse(y, z0))`` instead of 1.
    """

    first: float = 0.1
    blocks: float = 0.15
    degraded: float = 0.6
    none: float = 0.15
    max_noise: float = 1.0
    clean: float = 0.25
    confidence: float = 0.5

    def probabilities(self) -> Tensor:
        weights = torch.tensor([self.first, self.blocks, self.degraded, self.none], dtype=torch.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"mixture weights must be non-negative with a positive sum, got {weights.tolist()}")
        return weights / weights.sum()


def _lowpass(z: Tensor, factor: int) -> Tensor:
    """Spatial low-pass: area-downsample by ``factor`` and bilinearly upsample back."""
    b, c, t, h, w = z.shape
    flat = z.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    small = F.adaptive_avg_pool2d(flat, (max(1, h // factor), max(1, w // factor)))
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return back.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _blur(z: Tensor) -> Tensor:
    """3x3 binomial spatial blur (replicate padding), channel by channel."""
    b, c, t, h, w = z.shape
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=z.dtype, device=z.device)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    flat = z.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    out = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3))
    return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _temporal_blur(z: Tensor) -> Tensor:
    """Average each latent frame with its neighbours (the ends repeat themselves)."""
    padded = torch.cat([z[:, :, :1], z, z[:, :, -1:]], dim=2)
    return (padded[:, :, :-2] + 2 * padded[:, :, 1:-1] + padded[:, :, 2:]) / 4


def degrade(z0: Tensor, mixture: ConditioningMixture, generator: torch.Generator) -> Tensor:
    """One random degradation of a single sample (1, C, T', h, w): what an imperfect INR gives.

    Each of noise, blur, low-pass and temporal blur is applied with probability 1/2, with a
    random strength; with probability ``mixture.clean`` the sample stays exact.
    """
    if torch.rand((), generator=generator) < mixture.clean:
        return z0.clone()
    y = z0
    coin = torch.rand(4, generator=generator)
    if coin[0] < 0.5:
        y = _blur(y)
    if coin[1] < 0.5:
        factor = int(torch.randint(2, 5, (), generator=generator))
        y = _lowpass(y, factor)
    if coin[2] < 0.5:
        y = _temporal_blur(y)
    if coin[3] < 0.5 or y is z0:
        sigma = float(torch.rand((), generator=generator)) * mixture.max_noise
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        y = y + sigma * noise
    return y


def _random_boxes(shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """A (T', h, w) 0/1 mask of one to three boxes, each at least a quarter of every side."""
    mask = torch.zeros(shape)
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        corner = []
        for size in shape:
            length = int(torch.randint(max(1, size // 4), size + 1, (), generator=generator))
            start = int(torch.randint(0, size - length + 1, (), generator=generator))
            corner.append(slice(start, start + length))
        mask[tuple(corner)] = 1.0
    return mask


def wiener_confidence(y: Tensor, z0: Tensor) -> float:
    """Wiener confidence of ``y`` as an estimate of unit-variance ``z0``: 1 / (1 + mse)."""
    return 1.0 / (1.0 + float((y - z0).square().mean()))


def draw_conditioning(
    z0: Tensor, mixture: ConditioningMixture, generator: torch.Generator
) -> tuple[Tensor, Tensor, list[str]]:
    """Draw ``(y, M, kinds)`` for a batch of clean latents, one kind per sample.

    Args:
        z0: clean normalised latents (B, C, T', h, w).
        mixture: the kinds' probabilities and degradation strengths.
        generator: CPU generator; the draw is reproducible from its seed.

    Returns:
        ``y`` like ``z0``, ``M`` (B, MASK_CHANNELS, T', h, w) in [0, 1] (0 exactly where ``y`` is 0),
        and the kind of each sample.
    """
    b, _, t, h, w = z0.shape
    picks = torch.multinomial(mixture.probabilities(), b, replacement=True, generator=generator)
    ys, masks, kinds = [], [], []
    for i, pick in enumerate(picks.tolist()):
        kind = KINDS[pick]
        sample = z0[i : i + 1]
        if kind == "degraded":
            y = degrade(sample, mixture, generator)
            # No draw at confidence 0: the default mixture keeps the shipped weights' random stream.
            drawn = mixture.confidence > 0 and bool(torch.rand((), generator=generator) < mixture.confidence)
            trust = wiener_confidence(y, sample) if drawn else 1.0
            known = torch.full((t, h, w), trust)
        else:
            if kind == "first":
                known = torch.zeros((t, h, w))
                known[0] = 1.0
            elif kind == "blocks":
                known = _random_boxes((t, h, w), generator)
            else:
                known = torch.zeros((t, h, w))
            y = sample * known.to(sample)
        ys.append(y)
        masks.append(known.to(sample).expand(1, MASK_CHANNELS, t, h, w))
        kinds.append(kind)
    return torch.cat(ys), torch.cat(masks), kinds

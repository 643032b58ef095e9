"""Groups of pictures (GoPs) shaped for the Wan VAE's causal temporal compression.

The Wan2.1 VAE keeps the first frame and folds every following 4 frames into one latent
frame, so it accepts 1 + 4k frames: a 25-frame GoP gives 7 latent frames. A sequence is cut
into GoPs of ``gop_size`` frames; the tail is padded (repeating its last frame) only up to
the next 1 + 4k length, never to the full GoP, so no latent frame is spent on padding alone.

    frames (T, 3, H, W) --split_gops--> [GoP(frames (1+4k, 3, H, W), ...), ...]
    decoded GoP frames  --merge_gops--> (T, 3, H, W)   (padding dropped)

Every latent frame of the sequence gets one temporal coordinate f in [0, 1], uniformly
spaced over all latent frames of all GoPs; the INR is queried at these coordinates. A per-GoP
INR (granularity gop) spans its own GoP: f in [0, 1] over that GoP's latent frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from divinr.errors import PresetError, VideoFormatError

TEMPORAL_STRIDE = 4  # Wan VAE: 4 frames per latent frame after the first


def latent_frame_count(num_frames: int) -> int:
    """Latent frames the Wan VAE produces for ``num_frames`` input frames.

    >>> latent_frame_count(25)
    7

    Args:
        num_frames: input frames, >= 1.

    Returns:
        1 + (num_frames - 1) // 4.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return 1 + (num_frames - 1) // TEMPORAL_STRIDE


def _padded_length(num_frames: int) -> int:
    """Smallest 1 + 4k >= num_frames."""
    return 1 + TEMPORAL_STRIDE * -(-(num_frames - 1) // TEMPORAL_STRIDE)


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields make field-wise == ambiguous
class GoP:
    """One group of pictures, padded to a length the VAE accepts.

    Attributes:
        index: position of this GoP in the sequence.
        start: index of its first frame in the video.
        num_real: frames taken from the video (the rest is padding).
        frames: (T_pad, 3, H, W), T_pad = 1 + 4k >= num_real.
        latent_start: index of its first latent frame in the whole sequence.
        num_latent: latent frames of this GoP, latent_frame_count(T_pad).
    """

    index: int
    start: int
    num_real: int
    frames: torch.Tensor
    latent_start: int
    num_latent: int


@dataclass(frozen=True)
class GoPSpan:
    """Geometry of one GoP without its pixels: what a decoder knows from the header alone."""

    index: int
    start: int
    num_real: int
    num_padded: int
    latent_start: int
    num_latent: int


def total_latent_frames(num_frames: int, gop_size: int = 25) -> int:
    """Latent frames of a whole sequence cut by :func:`plan_gops`: what the INR's grids are sized for."""
    return sum(span.num_latent for span in plan_gops(num_frames, gop_size))


def inr_latent_frames(num_frames: int, gop_size: int = 25, *, per_gop: bool = False) -> int:
    """Latent frames one INR represents, which its grids are sized for: the whole sequence's, or
    (``per_gop``) the first GoP's, the longest."""
    if per_gop:
        return plan_gops(num_frames, gop_size)[0].num_latent
    return total_latent_frames(num_frames, gop_size)


def plan_gops(num_frames: int, gop_size: int = 25) -> list[GoPSpan]:
    """Cut ``num_frames`` into VAE-sized GoPs (the geometry shared by encoder and decoder).

    The last GoP may be shorter than ``gop_size``; it is padded up to the next 1 + 4k length.
    A 1-frame tail is a valid GoP (one latent frame).

    >>> [g.num_padded for g in plan_gops(60)]
    [25, 25, 13]

    Args:
        num_frames: frames of the sequence, >= 1.
        gop_size: frames per GoP, of the form 1 + 4k.

    Returns:
        GoP spans in temporal order.
    """
    if gop_size < 1 or (gop_size - 1) % TEMPORAL_STRIDE:
        raise PresetError(f"gop_size {gop_size} is not 1 + 4k as the Wan VAE needs; use e.g. 17, 25 or 33")
    if num_frames < 1:
        raise VideoFormatError("the video has no frames; a GoP needs at least one frame")
    spans: list[GoPSpan] = []
    latent_start = 0
    for index, start in enumerate(range(0, num_frames, gop_size)):
        num_real = min(gop_size, num_frames - start)
        padded = _padded_length(num_real)
        num_latent = latent_frame_count(padded)
        spans.append(GoPSpan(index, start, num_real, padded, latent_start, num_latent))
        latent_start += num_latent
    return spans


def split_gops(frames: torch.Tensor, gop_size: int = 25) -> list[GoP]:
    """Cut a sequence into VAE-sized GoPs, padding the last one by repeating its last frame.

    >>> [g.frames.shape[0] for g in split_gops(torch.zeros(60, 3, 2, 2))]
    [25, 25, 13]

    Args:
        frames: (T, 3, H, W) with T >= 1.
        gop_size: frames per GoP, of the form 1 + 4k.

    Returns:
        GoPs in temporal order (geometry from :func:`plan_gops`).
    """
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (T, C, H, W), got {tuple(frames.shape)}")
    gops: list[GoP] = []
    for span in plan_gops(int(frames.shape[0]), gop_size):
        real = frames[span.start : span.start + span.num_real]
        pad = span.num_padded - span.num_real
        padded = torch.cat([real, real[-1:].expand(pad, *real.shape[1:])]) if pad else real
        gops.append(GoP(span.index, span.start, span.num_real, padded, span.latent_start, span.num_latent))
    return gops


def merge_gops(gops_frames: list[torch.Tensor], gops: list[GoP]) -> torch.Tensor:
    """Drop each GoP's padding and concatenate back into one sequence.

    Args:
        gops_frames: per GoP, (>= num_real, C, H, W) frames, e.g. decoded ones.
        gops: the GoPs these frames belong to, in temporal order.

    Returns:
        (sum of num_real, C, H, W).
    """
    if len(gops_frames) != len(gops):
        raise ValueError(f"got frames for {len(gops_frames)} GoPs but {len(gops)} GoPs")
    if not gops:
        raise ValueError("merge_gops needs at least one GoP")
    expected_start = 0
    for frames, gop in zip(gops_frames, gops):
        if gop.start != expected_start:
            raise ValueError(
                f"GoP {gop.index} starts at frame {gop.start}, expected {expected_start}; pass GoPs in order"
            )
        if frames.shape[0] < gop.num_real:
            raise ValueError(f"GoP {gop.index} has {frames.shape[0]} frames, fewer than its {gop.num_real} real frames")
        expected_start += gop.num_real
    return torch.cat([frames[: gop.num_real] for frames, gop in zip(gops_frames, gops)])


def latent_coordinates(gops: Sequence[GoP | GoPSpan]) -> list[torch.Tensor]:
    """Normalised temporal coordinate of every latent frame, per GoP.

    Coordinates are k / (K - 1) over the K latent frames of the whole sequence, so GoPs
    tile [0, 1] without overlap and the INR sees one continuous time axis.

    Args:
        gops: all GoPs (or spans) of the sequence, from :func:`split_gops` or :func:`plan_gops`.

    Returns:
        One float32 tensor of shape (num_latent,) per GoP; a lone latent frame gets 0.0.
    """
    total = sum(g.num_latent for g in gops)
    return [_spread(g.latent_start, g.num_latent, total) for g in gops]


def _spread(start: int, count: int, total: int) -> torch.Tensor:
    """Latent frames ``start .. start + count - 1`` of ``total`` at k / (total - 1) (a lone frame at 0)."""
    scale = 1.0 / (total - 1) if total > 1 else 0.0
    return torch.arange(start, start + count, dtype=torch.float64).mul(scale).float()


def gop_coordinates(gops: Sequence[GoP | GoPSpan], *, per_gop: bool = False) -> list[torch.Tensor]:
    """The INR's coordinates of every latent frame, per GoP: :func:`latent_coordinates` for one INR
    per sequence, or (``per_gop``) each GoP's latent frames spread over [0, 1] on their own."""
    if not per_gop:
        return latent_coordinates(gops)
    return [_spread(0, g.num_latent, g.num_latent) for g in gops]

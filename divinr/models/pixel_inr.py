"""divinr's INR as a pixel-space video representation: the HiNeRV-recipe baseline's model side.

The pixel-INR codec (:class:`divinr.codec.pixel.PixelINRCodec`) and its trainer
(:mod:`divinr.training.hinerv`) share what is here: the size presets, the per-sequence config,
the frames' temporal coordinates and rendering every frame. Nothing here needs Lightning, so
the decoder evaluates the INR with this module alone::

    preset --hinerv_config(frame size, frames)--> INRConfig (rgb head)
    f = i / (T - 1) --LatentINR--> frame i, (3, H, W) in [0, 1]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from divinr.errors import PresetError, unknown_choice
from divinr.models.inr import INRConfig, LatentINR

HINERV_REFERENCE_FRAMES = 600
"""Sequence length the presets' grid sizes are chosen for (a UVG sequence)."""

HINERV_STRIDES = (4, 2, 2, 2, 2)
"""Upsampling of the presets: 9x16 base grid -> 576x1024 frames."""

# Frames smaller than this many base cells per side get smaller strides (see hinerv_config),
# so the stem still sees some spatial context.
_MIN_BASE_SIDE = 4


HINERV_PRESETS: dict[str, INRConfig] = {
    # Parameters at 1024x576 for 25 / 150 / 600 frames (grids scaled by frames / 600):
    # 4xs 9K / 22K / 68K, 3xs 26K / 53K / 155K,
    # xxs 54K / 105K / 289K, xs 131K / 230K / 578K, s 376K / 582K / 1.32M, m 968K / 1.33M / 2.61M.
    # At ~5 bits per coded parameter: 600 frames 0.004 / 0.008 / 0.019 / 0.037 bpp for xxs..m,
    # 150 frames 0.006 / 0.013 / 0.033 / 0.075 bpp. 4xs and 3xs put short or small clips
    # (e.g. 49 frames at 512x288: 0.006 / 0.016 / 0.035 / 0.088 bpp for 4xs..xs) in the
    # 0.005-0.1 bpp range; on full sequences they fall below it.
    "4xs": INRConfig(
        channels=24, stage_channels=(16, 12, 8, 6, 4), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=60, grid_channels=4, local_grid_frames=150, local_grid_channels=2, head="rgb",
    ),
    "3xs": INRConfig(
        channels=40, stage_channels=(32, 20, 12, 8, 6), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=90, grid_channels=6, local_grid_frames=200, local_grid_channels=3, head="rgb",
    ),
    "xxs": INRConfig(
        channels=64, stage_channels=(48, 32, 16, 12, 8), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=120, grid_channels=8, local_grid_frames=300, local_grid_channels=4, head="rgb",
    ),
    "xs": INRConfig(
        channels=96, stage_channels=(64, 40, 24, 16, 12), strides=HINERV_STRIDES, blocks=(2, 1, 1, 1, 1),
        grid_frames=150, grid_channels=12, local_grid_frames=300, local_grid_channels=8, head="rgb",
    ),
    "s": INRConfig(
        channels=128, stage_channels=(112, 64, 32, 20, 12), strides=HINERV_STRIDES, blocks=(2, 2, 1, 1, 1),
        grid_frames=200, grid_channels=20, local_grid_frames=300, local_grid_channels=12, head="rgb",
    ),
    "m": INRConfig(
        channels=192, stage_channels=(160, 96, 48, 24, 16), strides=HINERV_STRIDES, blocks=(3, 2, 1, 1, 1),
        grid_frames=300, grid_channels=24, local_grid_frames=300, local_grid_channels=16, head="rgb",
    ),
}

SEQUENCE_PRESETS = ("xxs", "xs", "s", "m")
"""The default sweep: about 0.004-0.04 bpp on 600-frame 1024x576 sequences, 0.006-0.075 on 150 frames
(estimates from parameter counts; the measured rate is the bitstream's size)."""


def hinerv_config(preset: str, frame_size: tuple[int, int], num_frames: int) -> INRConfig:
    """Resolve an rgb-head INR config for one sequence from a named size preset.

    The grids keep the preset's number of grid frames per video frame (their temporal sizes are
    scaled by ``num_frames / 600``, at least 2 each). Frames whose shorter side is below
    ``4 x 64`` px get smaller strides, halving the first stride still above 1 until the base
    grid has at least 4 cells on the shorter side; the decoder's widths and depths, hence its
    parameter count, do not change.

    Args:
        preset: a key of :data:`HINERV_PRESETS`.
        frame_size: (H, W) of the frames, the order of ``LatentINR``'s ``output_size``.
        num_frames: frames of the sequence the INR represents.

    Returns:
        The config; build it with ``LatentINR(config, frame_size)``.

    Raises:
        PresetError: unknown preset, or a non-positive size or frame count.
    """
    if preset not in HINERV_PRESETS:
        raise unknown_choice("HiNeRV preset", preset, list(HINERV_PRESETS))
    if len(frame_size) != 2 or min(frame_size) < 1:
        raise PresetError(f"frame_size must be (H, W) with positive sides, got {frame_size!r}")
    if num_frames < 1:
        raise PresetError(f"num_frames must be >= 1, got {num_frames}")
    config = HINERV_PRESETS[preset]
    strides = list(config.strides)
    limit = max(min(frame_size) // _MIN_BASE_SIDE, 1)
    for index in range(len(strides)):
        while strides[index] > 1 and math.prod(strides) > limit:
            strides[index] //= 2
    ratio = num_frames / HINERV_REFERENCE_FRAMES
    return dataclasses.replace(
        config,
        strides=tuple(strides),
        grid_frames=max(2, round(config.grid_frames * ratio)),
        local_grid_frames=max(2, round(config.local_grid_frames * ratio)),
    )


def frame_coordinates(num_frames: int) -> Tensor:
    """Temporal coordinate of every frame of a sequence: ``i / (T - 1)``; a lone frame gets 0.

    >>> frame_coordinates(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    scale = 1.0 / (num_frames - 1) if num_frames > 1 else 0.0
    return torch.arange(num_frames, dtype=torch.float64).mul(scale).float()


def render_chunks(
    inr: LatentINR, num_frames: int, *, frames: tuple[int, int] | None = None, batch: int = 8
) -> Iterator[Tensor]:
    """Evaluate an rgb-head INR at the frames ``[start, stop)`` of a ``num_frames`` sequence
    (default all), ``batch`` frames at a time: any range renders exactly the frames a full
    render gives, since each frame depends on its own coordinate alone.

    The INR runs in eval mode (restored afterwards): an INR still carrying Quant-Noise then
    renders with fully quantised weights, i.e. what the bitstream decodes to.

    Yields:
        (n, 3, H, W) float32 frames in [0, 1], on CPU, in order.
    """
    if batch < 1:
        raise PresetError(f"batch must be >= 1, got {batch}")
    start, stop = (0, num_frames) if frames is None else frames
    device = next(inr.parameters()).device
    coords = frame_coordinates(num_frames)[start:stop].to(device)
    was_training = inr.training
    inr.eval()
    try:
        for chunk in coords.split(batch):
            with torch.no_grad():
                out = inr(chunk).y.float().cpu()
            yield out
    finally:
        inr.train(was_training)


def render(inr: LatentINR, num_frames: int, *, frames: tuple[int, int] | None = None, batch: int = 8) -> Tensor:
    """:func:`render_chunks` in one (T, 3, H, W) tensor: every frame of the sequence by default.

    Args:
        inr: the trained INR (any device).
        num_frames: frames of the sequence it was trained on.
        frames: ``[start, stop)`` to render instead of all.
        batch: frames per forward pass.
    """
    return torch.cat(list(render_chunks(inr, num_frames, frames=frames, batch=batch)))

"""Bits per pixel, defined once: 8 x file bytes over the pixels of the real (unpadded) frames.

Torch-free, so ``divinr info`` reports the rate without loading torch.
"""

from __future__ import annotations


def pixel_count(num_frames: int, width: int, height: int) -> int:
    """Pixels of the real (unpadded) frames: the denominator of bits per pixel.

    >>> pixel_count(25, 1024, 576)
    14745600
    """
    if num_frames < 0 or width < 0 or height < 0:
        raise ValueError(f"counts must be non-negative, got {num_frames} frames of {width}x{height}")
    return num_frames * width * height


def bits_per_pixel(num_bytes: int, num_frames: int, width: int, height: int) -> float:
    """The rate of a file of ``num_bytes`` coding ``num_frames`` frames of ``width`` x ``height``.

    >>> bits_per_pixel(1000, 10, 40, 20)
    1.0
    """
    return 8 * num_bytes / pixel_count(num_frames, width, height)

"""JPEG keyframes, the intra-coded conditioning of the keyframe ablation, and their section.

    display frame (3, H, W) in [0, 1] --encode_jpeg(quality)--> one baseline JFIF file
    "keyframes" section: per GoP, in order, varint length + that GoP's JPEG file
    section --split_keyframes--> files --decode_jpeg--> (3, H, W) in [0, 1]

Each file carries all its decoder needs (size, subsampling, quantisation and Huffman tables),
so no header field describes the JPEG settings: the quality is the encoder's choice alone.
The encoder's settings are fixed, so a frame and a quality always give the same bytes:
baseline (not progressive) 4:2:0 JPEG with per-image optimised Huffman tables (smaller than
the standard tables, and still deterministic), without EXIF or ICC data. Decoding uses
Pillow's libjpeg-turbo with its defaults (accurate integer IDCT, fancy upsampling), so the
encoder, which conditions its training on the decoded files, and any decoder with the same
libjpeg see the same pixels.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from divinr.compression.entropy import decode_varint, encode_varint
from divinr.data.video import rgb_levels
from divinr.errors import BitstreamError, PresetError

MIN_QUALITY, MAX_QUALITY = 1, 100
"""Pillow's JPEG quality scale (libjpeg's: 50 is the standard tables, 100 quantises least)."""
_SETTINGS = {"subsampling": "4:2:0", "optimize": True, "progressive": False}


def check_quality(quality: int) -> None:
    """Refuse a quality Pillow would not take (or would silently clamp)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise PresetError(
            f"keyframe_quality must be an integer JPEG quality in {MIN_QUALITY}..{MAX_QUALITY}, got {quality!r}"
        )


def encode_jpeg(frame: torch.Tensor, quality: int) -> bytes:
    """The JPEG file of one RGB frame (3, H, W) in [0, 1], rounded to 8-bit levels first."""
    check_quality(quality)
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"expected one RGB frame shaped (3, H, W), got {tuple(frame.shape)}")
    levels = rgb_levels(frame).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    out = io.BytesIO()
    Image.fromarray(levels, mode="RGB").save(out, format="JPEG", quality=quality, **_SETTINGS)
    return out.getvalue()


def _open(data: bytes, width: int, height: int, index: int) -> Image.Image:
    """The file opened (header parsed, pixels not yet decoded) and checked against the stream."""
    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG"])
    except (OSError, ValueError, SyntaxError) as err:
        raise BitstreamError(f"keyframe {index} is not a JPEG file ({err}); the bitstream is corrupt") from None
    if image.mode != "RGB" or image.size != (width, height):
        raise BitstreamError(
            f"keyframe {index} is a {image.size[0]}x{image.size[1]} {image.mode} JPEG, the stream displays "
            f"{width}x{height} RGB; the bitstream is corrupt"
        )
    return image


def check_jpeg(data: bytes, width: int, height: int, index: int = 0) -> None:
    """Refuse, from its header alone, a file that is not a ``width`` x ``height`` RGB JPEG."""
    _open(data, width, height, index)


def decode_jpeg(data: bytes, width: int, height: int, index: int = 0) -> torch.Tensor:
    """The frame (3, H, W) in [0, 1] (float32) a JPEG file holds; any malformation is a BitstreamError."""
    image = _open(data, width, height, index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # libjpeg's "premature end of data" is a warning, not an error
            levels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Warning) as err:
        raise BitstreamError(f"keyframe {index} does not decode ({err}); the bitstream is corrupt") from None
    return torch.from_numpy(levels.copy()).permute(2, 0, 1).float().div(255)


def pack_keyframes(files: Sequence[bytes]) -> bytes:
    """The "keyframes" section: each file behind its varint length, in GoP order."""
    if not files:
        raise ValueError("a keyframe stream has at least one GoP, hence one keyframe")
    return b"".join(encode_varint(len(f)) + bytes(f) for f in files)


def split_keyframes(section: bytes, count: int) -> list[bytes]:
    """Inverse of :func:`pack_keyframes` for a stream of ``count`` GoPs (one file each)."""
    files, pos = [], 0
    for index in range(count):
        if pos == len(section):
            raise BitstreamError(
                f"the keyframes section holds {index} keyframes for the stream's {count} GoPs; the bitstream is corrupt"
            )
        try:
            length, pos = decode_varint(section, pos)
        except BitstreamError:
            raise BitstreamError(f"keyframe {index}: bad length prefix; the bitstream is corrupt") from None
        if not 0 < length <= len(section) - pos:
            raise BitstreamError(f"keyframe {index} runs past its section; the bitstream is truncated or corrupt")
        files.append(section[pos : pos + length])
        pos += length
    if pos != len(section):
        raise BitstreamError(
            f"{len(section) - pos} bytes after the last of the stream's {count} keyframes; the bitstream is corrupt"
        )
    return files

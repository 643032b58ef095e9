"""Reference codecs (anchors) for the benchmark, and imported RD points of codecs we cannot run.

Runnable anchors build command lines for external programs and measure rate from the raw
elementary stream; quality metrics are computed elsewhere on the decoded frames:

* :class:`X265Codec` -- HEVC, x265 3.5 through the system ffmpeg (the paper's HEVC anchor).
* :class:`VVenCCodec` -- VVC, VVenC through imageio-ffmpeg's ffmpeg (random access, not VTM).
* :class:`VTMCodec` -- VVC, the user's VTM EncoderApp/DecoderApp, low-delay P (the paper's).
* :class:`HiNeRVCodec` -- the HiNeRV-recipe pixel INR, coded with the divinr bitstream.

>>> codec = build_codec("x265", preset="veryslow")   # doctest: +SKIP
>>> points = codec.sweep(frames, fps=25.0, workdir=Path("runs/x265"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from divinr.anchors.base import (
    AnchorError,
    MissingToolError,
    RawVideo,
    RDPoint,
    ReferenceCodec,
    read_raw_rgb,
    write_raw_rgb,
)
from divinr.anchors.ffmpeg import VVenCCodec, X265Codec
from divinr.anchors.hinerv import HiNeRVCodec
from divinr.anchors.imported import ImportedPoint, load_imported_points
from divinr.anchors.vtm import VTMCodec
from divinr.errors import unknown_choice

CODECS: dict[str, type[ReferenceCodec]] = {
    X265Codec.name: X265Codec,
    VVenCCodec.name: VVenCCodec,
    VTMCodec.name: VTMCodec,
    HiNeRVCodec.name: HiNeRVCodec,
}


def build_codec(name: str, **kwargs: Any) -> ReferenceCodec:
    """Construct a reference codec by registry name.

    Args:
        name: ``"x265"``, ``"vvenc"``, ``"vtm"`` or ``"hinerv"``.
        **kwargs: the codec class's constructor arguments.

    Returns:
        The codec.
    """
    if name not in CODECS:
        raise unknown_choice("reference codec", name, tuple(CODECS))
    return CODECS[name](**kwargs)


__all__ = [
    "AnchorError",
    "CODECS",
    "HiNeRVCodec",
    "ImportedPoint",
    "MissingToolError",
    "RDPoint",
    "RawVideo",
    "ReferenceCodec",
    "VTMCodec",
    "VVenCCodec",
    "X265Codec",
    "build_codec",
    "load_imported_points",
    "read_raw_rgb",
    "write_raw_rgb",
]

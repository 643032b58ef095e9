"""divinr's codecs, one class per bitstream kind, found by the kind byte of a stream's header.

    DiVINRCodec(config).compress(video) -> bytes      PixelINRCodec(preset).compress(video) -> bytes
    decompress(bytes) -> Decoded    (the header's kind picks the codec; no encoder settings needed)

Decoding imports neither Lightning nor :mod:`divinr.training`: encoders import their training
code when they are asked to encode.
"""

from __future__ import annotations

from pathlib import Path

from divinr.codec.base import Codec, Encoded, peak_memory
from divinr.codec.divinr import DiVINRCodec, coded_size, load_clip
from divinr.codec.pixel import PixelINRCodec
from divinr.compression.bitstream import CodecKind, read_header
from divinr.inference.decoder import Decoded

CODECS: dict[CodecKind, type[Codec]] = {DiVINRCodec.kind: DiVINRCodec, PixelINRCodec.kind: PixelINRCodec}


def decoder_for(
    data: bytes, *, backbone_path: str | Path | None = None, device: str = "auto", progress: bool = True
) -> Codec:
    """The codec that decodes ``data``, chosen by its header's kind (checked without torch)."""
    kind = CodecKind(read_header(data)["kind"])
    return CODECS[kind].for_decoding(backbone_path=backbone_path, device=device, progress=progress)


def decompress(
    data: bytes,
    *,
    frames: tuple[int, int] | None = None,
    backbone_path: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Decoded:
    """Decode any divinr bitstream, or only its frames ``[start, stop)`` (random access: only the
    GoPs that cover them are sampled); ``backbone_path``: a local copy of a DiV-INR stream's backbone."""
    return decoder_for(data, backbone_path=backbone_path, device=device, progress=progress).decompress(data, frames)


__all__ = [
    "CODECS",
    "Codec",
    "Decoded",
    "DiVINRCodec",
    "Encoded",
    "PixelINRCodec",
    "coded_size",
    "decoder_for",
    "decompress",
    "load_clip",
    "peak_memory",
]

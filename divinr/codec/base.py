"""The codec contract: ``compress(video) -> bytes`` and its inverse ``decompress(bytes) -> Decoded``.

Nothing passes from a codec's encoder to its decoder but the bytes (and, for DiV-INR, the
public backbone the header names). :meth:`Codec.encode` is ``compress`` with what was measured
on the way (bits by part, timings, training history) and an opt-in reconstruction.
"""

from __future__ import annotations

import abc
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from divinr.atomic import atomic_write_bytes
from divinr.compression.bitstream import Bitstream, CodecKind, Header, bits_breakdown, unpack
from divinr.data.video import Video
from divinr.errors import BitstreamError
from divinr.inference.decoder import Decoded
from divinr.rate import bits_per_pixel


def peak_memory() -> dict[str, int]:
    """Peak resident memory of this process and, on GPU, peak allocated device memory."""
    peak = {"cpu_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["gpu_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


@dataclass
class Encoded:
    """A bitstream and what was measured while producing it.

    ``reconstruction`` and ``decode_seconds`` are None unless the encode was asked to
    reconstruct (``encode(..., reconstruct=True)``): the decode an experiment reports is done
    once, from the file, by :meth:`Codec.decompress`. ``peak_memory_bytes`` is the process's
    peak when the bitstream was made, i.e. of training (before any reconstruction).
    ``width`` x ``height`` is the input's (display) size, whose pixels bpp counts, not the
    coded size the encoder pads to. ``predicted_bpp`` is the rate model's prediction when the
    encoder was given a target rate (:mod:`divinr.rate_control`).
    """

    data: bytes
    header: Header
    bits: dict[str, int]
    frames: int
    width: int
    height: int
    history: list[dict[str, Any]]
    encode_seconds: float
    peak_memory_bytes: dict[str, int] = field(default_factory=peak_memory)
    reconstruction: Decoded | None = None
    decode_seconds: float | None = None
    predicted_bpp: float | None = None

    @property
    def bpp(self) -> float:
        return bits_per_pixel(len(self.data), self.frames, self.width, self.height)


class Codec(abc.ABC):
    """One bitstream kind: its encoder and its decoder, side by side."""

    kind: ClassVar[CodecKind]

    @classmethod
    @abc.abstractmethod
    def for_decoding(cls, *, backbone_path: str | Path | None, device: str, progress: bool) -> Codec:
        """A codec that can decode this kind's streams (``backbone_path``: where a backbone is, if one is needed)."""

    def compress(self, video: Video) -> bytes:
        """The bitstream of ``video`` (frames at coding resolution)."""
        return self.encode(video).data

    @abc.abstractmethod
    def encode(
        self,
        video: Video,
        *,
        reconstruct: bool = False,
        workdir: str | Path | None = None,
        logger: Any = None,
        callbacks: Sequence[Any] = (),
        bitstream_path: str | Path | None = None,
    ) -> Encoded:
        """Encode ``video``; ``reconstruct`` also decodes the result in this process.

        ``workdir`` makes training resumable, ``logger`` / ``callbacks`` are Lightning's, and
        ``bitstream_path`` receives the bytes (atomically) as soon as they exist.
        """

    def _encoded(
        self,
        video: Video,
        data: bytes,
        header: Header,
        history: list[dict[str, Any]],
        *,
        started: float,
        bitstream_path: str | Path | None,
        reconstruct: Callable[[bytes], Decoded] | None,
    ) -> Encoded:
        """What every ``encode`` returns: the bytes written to ``bitstream_path`` (atomically) as soon
        as they exist, so a failure afterwards never loses the training, then measured and, with
        ``reconstruct``, decoded and timed."""
        if bitstream_path is not None:
            atomic_write_bytes(bitstream_path, data)
        encoded = Encoded(
            data=data, header=header, bits=bits_breakdown(data), frames=video.num_frames, width=video.width,
            height=video.height, history=history, encode_seconds=time.perf_counter() - started,
        )
        if reconstruct is not None:
            start = time.perf_counter()
            encoded.reconstruction = reconstruct(data)
            encoded.decode_seconds = time.perf_counter() - start
        return encoded

    @abc.abstractmethod
    def iter_frames(self, data: bytes, frames: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        """Decode ``frames`` ``[start, stop)`` (default all) chunk by chunk, in order: memory holds
        one chunk (a GoP, or a few frames), whatever the length of the stream."""

    def decompress(self, data: bytes, frames: tuple[int, int] | None = None) -> Decoded:
        """Decode a bitstream of this codec's kind, or the range ``frames`` of it, into one tensor."""
        return Decoded(torch.cat(list(self.iter_frames(data, frames))), [], float(self.stream(data).header.fps))

    def stream(self, data: bytes) -> Bitstream:
        """The parsed stream, refused with a clear error if it is of another kind."""
        stream = unpack(data)
        if stream.header.kind != self.kind:
            raise BitstreamError(
                f"a {stream.header.kind.name} stream is not a {self.kind.name} stream; decode it with "
                "divinr.codec.decompress"
            )
        return stream

"""The pixel-space INR (HiNeRV recipe) as a codec: the baseline that codes frames, not latents.

    encoder: frames --train the RGB-head INR (L1 + MS-SSIM; dense -> prune -> Quant-Noise,
             divinr.training.hinerv)--> quantise + range-code --> bitstream (kind PIXEL_INR)
    decoder: bitstream --dequantised INR--> every frame at f = i / (T - 1)

The same INR family, stage schedule, quantiser, range coder and container as DiV-INR, with no
backbone and no NOLA: the comparison isolates what the diffusion decoder adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from divinr.codec.base import Codec, Encoded
from divinr.compression.bitstream import CodecKind, PixelINRHeader, pack
from divinr.data.video import Video, fps_fraction
from divinr.devices import resolve_device
from divinr.errors import unknown_choice
from divinr.inference.decoder import build_inr_from_stream, check_decode_memory, frame_range
from divinr.models.inr import INRConfig
from divinr.models.pixel_inr import HINERV_PRESETS, hinerv_config, render_chunks

if TYPE_CHECKING:
    import lightning as L

# HiNeRV's own short schedule (300 dense + 60 prune + 30 QAT epochs).
HINERV_EPOCHS = (300, 60, 30)


def pixel_inr_header(video: Video, inr: INRConfig, bits: int) -> PixelINRHeader:
    """Header of a pixel-INR stream: geometry, frame rate, INR architecture and quantiser width."""
    return PixelINRHeader(
        frames=video.num_frames, width=video.width, height=video.height, fps=fps_fraction(video.fps), inr=inr,
        quant_bits=bits,
    )


class PixelINRCodec(Codec):
    """divinr's INR with an RGB head, trained on pixels with HiNeRV's recipe.

    Args:
        preset: INR size, a key of :data:`divinr.models.pixel_inr.HINERV_PRESETS`.
        epochs: (dense, pruning, Quant-Noise) epochs.
        seed: seeds initialisation, clip order and Quant-Noise.
        device: where training and decoding run.
        progress: show progress bars.
    """

    kind: ClassVar[CodecKind] = CodecKind.PIXEL_INR

    def __init__(
        self,
        preset: str = "xxs",
        epochs: tuple[int, int, int] = HINERV_EPOCHS,
        *,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        if preset not in HINERV_PRESETS:
            raise unknown_choice("HiNeRV preset", preset, tuple(HINERV_PRESETS))
        self.preset = preset
        self.epochs = tuple(epochs)
        self.seed = seed
        self.device = device
        self.progress = progress

    @classmethod
    def for_decoding(cls, *, backbone_path: str | Path | None, device: str, progress: bool) -> PixelINRCodec:
        """The decoder needs no settings: the header describes the INR (and no backbone is used)."""
        return cls(device=device, progress=progress)

    def encode(
        self,
        video: Video,
        *,
        reconstruct: bool = False,
        workdir: str | Path | None = None,
        logger: Any = None,
        callbacks: Sequence[L.Callback] = (),
        bitstream_path: str | Path | None = None,
    ) -> Encoded:
        """Train the INR on ``video`` and code it; ``workdir`` makes the training resumable."""
        from divinr.training.hinerv import train_hinerv
        from divinr.training.stages import paper_phases
        from divinr.training.trainer import default_precision

        start = time.perf_counter()
        config = hinerv_config(self.preset, (video.height, video.width), video.num_frames)
        device = resolve_device(self.device)
        phases = paper_phases(*self.epochs)
        inr, history = train_hinerv(
            video.frames, config, phases, seed=self.seed, device=device, precision=default_precision(device),
            logger=logger, enable_progress_bar=self.progress, workdir=workdir, callbacks=list(callbacks),
        )
        header = pixel_inr_header(video, config, bits=phases[-1].quant_bits)  # the width Quant-Noise trained at
        rows = [dict(zip(history, values)) for values in zip(*history.values())]
        return self._encoded(
            video, pack(header, inr.state_dict(), {}), header, rows, started=start, bitstream_path=bitstream_path,
            reconstruct=self.decompress if reconstruct else None,
        )

    def iter_frames(self, data: bytes, frames: tuple[int, int] | None = None) -> Iterator[Tensor]:
        """Evaluate the dequantised INR at the frames of the range, a few at a time."""
        stream = self.stream(data)
        start, stop = frame_range(stream.header, frames)
        check_decode_memory(stream.header, held_frames=0)
        inr = build_inr_from_stream(stream).to(resolve_device(self.device))
        yield from render_chunks(inr, stream.header.frames, frames=(start, stop))

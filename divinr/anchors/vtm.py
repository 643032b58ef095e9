"""The paper's VVC anchor: VTM EncoderApp/DecoderApp, low-delay P, intra period 16.

VTM is not packaged anywhere installable, so it runs only when the user points this class at
their own build (VTM-23.11 in the paper) and at ``cfg/encoder_lowdelay_P_vtm.cfg``::

    input.rgb --ffmpeg (BT.709 full range, 10-bit)--> input.yuv --EncoderApp--> stream.bin
    stream.bin --DecoderApp (-d 10)--> rec.yuv --ffmpeg (same matrix)--> decoded.rgb

The cfg is a GOP of 8 P pictures with ``IntraPeriod -1``; ``--IntraPeriod=16`` adds an intra
picture every 16 frames and ``--DecodingRefreshType=2`` makes each one an IDR, as DCVC's test
conditions do. The chroma format is a parameter because the paper does not say which:
``--InputChromaFormat`` and ``--ChromaFormatIDC`` are both set to ``"420"`` (default, VTM's
usual test condition) or ``"444"`` (as the x265 anchor). Input and output are
10-bit so the RGB conversion is the same one the VVenC anchor uses (full range by default, the
benchmark sequences' range; see :mod:`divinr.anchors.ffmpeg`). No reconstruction file is
written by the encoder (``-o`` is omitted): the decoder's output is what gets scored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from divinr.anchors.base import MissingToolError, RawVideo, ReferenceCodec
from divinr.anchors.ffmpeg import FFMPEG_QUIET, bundled_ffmpeg, check_yuv_range, rgb_to_yuv_args, yuv_to_rgb_filter
from divinr.errors import PresetError, VideoFormatError, unknown_choice

_YUV_FORMATS = {"420": "yuv420p10le", "444": "yuv444p10le"}
#: Default QP sweep, lowest rate first: the common-test-condition QPs 22-37 and three above them for lower rates.
VTM_QPS = (52, 47, 42, 37, 32, 27, 22)


class VTMCodec(ReferenceCodec):
    """VVC anchor with the user's VTM binaries.

    Args:
        encoder_app: path to VTM's ``EncoderApp``.
        decoder_app: path to VTM's ``DecoderApp``.
        cfg: path to ``encoder_lowdelay_P_vtm.cfg`` (or another VTM cfg).
        chroma_format: ``"420"`` or ``"444"``.
        intra_period: frames between IDR pictures (the paper: 16).
        qps: the default QP sweep, lowest rate first.
        version: VTM version for the label, e.g. ``"23.11"`` (the apps are not run to ask).
        extra_args: further EncoderApp options, appended last (e.g. ``["--Level=4.1"]``).
        yuv_range: ``"full"`` (the benchmark sequences' range) or ``"limited"``.
        ffmpeg: ffmpeg used for the RGB <-> YUV files; None for imageio-ffmpeg's.
    """

    name = "vtm"
    bitstream_suffix = ".bin"

    def __init__(
        self,
        encoder_app: str | Path | None,
        decoder_app: str | Path | None,
        cfg: str | Path | None,
        chroma_format: str = "420",
        intra_period: int = 16,
        qps: Sequence[int] = VTM_QPS,
        version: str | None = None,
        extra_args: Sequence[str] = (),
        yuv_range: str = "full",
        ffmpeg: str | Path | None = None,
    ) -> None:
        check_yuv_range(yuv_range)
        if chroma_format not in _YUV_FORMATS:
            raise unknown_choice("VTM chroma format", chroma_format, tuple(_YUV_FORMATS))
        if intra_period < 1:
            raise PresetError(f"VTM intra_period must be >= 1, got {intra_period}")
        self.encoder_app = None if encoder_app is None else Path(encoder_app)
        self.decoder_app = None if decoder_app is None else Path(decoder_app)
        self.cfg = None if cfg is None else Path(cfg)
        self.chroma_format = chroma_format
        self.intra_period = intra_period
        self.qps = list(qps)
        for qp in self.qps:
            self.validate_param({"qp": qp})
        self.version = version
        self.extra_args = list(extra_args)
        self.yuv_range = yuv_range
        self._ffmpeg = None if ffmpeg is None else str(ffmpeg)

    @property
    def ffmpeg(self) -> str:
        """The ffmpeg that converts between the shared rgb24 file and VTM's YUV files."""
        return self._ffmpeg if self._ffmpeg is not None else bundled_ffmpeg()

    def check(self) -> None:
        for what, path, executable in (
            ("EncoderApp", self.encoder_app, True),
            ("DecoderApp", self.decoder_app, True),
            ("cfg file", self.cfg, False),
        ):
            if path is None:
                raise MissingToolError(f"the VTM anchor needs the path of VTM's {what}; build VTM and pass it")
            if not path.is_file() or (executable and not os.access(path, os.X_OK)):
                kind = "executable" if executable else "file"
                raise MissingToolError(f"VTM {what} {str(path)!r} is not an existing {kind}; check the path")
        if self._ffmpeg is None:
            bundled_ffmpeg()  # raises when imageio-ffmpeg is missing
        elif not Path(self._ffmpeg).is_file():
            raise MissingToolError(
                f"ffmpeg {self._ffmpeg!r} for the VTM anchor does not exist; pass an existing binary"
            )

    def label(self) -> str:
        vtm = f"VTM {self.version}" if self.version else "VTM"
        cfg = self.cfg.stem if self.cfg is not None else "no cfg"
        chroma = "4:4:4" if self.chroma_format == "444" else "4:2:0"
        return f"VVC ({vtm}, {cfg}, IDR every {self.intra_period}, {chroma} 10-bit)"

    def default_params(self) -> list[dict[str, Any]]:
        return [{"qp": qp} for qp in self.qps]

    def validate_param(self, param: dict[str, Any]) -> None:
        value = param.get("qp")
        if set(param) != {"qp"} or not (isinstance(value, int) and 0 <= value <= 63):
            raise PresetError(f"VTM rate point {param!r} must be {{'qp': int in [0, 63]}}")

    def encoder_command(
        self, yuv: Path, width: int, height: int, num_frames: int, fps: float, qp: int, bitstream: Path
    ) -> list[str]:
        """The EncoderApp command line.

        Args:
            yuv: 10-bit planar input in :attr:`chroma_format`.
            width, height, num_frames: its geometry.
            fps: frame rate; VTM takes an integer and uses it for timing information only.
            qp: base QP.
            bitstream: output stream.

        Returns:
            argv.
        """
        chroma = self.chroma_format
        return [
            str(self.encoder_app), "-c", str(self.cfg), "-i", str(yuv),
            "-wdt", str(width), "-hgt", str(height), "-fr", str(round(fps)), "-f", str(num_frames),
            "-q", str(qp), "--InputBitDepth=10", "--OutputBitDepth=10",
            f"--InputChromaFormat={chroma}", f"--ChromaFormatIDC={chroma}",
            f"--IntraPeriod={self.intra_period}", "--DecodingRefreshType=2",
            "-b", str(bitstream), *self.extra_args,
        ]

    def decoder_command(self, bitstream: Path, rec: Path) -> list[str]:
        """The DecoderApp command line (10-bit output)."""
        return [str(self.decoder_app), "-b", str(bitstream), "-o", str(rec), "-d", "10"]

    def scratch_files(self, bitstream: Path) -> list[Path]:
        """The 10-bit YUV input of EncoderApp and the reconstruction of DecoderApp."""
        return [bitstream.with_suffix(".input.yuv"), bitstream.with_suffix(".rec.yuv")]

    def _encode(self, raw: RawVideo, fps: float, param: dict[str, Any], bitstream: Path) -> list[list[str]]:
        if self.chroma_format == "420" and (raw.width % 2 or raw.height % 2):
            raise VideoFormatError(f"4:2:0 needs even frame sizes, got {raw.width}x{raw.height}; crop or resize")
        yuv = self.scratch_files(bitstream)[0]
        to_yuv = [
            self.ffmpeg, *FFMPEG_QUIET, *rgb_to_yuv_args(raw, self.yuv_range, _YUV_FORMATS[self.chroma_format]),
            "-f", "rawvideo", str(yuv),
        ]
        encode = self.encoder_command(yuv, raw.width, raw.height, raw.num_frames, fps, param["qp"], bitstream)
        return [to_yuv, encode]

    def _decode(self, raw: RawVideo, bitstream: Path, decoded: Path) -> list[list[str]]:
        rec = self.scratch_files(bitstream)[1]
        to_rgb = [
            self.ffmpeg, *FFMPEG_QUIET, "-f", "rawvideo", "-pix_fmt", _YUV_FORMATS[self.chroma_format],
            "-s", f"{raw.width}x{raw.height}", "-i", str(rec), "-vf", yuv_to_rgb_filter(self.yuv_range),
            "-pix_fmt", "rgb24", "-f", "rawvideo", str(decoded),
        ]
        return [self.decoder_command(bitstream, rec), to_rgb]

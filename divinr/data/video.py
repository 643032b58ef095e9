"""Video input/output: raw YUV, YUV4MPEG2 and container files as RGB tensors in [0, 1].

Every codec in divinr, the neural one and the anchors, starts from the same RGB frames, so
all colour handling lives here and uses one convention: BT.709 coefficients (Kr = 0.2126,
Kb = 0.0722), limited ("TV") range unless told otherwise, 4:2:0 chroma made by 2x2 averaging
(centre siting) and restored by bilinear upsampling (the matching centre-sited filter).

    .yuv / .y4m / .mp4 ... --read_video--> Video(frames (T, 3, H, W) float32 in [0, 1], fps)
    (T, 3, H, W) ----------write_video---> .y4m / .yuv (4:2:0) | .mp4 / .mkv (lossless RGB)

Readers decode only the frames asked for (``start``/``max_frames``): raw files are seeked,
y4m frames are skipped by seeking past their payload, containers stop decoding early.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
import torch.nn.functional as F

from divinr.atomic import atomic_path
from divinr.errors import PresetError, VideoFormatError

KR, KB = 0.2126, 0.0722  # BT.709 luma coefficients (ITU-R BT.709-6, item 3.2)
KG = 1.0 - KR - KB
Y4M_MAGIC = b"YUV4MPEG2"
CONTAINER_SUFFIXES = (".mp4", ".mkv")
WRITE_SUFFIXES = (".y4m", ".yuv", *CONTAINER_SUFFIXES)
# x264 preset for the lossy (crf) path: a quality anchor input, not a speed benchmark.
X264_PRESET = "slow"


def rgb_levels(frames: torch.Tensor, peak: int = 255) -> torch.Tensor:
    """RGB in [0, 1] (clamped) as integer levels ``0..peak`` in float64, rounded half to even.

    The one quantiser of float frames to stored samples: the rgb24 input of the reference
    codecs, the lossless RGB files and the fidelity metrics all use it, so a codec is scored
    against exactly the samples it was given. Float64 matters: ``v * 255`` in float32 can land
    on the other side of a ``.5`` boundary for a few samples per frame.
    """
    return torch.round(frames.detach().to(torch.float64).clamp(0.0, 1.0) * peak)


@dataclass
class Video:
    """Decoded frames with their frame rate.

    Attributes:
        frames: (T, 3, H, W) float32 RGB in [0, 1].
        fps: frames per second.
    """

    frames: torch.Tensor
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[3])


# ---------------------------------------------------------------------------- colour


def _levels(bit_depth: int, full_range: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma scale, chroma offset, chroma scale) in code values."""
    if not 8 <= bit_depth <= 16:
        raise VideoFormatError(f"bit depth {bit_depth} is not supported; use 8 to 16 (8 or 10 usual)")
    chroma_offset = float(1 << (bit_depth - 1))
    if full_range:
        peak = float((1 << bit_depth) - 1)
        return 0.0, peak, chroma_offset, peak
    # Limited range is defined at 8 bits (16..235, 16..240) and scaled by 2^(n-8) above.
    step = float(1 << (bit_depth - 8))
    return 16.0 * step, 219.0 * step, chroma_offset, 224.0 * step


def _sample_dtype(bit_depth: int) -> np.dtype:
    return np.dtype(np.uint8) if bit_depth <= 8 else np.dtype("<u2")


def rgb_to_yuv420(
    frames: torch.Tensor, bit_depth: int = 8, full_range: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert RGB frames to BT.709 Y'CbCr 4:2:0 code values.

    Chroma is computed per pixel and averaged over 2x2 blocks (centre siting, as in
    JPEG/``C420jpeg``); values are rounded and clipped to the code range.

    Args:
        frames: (T, 3, H, W) RGB in [0, 1] (clamped), H and W even.
        bit_depth: bits per sample; 8 gives uint8, more gives uint16.
        full_range: full ("PC") range instead of limited ("TV") range.

    Returns:
        y (T, H, W), u (T, H/2, W/2), v (T, H/2, W/2) as uint8 or uint16 arrays.
    """
    _check_rgb(frames)
    height, width = frames.shape[-2:]
    if height % 2 or width % 2:
        raise VideoFormatError(
            f"4:2:0 needs even dimensions, got {width}x{height}; resize or crop to even width and height"
        )
    y_off, y_scale, c_off, c_scale = _levels(bit_depth, full_range)
    peak = (1 << bit_depth) - 1
    dtype = _sample_dtype(bit_depth)
    rgb = frames.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    r, g, b = rgb.unbind(1)
    luma = KR * r + KG * g + KB * b
    pb = F.avg_pool2d(((b - luma) / (2.0 * (1.0 - KB))).unsqueeze(1), 2).squeeze(1)
    pr = F.avg_pool2d(((r - luma) / (2.0 * (1.0 - KR))).unsqueeze(1), 2).squeeze(1)

    def code(x: torch.Tensor, offset: float, scale: float) -> np.ndarray:
        return (offset + scale * x).round().clamp(0, peak).numpy().astype(dtype)

    return code(luma, y_off, y_scale), code(pb, c_off, c_scale), code(pr, c_off, c_scale)


def yuv420_to_rgb(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, bit_depth: int = 8, full_range: bool = False
) -> torch.Tensor:
    """Convert BT.709 Y'CbCr 4:2:0 code values to RGB.

    Chroma is upsampled bilinearly with centre siting (``align_corners=False``), the
    counterpart of the 2x2 averaging in :func:`rgb_to_yuv420`.

    Args:
        y: (T, H, W) or (H, W) luma codes.
        u: Cb codes, (T, ceil(H/2), ceil(W/2)) or without the T axis.
        v: Cr codes, same shape as ``u``.
        bit_depth: bits per sample of the codes.
        full_range: codes use the full range instead of the limited range.

    Returns:
        (T, 3, H, W) float32 RGB clamped to [0, 1].
    """
    y, u, v = (np.asarray(p) for p in (y, u, v))
    if y.ndim == 2:
        y, u, v = y[None], u[None], v[None]
    half = (y.shape[0], (y.shape[1] + 1) // 2, (y.shape[2] + 1) // 2)
    if y.ndim != 3 or u.shape != half or v.shape != half:
        raise ValueError(f"4:2:0 planes need chroma of shape {half}, got y {y.shape}, u {u.shape}, v {v.shape}")
    return _planes_to_rgb(y, u, v, bit_depth, full_range)


def _planes_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, bit_depth: int, full_range: bool) -> torch.Tensor:
    """Y'CbCr planes of any chroma subsampling (4:4:4, 4:2:2, 4:2:0) to RGB."""
    y_off, y_scale, c_off, c_scale = _levels(bit_depth, full_range)
    luma = (torch.from_numpy(y.astype(np.float32)) - y_off) / y_scale
    height, width = luma.shape[-2:]

    def chroma(c: np.ndarray) -> torch.Tensor:
        plane = (torch.from_numpy(c.astype(np.float32)) - c_off) / c_scale
        ch, cw = plane.shape[-2:]
        if (ch, cw) == (height, width):
            return plane
        size = (ch * (2 if ch < height else 1), cw * (2 if cw < width else 1))
        up = F.interpolate(plane.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return up.squeeze(1)[..., :height, :width]  # odd sizes: chroma covers one extra row/column

    pb, pr = chroma(u), chroma(v)
    r = luma + 2.0 * (1.0 - KR) * pr
    b = luma + 2.0 * (1.0 - KB) * pb
    g = (luma - KR * r - KB * b) / KG
    return torch.stack((r, g, b), dim=1).clamp_(0.0, 1.0)


def _check_rgb(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"expected RGB frames of shape (T>=1, 3, H, W), got {shape}")


# ---------------------------------------------------------------------------- helpers


def resize_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize RGB frames with an antialiased bicubic filter.

    Antialiasing matters for the 1920x1080 -> 1024x576 downscale: plain bicubic aliases
    fine texture, which every codec would then have to spend bits on.

    Args:
        frames: (T, 3, H, W) RGB in [0, 1].
        width: target width.
        height: target height.

    Returns:
        (T, 3, height, width) clamped to [0, 1]; ``frames`` itself when the size matches.
    """
    _check_rgb(frames)
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    out = F.interpolate(frames, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def pad_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Frames (..., H, W) extended to ``width`` x ``height`` by repeating their last column and row:
    edge replication keeps the VAE's borders smooth, where zero padding would code a sharp edge."""
    rows = torch.arange(height).clamp(max=frames.shape[-2] - 1)
    cols = torch.arange(width).clamp(max=frames.shape[-1] - 1)
    return frames[..., rows, :][..., cols]


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse ``"WIDTHxHEIGHT"``.

    >>> parse_resolution("1024x576")
    (1024, 576)

    Args:
        text: e.g. ``"1024x576"`` (``x`` or ``X``).

    Returns:
        (width, height).
    """
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise PresetError(f"resolution {text!r} is not WIDTHxHEIGHT with positive integers; write e.g. 1024x576")
    return int(match[1]), int(match[2])


def fps_fraction(fps: float) -> Fraction:
    """Frame rate as an exact fraction (29.97 -> 30000/1001) for containers and bitstreams."""
    return Fraction(fps).limit_denominator(1001)


def _read_exact(f: BinaryIO, size: int, path: Path, what: str) -> bytes:
    """Read exactly ``size`` bytes; all frame payloads of raw and y4m files go through here."""
    data = f.read(size)
    if len(data) != size:
        raise VideoFormatError(f"{path}: truncated {what} ({len(data)} of {size} bytes); the file is incomplete")
    return data


def _check_geometry(path: Path, width: int, height: int, want_w: int | None, want_h: int | None) -> None:
    """width/height describe raw files; for self-describing files they can only confirm."""
    if (want_w is not None and want_w != width) or (want_h is not None and want_h != height):
        raise VideoFormatError(
            f"{path} is {width}x{height}, not {want_w}x{want_h}; drop width/height or use resize_frames to rescale"
        )


def _beyond_end(path: Path, start: int, available: str) -> VideoFormatError:
    return VideoFormatError(f"{path}: start frame {start} is beyond the end ({available} frames); lower start")


# ---------------------------------------------------------------------------- reading


def read_video(
    path: str | os.PathLike[str],
    *,
    width: int | None = None,
    height: int | None = None,
    bit_depth: int = 8,
    fps: float | None = None,
    start: int = 0,
    max_frames: int | None = None,
    full_range: bool = False,
    resize: tuple[int, int] | None = None,
) -> Video:
    """Read frames ``start .. start + max_frames - 1`` of a video as RGB.

    With ``resize=(W, H)`` every frame is resized (:func:`resize_frames`) as soon as it is
    decoded, so peak memory follows the output size: 600 frames of 1080p would be 15 GB as
    float32 before resizing, 4 GB at 1024x576.

    The format follows the extension: ``.yuv`` is raw planar 4:2:0 (8-bit: one byte per
    sample; more: little-endian uint16), ``.y4m`` is YUV4MPEG2 (4:2:0, 4:2:2 or 4:4:4, 8 to
    16 bits), anything else is opened with PyAV (mp4, mkv, avi, mov, mpg ...).

    Colour: BT.709 always. ``full_range`` is the range assumed where the file does not
    say: raw YUV (test sequences are limited range, the default) and y4m/containers without
    a range flag; y4m ``XCOLORRANGE`` and container range flags take precedence.

    Args:
        path: video file.
        width: raw ``.yuv`` width (required there); elsewhere it must match the file.
        height: raw ``.yuv`` height (required there); elsewhere it must match the file.
        bit_depth: raw ``.yuv`` bits per sample; other formats declare their own.
        fps: frame rate to report; defaults to the file's (raw ``.yuv``: a ``<N>fps``
            token in the file name, else 25).
        start: index of the first frame to return.
        max_frames: at most this many frames (None: to the end).
        full_range: assume full ("PC") range where the file does not declare it.

    Returns:
        :class:`Video` with (T, 3, H, W) float32 frames in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise VideoFormatError(f"{path}: no such file; check the path")
    if start < 0:
        raise VideoFormatError(f"{path}: start must be >= 0, got {start}")
    if max_frames is not None and max_frames < 1:
        raise VideoFormatError(f"{path}: max_frames must be >= 1 or None, got {max_frames}")
    suffix = path.suffix.lower()
    def finish(frame: torch.Tensor) -> torch.Tensor:
        return frame if resize is None else resize_frames(frame[None], *resize)[0]

    if suffix == ".yuv":
        return _read_raw(path, width, height, bit_depth, fps, start, max_frames, full_range, finish, resize)
    if suffix == ".y4m":
        return _read_y4m(path, width, height, fps, start, max_frames, full_range, finish)
    return _read_container(path, width, height, fps, start, max_frames, full_range, finish)


def _raw_fps(path: Path) -> float:
    match = re.search(r"(\d+(?:\.\d+)?)fps", path.name, flags=re.IGNORECASE)
    return float(match[1]) if match else 25.0


def _split_planes(data: bytes, dtype: np.dtype, width: int, height: int, cw: int, ch: int) -> tuple[np.ndarray, ...]:
    samples = np.frombuffer(data, dtype=dtype)
    luma, chroma = width * height, cw * ch
    return (
        samples[:luma].reshape(height, width),
        samples[luma : luma + chroma].reshape(ch, cw),
        samples[luma + chroma : luma + 2 * chroma].reshape(ch, cw),
    )


def _read_raw(
    path: Path,
    width: int | None,
    height: int | None,
    bit_depth: int,
    fps: float | None,
    start: int,
    max_frames: int | None,
    full_range: bool,
    finish: Callable[[torch.Tensor], torch.Tensor],
    resize: tuple[int, int] | None,
) -> Video:
    if width is None or height is None:
        raise VideoFormatError(f"{path}: raw .yuv has no header; pass width and height (e.g. 1920 and 1080)")
    if width < 1 or height < 1:
        raise VideoFormatError(f"{path}: width and height must be positive, got {width}x{height}")
    _levels(bit_depth, full_range)
    dtype = _sample_dtype(bit_depth)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    frame_bytes = (width * height + 2 * cw * ch) * dtype.itemsize
    size = path.stat().st_size
    if dtype.itemsize == 2 and size % 2:
        raise VideoFormatError(
            f"{path}: {bit_depth}-bit YUV needs 2 bytes per sample but the file has an odd size ({size} bytes); "
            "is it 8-bit? pass bit_depth=8"
        )
    if size == 0 or size % frame_bytes:
        raise VideoFormatError(
            f"{path}: size {size} bytes is not a whole number of {width}x{height} {bit_depth}-bit 4:2:0 frames "
            f"({frame_bytes} bytes each, remainder {size % frame_bytes}); check width, height and bit_depth"
        )
    available = size // frame_bytes
    if start >= available:
        raise _beyond_end(path, start, str(available))
    count = available - start if max_frames is None else min(available - start, max_frames)
    out_w, out_h = resize if resize is not None else (width, height)
    out = torch.empty((count, 3, out_h, out_w), dtype=torch.float32)
    with path.open("rb") as f:
        f.seek(start * frame_bytes)
        for i in range(count):
            planes = _split_planes(_read_exact(f, frame_bytes, path, "frame"), dtype, width, height, cw, ch)
            out[i] = finish(_planes_to_rgb(*(p[None] for p in planes), bit_depth, full_range)[0])
    return Video(out, float(fps) if fps is not None else _raw_fps(path))


@dataclass(frozen=True)
class _Y4MHeader:
    width: int
    height: int
    fps: Fraction
    bit_depth: int
    chroma_w: int
    chroma_h: int
    full_range: bool | None  # None: not declared

    @property
    def frame_bytes(self) -> int:
        return (self.width * self.height + 2 * self.chroma_w * self.chroma_h) * _sample_dtype(self.bit_depth).itemsize


def _parse_y4m_header(path: Path, f: BinaryIO) -> _Y4MHeader:
    line = f.readline(4096)
    if not line.startswith(Y4M_MAGIC + b" ") or not line.endswith(b"\n"):
        raise VideoFormatError(f"{path}: not a YUV4MPEG2 file (bad header); rename it to its real format's extension")
    tags = {tok[:1]: tok[1:] for tok in line[len(Y4M_MAGIC) :].decode("ascii", "replace").split() if tok}
    try:
        width, height = int(tags["W"]), int(tags["H"])
        num, den = (int(x) for x in tags.get("F", "25:1").split(":"))
        rate = Fraction(num, den)
    except (KeyError, ValueError, ZeroDivisionError) as err:
        raise VideoFormatError(f"{path}: y4m header lacks valid W/H/F fields ({err}); re-export the file") from err
    chroma_tag = tags.get("C", "420jpeg")
    match = re.fullmatch(r"(420|422|444)(?:jpeg|paldv|mpeg2)?(?:p(\d+))?", chroma_tag)
    if match is None:
        raise VideoFormatError(
            f"{path}: y4m chroma C{chroma_tag} is not supported; "
            "convert to 4:2:0, 4:2:2 or 4:4:4 (e.g. ffmpeg -pix_fmt yuv420p)"
        )
    bit_depth = int(match[2] or 8)
    if not 8 <= bit_depth <= 16:
        raise VideoFormatError(f"{path}: y4m bit depth {bit_depth} is not supported; convert to 8 to 16 bits")
    sub_w, sub_h = {"420": (2, 2), "422": (2, 1), "444": (1, 1)}[match[1]]
    ranges = re.findall(r"XCOLORRANGE=(FULL|LIMITED)", line.decode("ascii", "replace"))
    return _Y4MHeader(
        width=width,
        height=height,
        fps=rate,
        bit_depth=bit_depth,
        chroma_w=-(-width // sub_w),
        chroma_h=-(-height // sub_h),
        full_range=(ranges[-1] == "FULL") if ranges else None,
    )


def _read_y4m(
    path: Path,
    width: int | None,
    height: int | None,
    fps: float | None,
    start: int,
    max_frames: int | None,
    full_range: bool,
    finish: Callable[[torch.Tensor], torch.Tensor],
) -> Video:
    frames: list[torch.Tensor] = []
    with path.open("rb") as f:
        header = _parse_y4m_header(path, f)
        _check_geometry(path, header.width, header.height, width, height)
        full = full_range if header.full_range is None else header.full_range
        dtype = _sample_dtype(header.bit_depth)
        frame_bytes = header.frame_bytes

        def next_frame(index: int) -> bool:
            """Consume one FRAME line (it may carry parameters); False at the end of file."""
            line = f.readline(4096)
            if not line:
                return False
            if not line.startswith(b"FRAME"):
                raise VideoFormatError(f"{path}: frame {index} has no FRAME marker; the file is corrupt")
            return True

        for index in range(start):
            if not next_frame(index):
                raise _beyond_end(path, start, str(index))
            f.seek(frame_bytes, os.SEEK_CUR)
        index = start
        while (max_frames is None or len(frames) < max_frames) and next_frame(index):
            data = _read_exact(f, frame_bytes, path, f"frame {index}")
            planes = _split_planes(data, dtype, header.width, header.height, header.chroma_w, header.chroma_h)
            frames.append(finish(_planes_to_rgb(*(p[None] for p in planes), header.bit_depth, full)[0]))
            index += 1
    if not frames:
        raise _beyond_end(path, start, f"{start} or fewer")
    return Video(torch.stack(frames), float(fps) if fps is not None else float(header.fps))


def _decode_frames(container: av.container.InputContainer, path: Path) -> Iterator[av.VideoFrame]:
    """Decode the first video stream lazily, turning FFmpeg failures into VideoFormatError."""
    try:
        yield from container.decode(video=0)
    except av.FFmpegError as err:
        raise VideoFormatError(f"{path}: decoding failed ({err}); the file is corrupt or truncated") from err


def _plane_array(plane: av.video.plane.VideoPlane, dtype: np.dtype) -> np.ndarray:
    """View one plane without its line padding."""
    row = plane.line_size // dtype.itemsize
    return np.frombuffer(plane, dtype=dtype).reshape(-1, row)[: plane.height, : plane.width]


def _frame_to_rgb(frame: av.VideoFrame, full_range: bool) -> torch.Tensor:
    """One decoded frame to (3, H, W) RGB, doing the Y'CbCr conversion ourselves (BT.709).

    swscale's RGB conversion would pick BT.601 for untagged streams, so YUV frames are
    converted here; RGB frames (lossless intermediates) are only repacked.
    """
    fmt = frame.format
    bits = fmt.components[0].bits
    if fmt.is_rgb:
        if bits <= 8:
            return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255.0
        if not (re.fullmatch(r"gbrp\d+le", fmt.name) or fmt.name == "rgb48le"):
            frame, bits = frame.reformat(format="gbrp16le"), 16
        rgb = frame.to_ndarray().astype(np.float32) / float((1 << bits) - 1)
        return torch.from_numpy(rgb).permute(2, 0, 1)
    if fmt.name.startswith("yuvj") or frame.color_range == 2:  # JPEG = full range
        full_range = True
    elif frame.color_range == 1:  # MPEG = limited range
        full_range = False
    planar = fmt.name.startswith("gray") or (fmt.name.startswith("yuv") and len(frame.planes) >= 3)
    if fmt.is_big_endian or not planar:
        # Semi-planar and other layouts (nv12, p010 ...): repack to planar without resampling.
        frame = frame.reformat(format="yuv420p" if bits <= 8 else "yuv420p16le")
        bits = 8 if bits <= 8 else 16
    dtype = _sample_dtype(bits)
    y = _plane_array(frame.planes[0], dtype)
    if len(frame.planes) >= 3:
        u, v = _plane_array(frame.planes[1], dtype), _plane_array(frame.planes[2], dtype)
    else:  # grayscale: neutral chroma
        u = v = np.full_like(y, 1 << (bits - 1))
    return _planes_to_rgb(y[None], u[None], v[None], bits, full_range)[0]


def _read_container(
    path: Path,
    width: int | None,
    height: int | None,
    fps: float | None,
    start: int,
    max_frames: int | None,
    full_range: bool,
    finish: Callable[[torch.Tensor], torch.Tensor],
) -> Video:
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise VideoFormatError(
            f"{path}: cannot be opened as a video ({err}); pass a video file, or a raw .yuv with width/height"
        ) from err
    with container:
        if not container.streams.video:
            raise VideoFormatError(f"{path}: contains no video stream; pass a video file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = fps if fps is not None else (stream.average_rate or stream.guessed_rate)
        if not rate:
            raise VideoFormatError(f"{path}: the frame rate is unknown; pass fps")
        stop = None if max_frames is None else start + max_frames
        decoded = _decode_frames(container, path)
        frames: list[torch.Tensor] = []
        try:
            for frame in itertools.islice(decoded, start, stop):
                if not frames:
                    _check_geometry(path, frame.width, frame.height, width, height)
                frames.append(finish(_frame_to_rgb(frame, full_range)))
        finally:
            decoded.close()  # stop the decoder before the container closes
    if not frames:
        raise _beyond_end(path, start, f"{start} or fewer")
    return Video(torch.stack(frames), float(rate))


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _EncoderPlan:
    codec: str
    pix_fmt: str
    frame_format: str  # what we hand PyAV; it converts to pix_fmt only by repacking
    options: dict[str, str]


def _encoder_plan(path: Path, bit_depth: int, crf: int | None) -> _EncoderPlan:
    """Choose codec and pixel formats for a container, rejecting what cannot be honoured."""
    if crf is not None:
        if bit_depth not in (8, 10):
            raise VideoFormatError(f"{path}: lossy x264 writes 8 or 10 bits, not {bit_depth}; pass bit_depth=8 or 10")
        pix_fmt = "yuv420p" if bit_depth == 8 else "yuv420p10le"
        return _EncoderPlan("libx264", pix_fmt, pix_fmt, {"crf": str(crf), "preset": X264_PRESET})
    if path.suffix.lower() == ".mp4":
        if bit_depth != 8:
            raise VideoFormatError(
                f"{path}: lossless mp4 (libx264rgb) is 8-bit only; write .mkv or .y4m for {bit_depth} bits"
            )
        return _EncoderPlan("libx264rgb", "rgb24", "rgb24", {"qp": "0", "preset": "medium"})
    if bit_depth == 8:
        return _EncoderPlan("ffv1", "bgr0", "rgb24", {})
    if bit_depth not in (9, 10, 12, 14, 16):
        raise VideoFormatError(f"{path}: lossless mkv (ffv1) writes 8, 9, 10, 12, 14 or 16 bits, not {bit_depth}")
    return _EncoderPlan("ffv1", f"gbrp{bit_depth}le", f"gbrp{bit_depth}le", {})


def write_video(
    path: str | os.PathLike[str],
    frames: torch.Tensor | Iterable[torch.Tensor],
    fps: float,
    *,
    bit_depth: int = 8,
    crf: int | None = None,
    full_range: bool = False,
) -> None:
    """Write RGB frames to a video file, atomically.

    By extension: ``.y4m`` and ``.yuv`` store BT.709 4:2:0 (2x2-averaged chroma, 8 to 16
    bits, ``full_range`` selects the range; y4m records it as ``XCOLORRANGE``); ``.mp4``
    is lossless RGB libx264rgb (``qp 0``, 8-bit) and ``.mkv`` lossless RGB FFV1 (8 to 16
    bits) unless ``crf`` asks for lossy libx264 4:2:0. The file appears only when complete:
    frames go to a temporary file in the same folder that is then renamed over ``path``.

    Args:
        path: output file; parent folders are created.
        frames: (T, 3, H, W) RGB in [0, 1] (clamped), H and W even for 4:2:0 outputs; or chunks of
            such frames, written as they come (a decoder streams GoP by GoP), all of one size.
        fps: frame rate (stored as a fraction with denominator <= 1001).
        bit_depth: bits per sample of the stored values.
        crf: x264 constant rate factor for lossy ``.mp4``/``.mkv`` (e.g. 10 to 18).
        full_range: full-range Y'CbCr for the 4:2:0 outputs.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        what = suffix or "a file without extension"
        raise VideoFormatError(f"{path}: cannot write {what}; use one of {', '.join(WRITE_SUFFIXES)}")
    chunks = _chunks(path, frames)
    first = next(chunks, None)
    if first is None:
        raise VideoFormatError(f"{path}: no frames to write")
    if not fps > 0:
        raise VideoFormatError(f"{path}: fps must be positive, got {fps}")
    _levels(bit_depth, full_range)
    plan = None
    if suffix in CONTAINER_SUFFIXES:
        plan = _encoder_plan(path, bit_depth, crf)
    elif crf is not None:
        raise VideoFormatError(f"{path}: crf applies to lossy .mp4/.mkv only; drop crf or change the extension")
    height, width = first.shape[-2:]
    if (plan is None or plan.pix_fmt.startswith("yuv")) and (height % 2 or width % 2):
        raise VideoFormatError(
            f"{path}: 4:2:0 needs even dimensions, got {width}x{height}; resize or crop to even sizes"
        )
    every = itertools.chain([first], chunks)
    with atomic_path(path, suffix=suffix) as tmp:
        if plan is None:
            _write_yuv(tmp, every, (width, height), fps, bit_depth, full_range, y4m=suffix == ".y4m")
        else:
            _write_container(tmp, every, (width, height), fps, bit_depth, full_range, plan)


def _chunks(path: Path, frames: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The frames to write as checked chunks of one size (a tensor is one chunk)."""
    size = None
    for chunk in [frames] if isinstance(frames, torch.Tensor) else frames:
        _check_rgb(chunk)
        if size is not None and chunk.shape[-2:] != size:
            raise VideoFormatError(f"{path}: frames of {tuple(chunk.shape[-2:])} after frames of {tuple(size)}")
        size = chunk.shape[-2:]
        yield chunk


def _frames_of(chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Single frames (1, 3, H, W) of a sequence of chunks: one at a time bounds memory for long 1080p clips."""
    for chunk in chunks:
        for i in range(chunk.shape[0]):
            yield chunk[i : i + 1]


def _write_yuv(
    tmp: Path, chunks: Iterable[torch.Tensor], size: tuple[int, int], fps: float, bit_depth: int, full_range: bool,
    *, y4m: bool,
) -> None:
    width, height = size
    with tmp.open("wb") as f:
        if y4m:
            rate = fps_fraction(fps)
            chroma = "C420jpeg" if bit_depth == 8 else f"C420p{bit_depth} XYSCSS=420P{bit_depth}"
            colour = "FULL" if full_range else "LIMITED"
            header = (
                f"YUV4MPEG2 W{width} H{height} F{rate.numerator}:{rate.denominator} Ip A1:1 {chroma} "
                f"XCOLORRANGE={colour}\n"
            )
            f.write(header.encode("ascii"))
        for frame in _frames_of(chunks):
            planes = rgb_to_yuv420(frame.cpu(), bit_depth, full_range)
            if y4m:
                f.write(b"FRAME\n")
            for plane in planes:
                f.write(plane.tobytes())


def _write_container(
    tmp: Path, chunks: Iterable[torch.Tensor], size: tuple[int, int], fps: float, bit_depth: int, full_range: bool,
    plan: _EncoderPlan,
) -> None:
    rate = fps_fraction(fps)
    width, height = size
    peak = (1 << bit_depth) - 1
    dtype = _sample_dtype(bit_depth)
    range_code = 2 if full_range else 1  # FFmpeg AVColorRange: 1 MPEG (limited), 2 JPEG (full)
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream(plan.codec, rate=rate, options=plan.options)
        stream.width, stream.height, stream.pix_fmt = width, height, plan.pix_fmt
        if plan.codec == "libx264":  # tag the VUI so decoders pick our matrix and range
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1  # BT.709
            ctx.color_range = range_code
        for i, frame_rgb in enumerate(_frames_of(chunks)):
            rgb = frame_rgb.detach().cpu().float().clamp(0.0, 1.0)
            if plan.frame_format.startswith("yuv"):
                frame = av.VideoFrame(width, height, plan.frame_format)
                for plane, values in zip(frame.planes, rgb_to_yuv420(rgb, bit_depth, full_range)):
                    _plane_array(plane, dtype)[...] = values[0]
                frame.color_range = range_code
            else:
                values = rgb_levels(rgb[0], peak).permute(1, 2, 0).numpy().astype(dtype)
                frame = av.VideoFrame.from_ndarray(values, format=plan.frame_format)
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)

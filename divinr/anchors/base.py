"""The contract every reference codec (anchor) follows, and the raw input they all share.

Anchors are external programs (FFmpeg with x265 or VVenC, the VTM apps). Each one is a small
class that builds command lines, runs them and measures the result; nothing about rate or
quality is taken from the programs' own logs::

    frames (T,3,H,W) in [0,1] --write_raw_rgb--> input.rgb (rgb24, written once)
        --codec.encode--> elementary stream (.hevc / .266 / .bin)  -> bits = file size * 8
        --codec.decode--> decoded rgb24 file -> (T,3,H,W) in [0,1] for the metrics

Every codec reads the same 8-bit RGB file, so all of them (and divinr) are scored against
identical input; colour conversion to the codec's YUV format happens inside the codec's own
command line and is undone with the same matrix on decode.

The rgb24 file is often a temporary one, so a point's recorded commands begin, when the file's
:class:`VideoSource` is known, with the command that rebuilds it from the source video: the
record then reruns as it stands.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shlex
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from divinr.data.video import Video, read_video, rgb_levels
from divinr.errors import BitstreamError, DivinrError, VideoFormatError
from divinr.rate import pixel_count


class AnchorError(DivinrError):
    """A reference codec failed to run, or imported anchor data are invalid."""


class MissingToolError(AnchorError):
    """A program a reference codec needs is not installed or lacks the required codec."""


@dataclass(frozen=True)
class VideoSource:
    """A video file and the :func:`divinr.data.video.read_video` arguments that give a codec's frames.

    The frames an anchor is scored on come from divinr's reader (BT.709 at the file's range,
    antialiased resize), which no ffmpeg command line reproduces sample for sample; so the
    command recorded for the rgb24 input runs that reader (:meth:`command`).

    Attributes:
        path: the video file (made absolute).
        read_kwargs: keyword arguments of ``read_video``, plain literals (ints, floats, bools,
            strings, tuples, None) so the recorded command can spell them.
    """

    path: Path
    read_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).resolve())
        try:
            inspect.signature(read_video).bind(self.path, **self.read_kwargs)
        except TypeError as exc:
            raise VideoFormatError(
                f"read arguments {self.read_kwargs!r} do not fit read_video ({exc}); pass only its keyword arguments"
            ) from None
        for key, value in self.read_kwargs.items():
            try:
                literal = ast.literal_eval(repr(value)) == value
            except (ValueError, SyntaxError):
                literal = False
            if not literal:
                raise VideoFormatError(
                    f"read argument {key}={value!r} cannot be written into a command; pass a plain literal"
                )

    def read(self) -> Video:
        """Read the frames exactly as :meth:`command` will."""
        return read_video(self.path, **self.read_kwargs)

    def command(self, out: Path) -> str:
        """The shell command that writes these frames as the rgb24 file ``out``."""
        # JSON strings are Python literals too, and their double quotes need no shell escaping.
        args = ", ".join([json.dumps(str(self.path)), *(f"{k}={v!r}" for k, v in self.read_kwargs.items())])
        # The input's folder is temporary: the command recreates it.
        code = (
            "import pathlib; from divinr.anchors import write_raw_rgb; from divinr.data.video import read_video; "
            f"out = pathlib.Path({json.dumps(str(out))}); out.parent.mkdir(parents=True, exist_ok=True); "
            f"write_raw_rgb(read_video({args}).frames, out)"
        )
        return shlex.join(["python", "-c", code])


@dataclass(frozen=True)
class RawVideo:
    """An rgb24 file (frame after frame, row-major, interleaved RGB) that every codec reads.

    Attributes:
        path: the file.
        num_frames: number of frames in it.
        width: frame width in pixels.
        height: frame height in pixels.
        source: the video the frames were read from, when known; its command is recorded
            before a point's codec commands.
    """

    path: Path
    num_frames: int
    width: int
    height: int
    source: VideoSource | None = None

    @property
    def num_pixels(self) -> int:
        """Pixels over all frames, the denominator of bits per pixel."""
        return pixel_count(self.num_frames, self.width, self.height)


def write_raw_rgb(frames: torch.Tensor, path: Path, source: VideoSource | None = None) -> RawVideo:
    """Quantise frames to 8 bits and write them as one rgb24 file.

    Args:
        frames: (T, 3, H, W) float tensor with values in [0, 1].
        path: where to write.
        source: where ``frames`` were read from (``source.read().frames``); pass it when
            the file is temporary, so every point coded from it records how to rebuild it.

    Returns:
        The file's description; read it back with :func:`read_raw_rgb` to get the exact
        8-bit reference the decoded frames should be compared with.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise VideoFormatError(
            f"frames must be a float tensor of shape (T, 3, H, W), got {frames.dtype} "
            f"{tuple(frames.shape)}; convert the video to RGB floats in [0, 1]"
        )
    lo, hi = float(frames.min()), float(frames.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise VideoFormatError(
            f"frame values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; clamp or rescale them"
        )
    t, _, h, w = frames.shape
    pixels = rgb_levels(frames.detach().cpu()).to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels.permute(0, 2, 3, 1).contiguous().numpy().tofile(path)
    return RawVideo(path=path, num_frames=t, width=w, height=h, source=source)


def check_raw_size(path: Path, num_frames: int, width: int, height: int) -> None:
    """Raise :class:`BitstreamError` unless ``path`` holds exactly that many rgb24 frames."""
    expected = num_frames * width * height * 3
    size = os.path.getsize(path)
    if size != expected:
        # A decoder that drops or duplicates frames must not be scored as if it had not.
        raise BitstreamError(
            f"{path} holds {size} bytes, expected {expected} for {num_frames} frames of "
            f"{width}x{height} rgb24; the decoder dropped or added frames"
        )


def read_raw_rgb_levels(path: Path, num_frames: int, width: int, height: int) -> torch.Tensor:
    """Read an rgb24 file back as (T, 3, H, W) uint8, after checking its size (a quarter of
    the float copy's memory, which matters for 600-frame sequences).

    Args:
        path: the rgb24 file.
        num_frames, width, height: its expected geometry.

    Returns:
        The frames.
    """
    check_raw_size(path, num_frames, width, height)
    data = np.fromfile(path, dtype=np.uint8).reshape(num_frames, height, width, 3)
    return torch.from_numpy(data).permute(0, 3, 1, 2)


def read_raw_rgb(path: Path, num_frames: int, width: int, height: int) -> torch.Tensor:
    """Read an rgb24 file back as (T, 3, H, W) floats in [0, 1]."""
    return read_raw_rgb_levels(path, num_frames, width, height).float().div_(255.0)


@dataclass
class RDPoint:
    """One rate-distortion point of a reference codec (metrics are computed elsewhere).

    Attributes:
        codec: the codec's registry name (``"x265"``, ``"vvenc"``, ``"vtm"``).
        label: an honest description, e.g. ``"HEVC (x265 3.5, veryslow, 4:4:4, GoP 16)"``.
        param: the rate parameter of this point, e.g. ``{"qp": 37}``.
        bits: size of the elementary stream in bits (file size * 8, no container).
        bpp: ``bits / (num_frames * width * height)``.
        num_frames, width, height: the coded video's geometry.
        commands: the exact command lines, in order: the one that rebuilds the rgb24 input
            from its source video (when :attr:`RawVideo.source` is known), then those run.
        encode_seconds: wall time of the encode command(s), colour conversion included.
        decode_seconds: wall time of the decode command(s), colour conversion included.
        bitstream_path: the elementary stream.
        decoded_path: the decoded rgb24 file (kept so long videos can be scored frame by frame).
        decoded: the decoded frames (T, 3, H, W) in [0, 1], or None when not loaded.
    """

    codec: str
    label: str
    param: dict[str, Any]
    bits: int
    bpp: float
    num_frames: int
    width: int
    height: int
    commands: list[str]
    encode_seconds: float
    decode_seconds: float
    bitstream_path: str
    decoded_path: str
    decoded: torch.Tensor | None = field(default=None, repr=False)

    def load_decoded(self) -> torch.Tensor:
        """Read the decoded frames from :attr:`decoded_path`."""
        return read_raw_rgb(Path(self.decoded_path), self.num_frames, self.width, self.height)

    def to_record(self) -> dict[str, Any]:
        """Everything but the decoded frames, as plain JSON-serialisable values."""
        record = asdict(self)
        record.pop("decoded")
        return record


def run_command(argv: list[str], tool: str) -> float:
    """Run one external program and return its wall time in seconds.

    Args:
        argv: the command line.
        tool: a short name for error messages (``"ffmpeg"``, ``"EncoderApp"``).

    Returns:
        Elapsed seconds.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise MissingToolError(f"cannot start {tool} ({argv[0]}): {exc.strerror}; check the path") from exc
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        raise AnchorError(f"{tool} exited with status {proc.returncode}: {last} (command: {shlex.join(argv)})")
    return elapsed


def param_tag(param: dict[str, Any]) -> str:
    """A file-name-safe tag for a rate parameter, e.g. ``{"qp": 37}`` -> ``"qp37"``."""
    return "_".join(f"{key}{value}" for key, value in sorted(param.items()))


class ReferenceCodec(ABC):
    """A conventional codec run as external programs to produce anchor RD points.

    Subclasses build the command lines in :meth:`_encode` and :meth:`_decode`; this class
    owns the shared parts: writing the input once, measuring the stream size, timing and
    reading the decoded frames back.
    """

    name: ClassVar[str]
    bitstream_suffix: ClassVar[str]

    @abstractmethod
    def label(self) -> str:
        """An honest one-line description of codec, version and configuration."""

    @abstractmethod
    def default_params(self) -> list[dict[str, Any]]:
        """The default rate sweep, from the lowest rate to the highest."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`MissingToolError` naming what is missing and how to install it."""

    def available(self) -> bool:
        """Whether :meth:`check` passes."""
        try:
            self.check()
        except MissingToolError:
            return False
        return True

    @abstractmethod
    def validate_param(self, param: dict[str, Any]) -> None:
        """Raise :class:`divinr.errors.PresetError` if ``param`` is not a valid rate point."""

    @abstractmethod
    def _encode(self, raw: RawVideo, fps: float, param: dict[str, Any], bitstream: Path) -> list[list[str]]:
        """The command lines that turn ``raw`` into ``bitstream``."""

    @abstractmethod
    def _decode(self, raw: RawVideo, bitstream: Path, decoded: Path) -> list[list[str]]:
        """The command lines that turn ``bitstream`` into the rgb24 file ``decoded``."""

    def scratch_files(self, bitstream: Path) -> list[Path]:
        """Intermediate files of one point (e.g. raw YUV for the VTM apps), deleted once decoded or failed.

        At 600 frames of 1024x576 each is about 1 GB, so a sweep must not keep them.
        """
        return []

    def decode(self, raw: RawVideo, bitstream: Path, decoded: Path) -> tuple[float, list[list[str]]]:
        """Decode one stream to an rgb24 file with ``raw``'s geometry (also to re-score a point later).

        Args:
            raw: the input the stream was coded from (its geometry; the file is not read).
            bitstream: the stream.
            decoded: where the rgb24 frames go.

        Returns:
            (seconds the decode commands took, the commands).

        Raises:
            AnchorError: a command failed.
            BitstreamError: the decoded file has the wrong size (checked even
                when the frames are not loaded: a wrong frame count must fail here, not in the
                metrics).
        """
        commands = self._decode(raw, bitstream, decoded)
        try:
            seconds = sum(run_command(cmd, Path(cmd[0]).name) for cmd in commands)
        finally:
            self._remove_scratch(bitstream)
        check_raw_size(decoded, raw.num_frames, raw.width, raw.height)
        return seconds, commands

    def _remove_scratch(self, bitstream: Path) -> None:
        for scratch in self.scratch_files(bitstream):
            scratch.unlink(missing_ok=True)

    def encode_decode(
        self,
        frames: torch.Tensor | RawVideo,
        fps: float,
        param: dict[str, Any],
        workdir: Path,
        keep_decoded: bool = True,
    ) -> RDPoint:
        """Encode and decode one rate point.

        Args:
            frames: (T, 3, H, W) floats in [0, 1], or an rgb24 file already written with
                :func:`write_raw_rgb` (pass that when sweeping so the input is written once).
            fps: frame rate (only signalled in the stream; the rate is set by ``param``).
            param: the rate point, e.g. ``{"qp": 37}``.
            workdir: where the stream and the decoded file go.
            keep_decoded: load the decoded frames into :attr:`RDPoint.decoded`.

        Returns:
            The measured point.
        """
        self.validate_param(param)
        self.check()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        raw = frames if isinstance(frames, RawVideo) else write_raw_rgb(frames, workdir / "input.rgb")
        stem = f"{self.name}_{param_tag(param)}"
        bitstream = workdir / f"{stem}{self.bitstream_suffix}"
        decoded = workdir / f"{stem}_decoded.rgb"
        encode_cmds = self._encode(raw, fps, param, bitstream)
        try:
            encode_seconds = sum(run_command(cmd, Path(cmd[0]).name) for cmd in encode_cmds)
        except BaseException:
            self._remove_scratch(bitstream)
            raise
        if not bitstream.is_file() or bitstream.stat().st_size == 0:
            self._remove_scratch(bitstream)
            # Some encoders exit 0 yet write nothing (libvvenc at some low QPs): not a rate point.
            raise AnchorError(f"{self.name} wrote an empty bitstream for {param}; this rate point is not usable")
        decode_seconds, decode_cmds = self.decode(raw, bitstream, decoded)
        bits = os.path.getsize(bitstream) * 8
        rebuild = [] if raw.source is None else [raw.source.command(raw.path)]
        point = RDPoint(
            codec=self.name,
            label=self.label(),
            param=dict(param),
            bits=bits,
            bpp=bits / raw.num_pixels,
            num_frames=raw.num_frames,
            width=raw.width,
            height=raw.height,
            commands=[*rebuild, *(shlex.join(cmd) for cmd in encode_cmds + decode_cmds)],
            encode_seconds=encode_seconds,
            decode_seconds=decode_seconds,
            bitstream_path=str(bitstream),
            decoded_path=str(decoded),
        )
        if keep_decoded:
            point.decoded = point.load_decoded()
        return point

    def sweep(
        self,
        frames: torch.Tensor | RawVideo,
        fps: float,
        workdir: Path,
        params: list[dict[str, Any]] | None = None,
        keep_decoded: bool = True,
    ) -> list[RDPoint]:
        """Run a rate sweep (default: :meth:`default_params`) on one video.

        Args:
            frames: as in :meth:`encode_decode`; a tensor is written to disk once.
            fps: frame rate.
            workdir: where every point's files go.
            params: the rate points; None for the default sweep.
            keep_decoded: load decoded frames into each point.

        Returns:
            One point per parameter, in the order given.
        """
        params = self.default_params() if params is None else params
        for param in params:
            self.validate_param(param)
        workdir = Path(workdir)
        raw = frames if isinstance(frames, RawVideo) else write_raw_rgb(frames, workdir / "input.rgb")
        return [self.encode_decode(raw, fps, p, workdir, keep_decoded=keep_decoded) for p in params]

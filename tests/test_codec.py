"""DiV-INR as a codec: bitstream round trip across processes, rate accounting, hostile files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divinr.cli import main, stream_info
from divinr.compression.bitstream import FORMAT_VERSION, SCHEMA_V4, SCHEMAS, decode_tensors, unpack
from divinr.compression.container import read_container, write_container
from divinr.data.samples import sample_clip_path
from divinr.errors import BitstreamError
from divinr.inference.decoder import build_inr_from_stream
from divinr.models.nola import NOLAConfig

ENCODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from divinr.codec import DiVINRCodec, load_clip
    from divinr.data.samples import sample_clip_path
    from divinr.training.encoder import EncoderConfig
    from divinr.inference.sampler import SamplerConfig
    from divinr.models.nola import NOLAConfig
    from divinr.training.stages import paper_phases
    video = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=9)
    config = EncoderConfig(inr="xxs", phases=paper_phases(2, 1, 1), nola=NOLAConfig(rank=8, num_bases=16),
                           sampler=SamplerConfig(steps=3, noise_seed=7), gop_size=5, device="cpu")
    result = DiVINRCodec(config, progress=False).encode(video, reconstruct=True)
    open(sys.argv[1], "wb").write(result.data)
    torch.save({"frames": result.reconstruction.frames, "latents": result.reconstruction.latents}, sys.argv[2])
    """
)
DECODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from divinr.codec import decompress
    decoded = decompress(open(sys.argv[1], "rb").read(), device="cpu", progress=False)
    torch.save({"frames": decoded.frames, "latents": decoded.latents}, sys.argv[2])
    """
)


def run_python(code: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, timeout=300, capture_output=True)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A real tiny-backbone bitstream of 9 frames (two GoPs: 5 + 4 padded to 5) and the encoder's output."""
    root = tmp_path_factory.mktemp("codec")
    stream, recon = root / "clip.dvr", root / "encoder.pt"
    run_python(ENCODE, str(stream), str(recon))
    return stream, torch.load(recon, weights_only=True)


def test_decoder_in_another_process_matches_the_encoder_bit_exactly(encoded, tmp_path: Path) -> None:
    stream, encoder = encoded
    out = tmp_path / "decoder.pt"
    run_python(DECODE, str(stream), str(out))
    decoder = torch.load(out, weights_only=True)
    assert encoder["frames"].shape == (9, 3, 64, 64)
    assert len(decoder["latents"]) == len(encoder["latents"]) == 2
    for a, b in zip(encoder["latents"], decoder["latents"]):
        assert torch.equal(a, b)
    assert torch.equal(encoder["frames"], decoder["frames"])


def test_info_json_reports_real_file_rate(encoded, capsys: pytest.CaptureFixture) -> None:
    stream, _ = encoded
    assert main(["info", str(stream), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    size = stream.stat().st_size
    assert info["bpp"] == size * 8 / (info["frames"] * info["width"] * info["height"])
    assert (info["frames"], info["width"], info["height"]) == (9, 64, 64)
    bits = info["bits"]
    assert bits["inr"] + bits["adapter"] + bits["header"] == bits["total"] == 8 * size
    assert bits["inr"] > 0 and bits["adapter"] > 0 and bits["header"] > 0
    assert info["nola"]["num_bases"] == 16 and info["sampler"]["steps"] == 3


def test_every_inr_and_nola_tensor_is_in_the_stream(encoded) -> None:
    stream = unpack(encoded[0].read_bytes())
    inr = build_inr_from_stream(stream)
    assert len(inr.state_dict()) > 10
    # 7 adapted layers of the tiny DiT x (alpha, beta) of 16 coefficients each
    assert stream.header.nola == NOLAConfig(rank=8, num_bases=16)
    expected = {f"l{i}": (16,) for i in range(2 * stream.header.nola_layers)}
    coefficients = decode_tensors(stream.adapter_section, expected, 6)
    assert all(len(torch.unique(c)) <= 64 for c in coefficients.values())


def rewrite(data: bytes, *, version: int = FORMAT_VERSION, **fields: object) -> bytes:
    """Re-emit a stream with changed header fields (valid CRC), as a different encoder would."""
    _, values, sections = read_container(data, SCHEMAS)
    values.update(fields)
    return write_container(SCHEMA_V4, values, sections, version=version)


def hostile_files(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    return {
        "corrupt": bytes(flipped),
        "truncated": data[: len(data) - 37],
        "wrong magic": b"RIFF" + data[4:],
        "future version": rewrite(data, version=FORMAT_VERSION + 1),
        "wrong backbone": rewrite(data, backbone_fingerprint=bytes(16)),
        "unknown backbone": rewrite(data, backbone="wan9-huge"),
        "empty": b"",
    }


@pytest.mark.parametrize("case", ["corrupt", "truncated", "wrong magic", "future version", "wrong backbone", "unknown backbone", "empty"])
def test_bad_streams_end_with_one_error_line_and_status_2(encoded, case: str, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.dvr"
    bad.write_bytes(hostile_files(encoded[0].read_bytes())[case])
    assert main(["decode", str(bad), "-o", str(tmp_path / "out.y4m"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("divinr: error: "), err
    assert not (tmp_path / "out.y4m").exists()


def test_cli_process_exit_status_for_a_future_version(encoded, tmp_path: Path) -> None:
    bad = tmp_path / "future.dvr"
    bad.write_bytes(hostile_files(encoded[0].read_bytes())["future version"])
    proc = subprocess.run([sys.executable, "-m", "divinr", "info", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "newer divinr" in proc.stderr
    assert "Traceback" not in proc.stderr


def parse_fully(data: bytes) -> None:
    """Everything the decoder does with the file before it touches the backbone."""
    stream = unpack(data)
    stream_info(data)
    inr = build_inr_from_stream(stream)
    assert inr is not None
    expected = {f"c{i}": (stream.header.nola.num_bases,) for i in range(2 * stream.header.nola_layers)}
    if stream.adapter_section:
        decode_tensors(stream.adapter_section, expected, stream.header.quant_bits)


def with_valid_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_streams_only_ever_raise_bitstream_error(encoded, data: st.DataObject) -> None:
    original = encoded[0].read_bytes()
    body = bytearray(original[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and body:
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[pos:]
        elif op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del body[pos : pos + data.draw(st.integers(1, 16))]
    # Half the files get a fresh CRC so the mutation reaches the header and tensor parsers.
    mutated = with_valid_crc(bytes(body)) if data.draw(st.booleans()) else bytes(body) + original[-4:]
    try:
        parse_fully(mutated)
    except BitstreamError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "bogus"], "unknown device"),
        (["--device", "cuda:7"], "not available"),
        (["--seed", str(2**32)], "seed"),
        (["--recon", "out.avi"], "unsupported extension"),
        (["-o", "/proc/forbidden/x.dvr"], "cannot write"),
        (["-o", "x.mp4"], "unsupported extension"),
        (["-o", "folder.dvr"], "bitstream folder.dvr is a folder"),
        (["-o", "afile/x.dvr"], "afile is a file, not a folder"),
        (["--recon", "folder.y4m"], "reconstruction folder.y4m is a folder"),
        (["--workdir", "afile/work"], "--workdir afile/work"),
        (["--frames", "0"], "--frames 0: expected a number of frames >= 1"),
        (["--start", "-1"], "--start -1"),
        (["--steps", "0"], "--steps 0"),
        (["--gop", "4"], "--gop 4: expected 1 + 4k frames"),
        (["--nola-bases", "5000"], "--nola-bases 5000: expected 0..1024"),
        (["--adapter", "dora"], "--adapter dora: expected one of nola, lora, vera"),
        (["--adapter", "lora", "--adapter-rank", "0"], "--adapter-rank 0: expected a lora rank in 1..256"),
        (["--adapter-rank", "200"], "--adapter-rank 200: expected a nola rank in 1..128"),
        (["--bit-depth", "9"], "--bit-depth 9"),
        (["--fps", "nan"], "--fps nan"),
        (["--fps", "-25"], "--fps -25.0"),
        (["--conditioning", "png"], "--conditioning png: expected inr or jpeg"),
        (["--keyframe-quality", "0"], "--keyframe-quality 0: expected a JPEG quality in 1..100"),
        (["--conditioning", "jpeg", "--nola-bases", "0"], "trains nothing (there is no INR)"),
    ],
)
def test_encode_refuses_bad_settings_before_any_work(argv, message, tmp_path: Path, capsys, monkeypatch) -> None:
    import divinr.codec.divinr

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.dvr").mkdir()
    (tmp_path / "folder.y4m").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setattr(divinr.codec.divinr, "load_backbone", lambda *a, **k: pytest.fail("training started"))
    clip = str(sample_clip_path("bikes"))
    args = ["encode", clip, "-o", "x.dvr", "--frames", "5", "--resolution", "64x64", *argv]
    if "-o" in argv:
        args = ["encode", clip, "--frames", "5", "--resolution", "64x64", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_encode_needs_a_dense_epoch(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["encode", str(sample_clip_path("bikes")), "-o", "x.dvr", "--epochs", "0,0,0"])
    assert exit_.value.code == 2 and "DENSE >= 1" in capsys.readouterr().err


def test_a_failed_encode_removes_the_folders_it_created(tmp_path: Path, capsys, monkeypatch) -> None:
    import divinr.codec.divinr
    from divinr.errors import MissingWeightsError

    def missing(*args, **kwargs):
        raise MissingWeightsError("no weights here")

    monkeypatch.setattr(divinr.codec.divinr, "load_backbone", missing)
    (tmp_path / "kept").mkdir()
    argv = ["encode", str(sample_clip_path("bikes")), "-o", str(tmp_path / "new" / "deep" / "x.dvr"),
            "--recon", str(tmp_path / "kept" / "r" / "x.y4m"), "--workdir", str(tmp_path / "work" / "a"),
            "--frames", "5", "--resolution", "64x64"]
    assert main(argv) == 2
    assert "no weights here" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_decode_refuses_a_bad_output_before_decoding(encoded, tmp_path: Path, capsys, monkeypatch) -> None:
    import divinr.codec.divinr

    monkeypatch.setattr(divinr.codec.divinr, "load_backbone", lambda *a, **k: pytest.fail("decoding started"))
    assert main(["decode", str(encoded[0]), "-o", str(tmp_path / "x.avi")]) == 2
    assert "unsupported extension" in capsys.readouterr().err


def test_inr_only_decoding_is_the_vae_decode_of_the_streams_conditioning(encoded) -> None:
    from divinr.data.gop import latent_coordinates, plan_gops
    from divinr.inference.decoder import render_conditioning
    from divinr.models.backbone import load_backbone

    stream = unpack(encoded[0].read_bytes())
    backbone = load_backbone("tiny")
    decoded = render_conditioning(backbone, stream)
    inr = build_inr_from_stream(stream)
    spans = plan_gops(stream.header.frames, stream.header.gop_size)
    assert decoded.frames.shape == (9, 3, 64, 64) and len(decoded.latents) == len(spans) == 2
    for span, f, y in zip(spans, latent_coordinates(spans), decoded.latents):
        with torch.no_grad():
            expected = inr(f).y.permute(1, 0, 2, 3)  # (16, T', h, w), the INR's own output
            frames = backbone.decode(expected)[: span.num_real]
        assert torch.equal(y, expected)
        assert torch.equal(decoded.frames[span.start : span.start + span.num_real], frames)
    # The diffusion decoder gives something else from the same bits.
    assert not torch.equal(decoded.frames, encoded[1]["frames"])


def _write_yuv420(path: Path, frames: int, width: int, height: int, extra: int = 0) -> None:
    rng = torch.Generator().manual_seed(0)
    size = frames * width * height * 3 // 2 + extra
    path.write_bytes(torch.randint(16, 236, (size,), generator=rng, dtype=torch.uint8).numpy().tobytes())


def test_raw_yuv_input_encodes(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip.yuv"
    _write_yuv420(clip, 5, 96, 80)
    argv = ["encode", str(clip), "-o", str(tmp_path / "x.dvr"), "--input-size", "96x80", "--resolution", "64x64",
            "--backbone", "tiny", "--epochs", "1,0,0", "--steps", "1", "--nola-bases", "0", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    info = stream_info((tmp_path / "x.dvr").read_bytes())
    assert (info["frames"], info["width"], info["height"]) == (5, 64, 64)


def test_raw_yuv_of_a_partial_frame_is_a_clear_error(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip.yuv"
    _write_yuv420(clip, 5, 64, 48, extra=100)
    argv = ["encode", str(clip), "-o", str(tmp_path / "x.dvr"), "--input-size", "64x48", "--resolution", "64x48"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a whole number of 64x48" in err[0], err


def test_outputs_never_replace_an_input(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(sample_clip_path("bikes").read_bytes())
    before = clip.read_bytes()
    assert main(["encode", str(clip), "-o", str(tmp_path / "x.dvr"), "--recon", str(tmp_path / "." / "clip.mp4")]) == 2
    assert "would be overwritten" in capsys.readouterr().err and clip.read_bytes() == before
    stream = tmp_path / "s.y4m"
    stream.write_bytes(b"DVNR not really")
    assert main(["decode", str(stream), "-o", str(stream)]) == 2
    assert "would be overwritten" in capsys.readouterr().err and stream.read_bytes() == b"DVNR not really"

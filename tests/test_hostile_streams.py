"""Hostile bitstreams: every header field pushed to extreme and non-finite values, CRC repaired.

Each stream goes through the command line (``divinr info`` and ``divinr decode``, in process)
and must end with exit status 2 and one error line, quickly and without allocating much:
nothing a 40 kB file declares may make the decoder reserve gigabytes or run for minutes.
"""

from __future__ import annotations

import io
import json
import math
import re
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from divinr.cli import main
from divinr.compression.bitstream import (
    MAX_FRAMES,
    MAX_GOP,
    FORMAT_VERSION,
    SCHEMA_V4,
    SCHEMAS,
    CodecKind,
    MaskMode,
    StreamHeader,
    pack,
    unpack,
)
from divinr.compression.container import FieldKind, read_container, write_container
from divinr.codec import decompress
from divinr.errors import DivinrError
from divinr.inference.decoder import check_capacity, check_decode_memory, decoded_video_bytes, memory_budget
from divinr.inference.sampler import SamplerConfig
from divinr.models.inr import INRConfig, LatentINR
from divinr.models.nola import NOLAConfig

INR = INRConfig(channels=8, stage_channels=(8,), strides=(2,), blocks=(1,), grid_frames=2, grid_channels=4)
HEADER = StreamHeader(
    kind=CodecKind.DIVINR,
    backbone="tiny",
    backbone_fingerprint=bytes(range(16)),
    frames=9,
    width=64,
    height=64,
    fps=Fraction(25),
    gop_size=5,
    inr=INR,
    mask_mode=MaskMode.LEARNED,
    quant_bits=6,
    nola=NOLAConfig(rank=8, num_bases=16),
    nola_layers=2,
    sampler=SamplerConfig(steps=3),
)
# Generous ceilings for refusing one stream; a decoder that starts on the declared work
# (10^6 frames, 8192x8192, 65,535 steps) exceeds them by orders of magnitude. Wall time is
# bounded loosely (shared CI machines stall), CPU time tightly.
MAX_SECONDS = 30.0
MAX_CPU_SECONDS = 2.0
MAX_TRACED_BYTES = 32 << 20
MAX_RSS_GROWTH_BYTES = 256 << 20

# (field, hostile value): one or more per header field. Each must be refused from the header.
HOSTILE = [
    ("kind", 7),
    ("backbone", "tiny\nsecond line"),
    ("backbone", ""),
    ("backbone_fingerprint", bytes(4096)),
    ("backbone_fingerprint", b""),
    ("dit_dtype", 255),
    ("frames", 0),
    ("frames", 1_000_000),
    ("frames", 2**32 - 1),
    ("width", 0),
    ("width", 8208),
    ("width", 65535),
    ("width", 72),
    ("height", 0),
    ("height", 8208),
    ("height", 65520),
    ("display_width", 0),
    ("display_width", 65535),
    ("display_width", 65),  # wider than the coded frame
    ("display_height", 48),  # a whole block of padding
    ("fps_num", 0),
    ("fps_num", 2**32 - 1),
    ("fps_den", 0),
    ("fps_den", 2**32 - 1),
    ("fps_num", 1001 * 25),  # 1001 fps
    ("fps_den", 2**31 - 1),  # 1.2e-8 fps
    ("gop_size", 0),
    ("gop_size", 6),
    ("gop_size", MAX_GOP + 4),
    ("gop_size", 65533),
    ("inr_head", 255),
    ("inr_channels", 0),
    ("inr_channels", 65535),
    ("inr_stage_channels", ()),
    ("inr_stage_channels", (2**32 - 1,)),
    ("inr_stage_channels", (8,) * 64),
    ("inr_strides", (0,)),
    ("inr_strides", (2**32 - 1,)),
    ("inr_blocks", (2**32 - 1,)),
    ("inr_blocks", (1, 1)),
    ("inr_grid_frames", 1),
    ("inr_grid_frames", 65535),
    ("inr_grid_channels", 65535),
    ("inr_grid_levels", 255),
    ("inr_local_grid_frames", 65535),
    ("inr_local_grid_channels", 0),
    ("inr_expansion", 255),
    ("inr_out_channels", 255),
    ("inr_mask_channels", 0),
    ("mask_mode", 255),
    ("quant_bits", 0),
    ("quant_bits", 255),
    ("nola_bases", 65535),
    ("nola_rank", 0),
    ("nola_rank", 65535),
    ("nola_variance", 0.0),
    ("nola_variance", -1.0),
    ("nola_variance", 3e38),
    ("nola_scaling", -1.0),
    ("nola_scaling", 3e38),
    ("nola_targets", 255),
    ("nola_layers", 65535),
    ("sampler_steps", 0),
    ("sampler_steps", 65535),
    ("sampler_flow_shift", 0.0),
    ("sampler_flow_shift", -3.0),
    ("sampler_flow_shift", 3e38),
    ("sampler_order", 0),
    ("sampler_order", 255),
    ("conditioning", 2),
    ("adapter", 255),
    ("lora_rank", 0),
    ("lora_rank", 65535),
    ("lora_alpha", 0.0),
    ("lora_alpha", -1.0),
    ("lora_alpha", 3e38),
    ("vera_rank", 0),
    ("vera_rank", 65535),
    ("granularity", 2),
    ("nola_scope", 2),
    ("nola_scope", 1),  # per-GoP adapters in a stream of one INR for the sequence
]
NON_FINITE = [
    (name, value)
    for name in ("nola_variance", "nola_scaling", "sampler_flow_shift", "lora_alpha")
    for value in ("nan", "inf", "-inf")
]
# Fields whose every value is meaningful: extremes must still give a valid, strict-JSON header.
ANY_VALUE = [("nola_seed", 2**32 - 1), ("sampler_noise_seed", 2**32 - 1), ("vera_seed", 2**32 - 1)]
ANY_VALUE_FIELDS = {name for name, _ in ANY_VALUE}


@pytest.fixture(scope="module")
def base() -> bytes:
    """A small, well-formed DiV-INR stream (random INR weights, zero NOLA coefficients)."""
    torch.manual_seed(0)
    inr = LatentINR(INR, HEADER.latent_size).state_dict()
    nola = {f"c{i}": torch.zeros(16) for i in range(2 * HEADER.nola_layers)}
    data = pack(HEADER, inr, nola)
    import divinr.codec  # noqa: F401  (the decode command's imports, paid once, outside the timed runs)

    return data


def rewrite(data: bytes, **fields: object) -> bytes:
    """Re-emit ``data`` with changed header fields and a valid CRC, bypassing the encoder's checks."""
    _, values, sections = read_container(data, SCHEMAS)
    values.update(fields)
    return write_container(SCHEMA_V4, values, sections, version=FORMAT_VERSION)


def geometry(width: int, height: int) -> dict[str, int]:
    """Header fields of an unpadded ``width`` x ``height`` video (display size = coded size)."""
    return {"width": width, "height": height, "display_width": width, "display_height": height}


def patch_float(data: bytes, name: str, value: float) -> bytes:
    """Set an F32 header field to any float (NaN and infinities too) and repair the CRC32.

    The container refuses to write non-finite values, so the field is first written as a
    sentinel and its bytes (kind tag + little-endian f32) are replaced in place.
    """
    sentinel = 1234.5
    marked = rewrite(data, **{name: sentinel})
    old = bytes([FieldKind.F32]) + struct.pack("<f", sentinel)
    assert marked.count(old) == 1
    body = marked[:-4].replace(old, bytes([FieldKind.F32]) + struct.pack("<f", value))
    return body + struct.pack("<I", zlib.crc32(body))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in process under time and memory bounds; returns (status, stdout, stderr)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        status = main(argv)
    finally:
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert elapsed < MAX_SECONDS and cpu < MAX_CPU_SECONDS, f"{argv[0]} took {elapsed:.1f} s ({cpu:.1f} s CPU)"
    assert traced < MAX_TRACED_BYTES, f"{argv[0]} traced a {traced / 2**20:.0f} MiB peak"
    assert grown < MAX_RSS_GROWTH_BYTES, f"{argv[0]} grew the resident set by {grown / 2**20:.0f} MiB"
    out, err = capsys.readouterr()
    return status, out, err


def assert_refused(data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture, pattern: str) -> None:
    stream, video = tmp_path / "hostile.dvr", tmp_path / "out.y4m"
    stream.write_bytes(data)
    for argv in (["info", str(stream)], ["info", str(stream), "--json"], ["decode", str(stream), "-o", str(video), "--device", "cpu"]):
        status, out, err = run_cli(argv, capsys)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("divinr: error: "), (argv, status, err)
        assert pattern in lines[0], lines[0]
        assert "Traceback" not in err and not out
    assert not video.exists()


def test_every_header_field_is_covered() -> None:
    covered = {name for name, _ in HOSTILE + NON_FINITE} | ANY_VALUE_FIELDS
    assert covered == {f.name for f in SCHEMA_V4}


def expected_message(name: str, value: object) -> str:
    """What the error line must name: the field, or the property of it that is wrong."""
    if name.startswith("backbone"):
        return "backbone"
    if name in ("fps_num", "fps_den") and 1 <= value < 2**31:  # type: ignore[operator]
        return "frame rate"
    if value == 72:
        return "multiple of 16"
    if isinstance(value, tuple) and (not value or len(value) > 1):
        return "stage widths/strides/blocks"
    return name


@pytest.mark.parametrize(("name", "value"), HOSTILE, ids=[f"{n}={str(v)[:12]!r}" for n, v in HOSTILE])
def test_extreme_header_values_are_refused(base: bytes, name: str, value: object, tmp_path: Path, capsys) -> None:
    assert_refused(rewrite(base, **{name: value}), tmp_path, capsys, expected_message(name, value))


@pytest.mark.parametrize(("name", "value"), NON_FINITE)
def test_non_finite_floats_are_refused(base: bytes, name: str, value: str, tmp_path: Path, capsys) -> None:
    data = patch_float(base, name, float(value))
    assert_refused(data, tmp_path, capsys, f"'{name}' is {float(value)}, not a finite number")


def test_fields_that_take_any_value_keep_a_valid_strict_json_header(base: bytes, tmp_path: Path, capsys) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"info --json printed {constant}, which is not JSON")

    for data in [base] + [rewrite(base, **{name: value}) for name, value in ANY_VALUE]:
        (tmp_path / "s.dvr").write_bytes(data)
        status, out, _ = run_cli(["info", str(tmp_path / "s.dvr"), "--json"], capsys)
        info = json.loads(out, parse_constant=refuse)
        assert status == 0 and (info["frames"], info["width"], info["inr"]["head"]) == (9, 64, "latent")


def test_random_bytes_with_a_valid_crc_are_corrupt_not_newer(tmp_path: Path, capsys) -> None:
    body = b"DVNR" + bytes(range(7, 250, 3)) * 40
    data = body + struct.pack("<I", zlib.crc32(body))
    assert_refused(data, tmp_path, capsys, "corrupt")
    assert "newer" not in capsys.readouterr().err


def test_a_video_over_the_memory_budget_is_refused_before_decoding(base: bytes, tmp_path: Path, capsys) -> None:
    """In memory (the Python API) the whole video counts; streaming to a file (divinr decode), one GoP."""
    big = rewrite(base, frames=MAX_FRAMES, **geometry(1024, 576))
    needed = decoded_video_bytes(unpack(big).header)
    assert needed > 100 * 2**30
    (tmp_path / "big.dvr").write_bytes(big)
    status, _, _ = run_cli(["info", str(tmp_path / "big.dvr")], capsys)  # a valid header: info shows it
    assert status == 0
    with pytest.raises(DivinrError, match=f"needs at least {needed:,} bytes") as err:
        decompress(big, device="cpu", progress=False)
    enough = float(re.search(r"--max-memory ([0-9.]+) \(GiB", str(err.value)).group(1))  # type: ignore[union-attr]
    assert needed <= enough * 2**30 < needed + 0.01 * 2**30
    huge_gop = rewrite(base, **geometry(8192, 8192), frames=25, gop_size=25)
    per_gop = decoded_video_bytes(unpack(huge_gop).header, held_frames=0)
    assert per_gop > 8 * 2**30
    (tmp_path / "gop.dvr").write_bytes(huge_gop)
    status, out, err = run_cli(["decode", str(tmp_path / "gop.dvr"), "-o", str(tmp_path / "o.y4m"), "--device", "cpu"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert f"needs at least {per_gop:,} bytes" in err and f"budget of {8 * 2**30:,} bytes" in err


def test_the_memory_budget_is_configurable(base: bytes, tmp_path: Path, capsys) -> None:
    (tmp_path / "s.dvr").write_bytes(base)
    status, _, err = run_cli(["decode", str(tmp_path / "s.dvr"), "-o", str(tmp_path / "o.y4m"), "--max-memory", "0.0001"], capsys)
    assert status == 2 and f"budget of {int(0.0001 * 2**30):,} bytes; raise it with --max-memory 0.01 (GiB" in err
    header = unpack(base).header
    check_decode_memory(header)  # 9 frames of 64x64 fit the default budget
    with memory_budget(decoded_video_bytes(header) - 1), pytest.raises(DivinrError, match="memory budget"):
        check_decode_memory(header)
    with pytest.raises(SystemExit):
        main(["decode", str(tmp_path / "s.dvr"), "-o", str(tmp_path / "o.y4m"), "--max-memory", "nan"])


def wan_like(positions: int) -> SimpleNamespace:
    config = SimpleNamespace(patch_size=(1, 2, 2), rope_max_seq_len=positions, in_channels=36, out_channels=16)
    return SimpleNamespace(transformer=SimpleNamespace(config=config))


def test_gops_and_widths_the_transformer_cannot_take_are_refused(base: bytes) -> None:
    header = unpack(base).header  # GoP 5 = 2 latent frames, 8x8 latents, y 16 + M 4
    check_capacity(wan_like(4), header)
    with pytest.raises(DivinrError, match="2 latent frames of 8x8 exceed"):
        check_capacity(wan_like(1), header)
    narrow = unpack(rewrite(base, inr_out_channels=8)).header
    with pytest.raises(DivinrError, match="conditioning has 8 \\+ 4 channels"):
        check_capacity(wan_like(4), narrow)


def test_an_encoder_cannot_plan_a_stream_the_decoder_refuses() -> None:
    from dataclasses import replace

    with pytest.raises(DivinrError, match="gop_size"):
        replace(HEADER, gop_size=MAX_GOP + 4).to_fields()
    with pytest.raises(DivinrError, match="sampler_flow_shift=nan"):
        replace(HEADER, sampler=SamplerConfig(flow_shift=math.nan)).to_fields()


def test_info_reads_the_header_without_diffusers_or_model_code(base: bytes, tmp_path: Path) -> None:
    (tmp_path / "s.dvr").write_bytes(base)
    code = (
        "import sys\n"
        "from divinr.compression.bitstream import bits_breakdown, read_header\n"
        f"data = open({str(tmp_path / 's.dvr')!r}, 'rb').read()\n"
        "read_header(data); bits_breakdown(data)\n"
        "light = sorted(m for m in ('torch', 'diffusers') if m in sys.modules)\n"
        "from divinr.cli import stream_info\n"
        "stream_info(data)\n"
        "heavy = sorted(m for m in ('diffusers', 'divinr.models.inr', 'divinr.inference.sampler') if m in sys.modules)\n"
        "print(light, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[] []"


class ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone away, as ``divinr info x.dvr | head -1`` leaves it."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_info_into_a_closed_pipe_exits_quietly(base: bytes, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "s.dvr").write_bytes(base)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["info", str(tmp_path / "s.dvr")]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # a fresh interpreter: seconds while the CLI module still imports torch
def test_info_into_a_closed_pipe_exits_quietly_in_a_process(base: bytes, tmp_path: Path) -> None:
    (tmp_path / "s.dvr").write_bytes(base)
    proc = subprocess.Popen(
        [sys.executable, "-m", "divinr", "info", str(tmp_path / "s.dvr"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before divinr writes, as with `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141
    assert err == ""


def test_stream_limits_are_the_encoders_nola_limits() -> None:
    """A stream the encoder can write is one the header check accepts, and no larger."""
    from divinr.compression import bitstream
    from divinr.models import nola

    assert (bitstream.MAX_NOLA_RANK, bitstream.MAX_NOLA_BASES) == (nola.MAX_RANK, nola.MAX_NUM_BASES)

"""Stream headers: each field declared once in an element table, and old streams read as before."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from divinr.cli import stream_info
from divinr.codec import decompress
from divinr.compression.bitstream import (
    DIVINR_V1,
    DIVINR_V2,
    DIVINR_V3,
    DIVINR_V4,
    HEADER_SCHEMAS,
    PIXEL_INR_V1,
    PIXEL_INR_V2,
    SCHEMAS,
    PixelINRHeader,
    StreamHeader,
    bits_breakdown,
    decode_tensors,
    pack,
    read_header,
    read_header_schema,
    unpack,
    writer_schema,
)
from divinr.compression.container import FieldKind, read_container, write_container
from divinr.compression.header import HeaderSchema
from divinr.errors import BitstreamError, PresetError
from divinr.inference.decoder import build_inr_from_stream
from divinr.models.inr import INRConfig, LatentINR

DATA = Path(__file__).parent / "data"
FIXTURES = ["divinr_v1", "pixel_inr_v1"]
# What a typed header's parts are made of: a dataclass config's fields, or a Fraction's two.
PARTS = {"fps": ("numerator", "denominator")}
PIXEL = PixelINRHeader(
    frames=5, width=48, height=32, fps=Fraction(25), quant_bits=7,
    inr=INRConfig(channels=8, stage_channels=(8, 6), strides=(2, 2), blocks=(1, 2), grid_frames=2, grid_channels=4, head="rgb"),
)  # fmt: skip


def fixture(name: str) -> tuple[bytes, dict[str, Any]]:
    return (DATA / f"{name}.dvr").read_bytes(), json.loads((DATA / f"{name}.json").read_text())


def tensors_sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(np.ascontiguousarray(t.detach().float().numpy()).tobytes())
    return digest.hexdigest()


def plain(value: object) -> object:
    """A header value as the fixture's JSON record holds it."""
    if isinstance(value, bytes):
        return value.hex()
    return list(value) if isinstance(value, tuple) else value


# -- format-v1 streams on disk ------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_a_v1_stream_reads_and_decodes_as_the_release_that_wrote_it(name: str) -> None:
    """tests/data/<name>.dvr and its record <name>.json were written by divinr at 4b83bca, the
    release before the element table, with that release's encoder and decoder (the record's
    ``recipe`` says how). The reader of today must make of those bytes exactly what it made: the
    same header values, the same dequantised tensors (bit for bit) and the same frames (pooled
    over 8x8 blocks, to 1e-5: summation order may differ between CPUs)."""
    data, record = fixture(name)
    assert len(data) == record["bytes"]
    assert {k: plain(v) for k, v in read_header(data).items()} == record["header"]
    stream = unpack(data)
    assert tensors_sha256(list(build_inr_from_stream(stream).state_dict().values())) == record["inr_tensors_sha256"]
    if stream.adapter_section:
        header = stream.header
        assert isinstance(header, StreamHeader)
        shapes = {f"c{i}": (header.nola.num_bases,) for i in range(2 * header.nola_layers)}
        nola = decode_tensors(stream.adapter_section, shapes, header.quant_bits)
        assert tensors_sha256(list(nola.values())) == record["nola_tensors_sha256"]
    decoded = decompress(data, device="cpu", progress=False)
    t, c, h, w = decoded.frames.shape
    assert [t, c, h, w] == record["decoded"]["shape"] and decoded.fps == record["decoded"]["fps"]
    pooled = decoded.frames.reshape(t, c, 4, h // 4, 4, w // 4).mean(dim=(3, 5), dtype=torch.float64).flatten()
    np.testing.assert_allclose(pooled.numpy(), record["decoded"]["pooled_4x4"], rtol=0, atol=1e-5)
    bits = bits_breakdown(data)
    assert bits["header"] + bits["inr"] + bits["adapter"] == bits["total"] == 8 * len(data)


def test_the_divinr_v1_header_re_serialises_byte_identically() -> None:
    """A v1 stream reads to a header displayed at its coded size, with NOLA and INR conditioning,
    which v1 writes back to the same bytes; DiV-INR headers are now written in v4: the display size
    after the coded size (v2), then the adapter family, the LoRA and VeRA settings (their defaults
    for NOLA) and the conditioning (the INR, as in every v1 stream) (v3), then the granularity and
    the adapter scope (the sequence, as in every stream before v4)."""
    data, _ = fixture("divinr_v1")
    version, values, sections = read_container(data, SCHEMAS)
    header = unpack(data).header
    assert isinstance(header, StreamHeader)
    assert (header.display_width, header.display_height) == (header.width, header.height)
    assert write_container(DIVINR_V1.elements, DIVINR_V1.to_fields(header), sections, version=version) == data
    assert DIVINR_V1.to_fields(header) == values
    assert writer_schema(StreamHeader) is DIVINR_V4 and header.adapter == "nola"
    assert header.to_fields() == {
        **values, "display_width": header.width, "display_height": header.height,
        "adapter": 0, "lora_rank": 1, "lora_alpha": 1.0, "vera_rank": 1, "vera_seed": 0, "conditioning": 0,
        "granularity": 0, "nola_scope": 0,
    }


def test_a_v1_pixel_stream_reads_as_a_pixel_header_without_its_placeholders() -> None:
    data, record = fixture("pixel_inr_v1")
    schema, values = read_header_schema(data)
    assert schema is PIXEL_INR_V1 and not schema.writable and len(values) == len(DIVINR_V1.elements)
    header = unpack(data).header
    assert isinstance(header, PixelINRHeader) and header.inr.head == "rgb"
    info = stream_info(data)
    assert (info["format_version"], info["kind"], info["frames"]) == (1, "pixel_inr", record["header"]["frames"])
    assert not {"backbone", "gop_size", "nola", "sampler"} & set(info)
    # Written again, it becomes a v2 stream that reads back to the same typed header.
    again = pack(header, build_inr_from_stream(unpack(data)).state_dict(), {})
    assert read_header_schema(again)[0] is PIXEL_INR_V2 and unpack(again).header == header
    assert bits_breakdown(again)["header"] < bits_breakdown(data)["header"]


# -- the element table --------------------------------------------------------------------------
def typed_paths(header_type: type) -> Counter[str]:
    """Every leaf attribute of a typed header: its own fields and its parts' fields, dotted."""
    parts = DIVINR_V1.parts()
    paths: Counter[str] = Counter()
    for f in dataclasses.fields(header_type):
        if f.name not in parts:
            paths[f.name] += 1
            continue
        part: Any = parts[f.name]
        names = PARTS.get(f.name) or tuple(g.name for g in dataclasses.fields(part))
        paths.update(f"{f.name}.{name}" for name in names)
    return paths


# INRConfig fields that only the latent head reads; a pixel-INR stream does not send them.
LATENT_HEAD_ONLY = Counter({"inr.out_channels": 1, "inr.mask_channels": 1})


# The display size (format v2): a v1 stream has none and displays its coded size.
DISPLAY = Counter({"display_width": 1, "display_height": 1})
# The adapter family and the peft adapters' settings (format v3): v1 and v2 streams use NOLA.
ADAPTER = Counter({"adapter": 1, "lora.rank": 1, "lora.alpha": 1, "vera.rank": 1, "vera.seed": 1})
# The conditioning (format v3): v1 and v2 streams have none and condition on their INR.
CONDITIONING = Counter({"conditioning": 1})
# The granularity and adapter scope (format v4): v1 to v3 streams code one INR and one adapter set.
GRANULARITY = Counter({"granularity": 1, "nola_scope": 1})


@pytest.mark.parametrize(
    ("schema", "unsent"),
    [
        (DIVINR_V1, DISPLAY + ADAPTER + CONDITIONING + GRANULARITY), (DIVINR_V2, ADAPTER + CONDITIONING + GRANULARITY),
        (DIVINR_V3, GRANULARITY), (DIVINR_V4, Counter()), (PIXEL_INR_V2, LATENT_HEAD_ONLY),
    ],
    ids=["divinr_v1", "divinr_v2", "divinr_v3", "divinr_v4", "pixel_inr_v2"],
)
def test_every_typed_header_attribute_is_exactly_one_element(schema: HeaderSchema[Any], unsent: Counter) -> None:
    """The element table is the one place a field is declared: adding an attribute to a typed
    header (or to its INR, NOLA or sampler config) without an element, or two elements for one
    attribute, fails here."""
    assert Counter(e.path for e in schema.elements) == typed_paths(schema.header) - unsent
    assert len({e.name for e in schema.elements}) == len(schema.elements)


def test_the_rgb_head_ignores_the_fields_a_pixel_stream_does_not_send() -> None:
    """Why v2 may leave them out: an RGB-head INR has the same tensors whatever their values."""
    rgb = INRConfig(channels=8, stage_channels=(8, 4), strides=(2, 2), blocks=(1, 1), grid_frames=4,
                    grid_channels=2, local_grid_frames=4, local_grid_channels=2, head="rgb")
    shapes = [{k: v.shape for k, v in LatentINR(config, (16, 16)).state_dict().items()}
              for config in (rgb, dataclasses.replace(rgb, out_channels=3, mask_channels=1))]
    assert shapes[0] == shapes[1]


def test_the_pixel_headers_are_the_divinr_elements_the_pixel_header_has_a_place_for() -> None:
    divinr = {e.name: e for e in DIVINR_V1.elements}
    assert [e.name for e in PIXEL_INR_V1.elements] == list(divinr)
    for element in PIXEL_INR_V1.elements[1:]:
        assert element.path in (divinr[element.name].path, None)
    v2 = [e.name for e in PIXEL_INR_V2.elements]
    assert v2 == [e.name for e in PIXEL_INR_V1.elements if e.path is not None]
    assert not [n for n in v2 if n.startswith(("backbone", "nola", "sampler", "gop", "mask", "dit"))]
    assert {s.key for s in HEADER_SCHEMAS.values()} == set(SCHEMAS) == {(1, 0), (2, 0), (3, 0), (4, 0), (1, 1), (2, 1)}


def divinr_header() -> StreamHeader:
    header = unpack(fixture("divinr_v1")[0]).header
    assert isinstance(header, StreamHeader)
    return header


def candidates(kind: FieldKind, value: Any, codes: Any) -> list[Any]:
    """Other wire values for a field, some of which its bounds and the schema's rules accept."""
    if codes is not None:
        return [c for c in codes.values() if c != value]
    if kind is FieldKind.U32LIST:
        return [tuple(x + 1 for x in value), tuple(max(x - 1, 0) for x in value)]
    if kind is FieldKind.STR:
        return [value + "-b"]
    if kind is FieldKind.BYTES:
        return [bytes(255 - b for b in value)]
    if kind is FieldKind.F32:
        return [value / 2]
    return [value + 16, value + 4, value + 1, value - 1]


# A coded side changes with its display side: alone it would leave a window of the wrong size.
# Per-GoP adapters need per-GoP INRs.
TIED = {"width": "display_width", "height": "display_height", "nola_scope": "granularity"}


@pytest.mark.parametrize(
    "schema, header",
    [(DIVINR_V1, divinr_header()), (DIVINR_V2, divinr_header()), (DIVINR_V3, divinr_header()),
     (DIVINR_V4, divinr_header()), (PIXEL_INR_V2, PIXEL)],
    ids=["divinr_v1", "divinr_v2", "divinr_v3", "divinr_v4", "pixel_inr_v2"],
)
def test_every_element_round_trips_to_its_own_place(schema: HeaderSchema[Any], header: Any) -> None:
    """Each field, changed alone, changes the typed header and comes back unchanged (the frame
    rate is a Fraction, so the candidates keep it in lowest terms, as every encoder writes it)."""
    values = schema.to_fields(header)
    assert schema.from_fields(values) == header and list(values) == [e.name for e in schema.elements]
    for element in schema.elements:
        if element.codes is not None and len(element.codes) == 1:
            continue  # the kind and the NOLA target set: one value each, nothing to change
        for candidate in candidates(element.kind, values[element.name], element.codes):
            changed = dict(values, **{element.name: candidate})
            if TIED.get(element.name) in values:
                changed[TIED[element.name]] = candidate
            try:
                typed = schema.from_fields(changed)
            except BitstreamError:
                continue  # outside the bounds or the rules; try another
            assert typed != header and schema.to_fields(typed) == changed, element.name
            break
        else:
            pytest.fail(f"no other valid value found for {element.name}")


def test_a_pixel_header_carries_only_what_its_decoder_needs() -> None:
    data = pack(PIXEL, LatentINR(PIXEL.inr, (PIXEL.height, PIXEL.width)).state_dict(), {})
    schema, values = read_header_schema(data)
    assert schema is PIXEL_INR_V2 and unpack(data).header == PIXEL
    assert set(values) == {"kind", "frames", "width", "height", "fps_num", "fps_den", "quant_bits"} | {
        e.name for e in DIVINR_V1.elements if e.name.startswith("inr_") and e.path not in LATENT_HEAD_ONLY
    }
    with pytest.raises(PresetError, match="head=.latent. cannot be signalled"):
        dataclasses.replace(PIXEL, inr=dataclasses.replace(PIXEL.inr, head="latent")).to_fields()


def test_a_pixel_stream_over_any_bound_is_refused_from_its_header() -> None:
    """The pixel header takes the DiV-INR elements, bounds included: each one still holds."""
    data = pack(PIXEL, LatentINR(PIXEL.inr, (PIXEL.height, PIXEL.width)).state_dict(), {})
    version, values, sections = read_container(data, SCHEMAS)
    bounded = [e for e in PIXEL_INR_V2.elements if e.high is not None]
    assert len(bounded) == len(PIXEL_INR_V2.elements) - 2  # all but the kind and the head (codes)
    for element in bounded:
        value = element.high + 1 if element.kind is not FieldKind.U32LIST else (int(element.high) + 1,) * 2
        hostile = write_container(PIXEL_INR_V2.elements, dict(values, **{element.name: value}), sections, version=version)
        with pytest.raises(BitstreamError, match=f"{element.name}|stage widths"):
            read_header(hostile)


def test_a_setting_the_header_cannot_signal_is_refused_when_written() -> None:
    header = divinr_header()
    custom = dataclasses.replace(header, nola=dataclasses.replace(header.nola, target_modules=(r".*\.to_q",)))
    with pytest.raises(PresetError, match="target_modules.*cannot be signalled"):
        custom.to_fields()
    with pytest.raises(PresetError, match="model_dtype='float16' cannot be signalled"):
        dataclasses.replace(header, model_dtype="float16").to_fields()

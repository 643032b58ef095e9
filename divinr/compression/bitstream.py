"""The DiV-INR bitstream: what the decoder needs, declared field by field, and nothing else.

    container (see :mod:`divinr.compression.container`)
      header v1   codec kind, backbone preset + fingerprint, video geometry, GoP length,
                  INR architecture, mask mode, quantiser width, NOLA settings, sampler settings
      "inr"       every INR tensor, 6-bit quantised + range coded, in state-dict order
      "nola"      every NOLA coefficient vector (alpha, beta per layer), same coding
      CRC32

Nothing is kept at higher precision: every INR tensor (grids, weights, biases) and every NOLA
coefficient vector is quantised with its own per-tensor scale and zero point (both inside the
tensor's record, counted in its section's bits). A section's codes are range-coded either with
one histogram per tensor or with one shared histogram, whichever is smaller (a leading byte
says which). Tensor names are not sent: records follow the
canonical state-dict order of the architecture the header describes, and each record's stored
shape is checked against that architecture before anything is decoded.
The pixel-space INR baseline (HiNeRV recipe) uses the same format with ``kind = PIXEL_INR``, an
empty backbone and no NOLA section.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fractions import Fraction

import numpy as np
import torch

from divinr.compression.container import (
    Field,
    FieldKind,
    Schema,
    bits_by_part,
    decode_quantized_group,
    decode_quantized_tensor,
    encode_quantized_group,
    encode_quantized_tensor,
    read_container,
    write_container,
)
from divinr.compression.entropy import decode_varint, encode_varint
from divinr.compression.quant import dequantize, quant_params, quantize
from divinr.errors import BitstreamError, PresetError
from divinr.inference.sampler import SamplerConfig
from divinr.models.inr import INRConfig
from divinr.models.nola import DEFAULT_WAN_TARGETS, NOLAConfig

FORMAT_VERSION = 1


class CodecKind(enum.IntEnum):
    """What the INR drives: the diffusion decoder (DiV-INR) or pixels directly (baseline)."""

    DIVINR = 0
    PIXEL_INR = 1


class MaskMode(enum.IntEnum):
    LEARNED = 0
    ONES = 1


_INR_HEADS = {"latent": 0, "rgb": 1}
# Compute dtype of the DiT: the decoder must sample in the encoder's precision to reproduce it.
_DIT_DTYPES = {"float32": 0, "bfloat16": 1}
# NOLA target sets a stream may signal; custom regexes would have to be sent as text.
_NOLA_TARGET_SETS = {0: DEFAULT_WAN_TARGETS}

U8, U16, U32, F32, STR, BYTES, LIST = (
    FieldKind.U8, FieldKind.U16, FieldKind.U32, FieldKind.F32, FieldKind.STR, FieldKind.BYTES, FieldKind.U32LIST,
)  # fmt: skip

SCHEMA_V1: Schema = (
    Field("kind", U8),
    Field("backbone", STR),
    Field("backbone_fingerprint", BYTES),
    Field("dit_dtype", U8),
    Field("frames", U32),
    Field("width", U16),
    Field("height", U16),
    Field("fps_num", U32),
    Field("fps_den", U32),
    Field("gop_size", U16),
    Field("inr_head", U8),
    Field("inr_channels", U16),
    Field("inr_stage_channels", LIST),
    Field("inr_strides", LIST),
    Field("inr_blocks", LIST),
    Field("inr_grid_frames", U16),
    Field("inr_grid_channels", U16),
    Field("inr_grid_levels", U8),
    Field("inr_local_grid_frames", U16),
    Field("inr_local_grid_channels", U16),
    Field("inr_expansion", U8),
    Field("inr_out_channels", U8),
    Field("inr_mask_channels", U8),
    Field("mask_mode", U8),
    Field("quant_bits", U8),
    Field("nola_bases", U16),
    Field("nola_rank", U16),
    Field("nola_variance", F32),
    Field("nola_scaling", F32),
    Field("nola_seed", U32),
    Field("nola_targets", U8),
    Field("nola_layers", U16),
    Field("sampler_steps", U16),
    Field("sampler_flow_shift", F32),
    Field("sampler_noise_seed", U32),
    Field("sampler_order", U8),
)
SCHEMAS = {FORMAT_VERSION: SCHEMA_V1}

# Upper bounds checked before anything is built from a header (a hostile file must not make the
# decoder allocate gigabytes or loop for hours).
MAX_FRAMES = 1_000_000
MAX_SIDE = 8192
MAX_CHANNELS = 4096
MAX_STAGES = 8
MAX_STRIDE = 16
MAX_BLOCKS = 64
MAX_NOLA_BASES = 4096
MAX_NOLA_RANK = 1024
# The largest INR a stream may describe (divinr's presets stay under 3M parameters); checked on
# the meta device before the decoder allocates it.
MAX_INR_PARAMETERS = 64_000_000


@dataclass(frozen=True)
class StreamHeader:
    """Typed view of the header fields."""

    kind: CodecKind
    backbone: str
    backbone_fingerprint: bytes
    frames: int
    width: int
    height: int
    fps: Fraction
    gop_size: int
    inr: INRConfig
    mask_mode: MaskMode
    quant_bits: int
    nola: NOLAConfig
    nola_layers: int
    sampler: SamplerConfig
    model_dtype: str = "float32"

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    def to_fields(self) -> dict[str, object]:
        targets = [k for k, v in _NOLA_TARGET_SETS.items() if v == tuple(self.nola.target_modules)]
        if not targets:
            raise PresetError("custom NOLA target_modules cannot be signalled in bitstream v1; use the default targets")
        values: dict[str, object] = {
            "kind": int(self.kind),
            "backbone": self.backbone,
            "backbone_fingerprint": self.backbone_fingerprint,
            "dit_dtype": _DIT_DTYPES[self.model_dtype],
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps_num": self.fps.numerator,
            "fps_den": self.fps.denominator,
            "gop_size": self.gop_size,
            "inr_head": _INR_HEADS[self.inr.head],
            "mask_mode": int(self.mask_mode),
            "quant_bits": self.quant_bits,
            "nola_bases": self.nola.num_bases,
            "nola_rank": self.nola.rank,
            "nola_variance": self.nola.basis_variance,
            "nola_scaling": self.nola.scaling,
            "nola_seed": self.nola.seed,
            "nola_targets": targets[0],
            "nola_layers": self.nola_layers,
            "sampler_steps": self.sampler.steps,
            "sampler_flow_shift": self.sampler.flow_shift,
            "sampler_noise_seed": self.sampler.noise_seed,
            "sampler_order": self.sampler.solver_order,
        }
        for f in fields(INRConfig):
            if f.name != "head":
                values[f"inr_{f.name}"] = getattr(self.inr, f.name)
        return values

    @classmethod
    def from_fields(cls, v: Mapping[str, object]) -> "StreamHeader":
        """Validate ranges and build the typed header; any inconsistency is a BitstreamError."""

        def bounded(name: str, low: int, high: int) -> int:
            value = int(v[name])  # type: ignore[call-overload]
            if not low <= value <= high:
                raise BitstreamError(f"header field {name}={value} outside {low}..{high}; the bitstream is corrupt")
            return value

        bounded("frames", 1, MAX_FRAMES)
        for side in ("width", "height"):
            if bounded(side, 16, MAX_SIDE) % 16:
                raise BitstreamError(f"header {side} {v[side]} is not a multiple of 16; the bitstream is corrupt")
        bounded("fps_num", 1, 2**31)
        bounded("fps_den", 1, 2**31)
        bounded("quant_bits", 1, 16)
        for name in ("inr_channels", "inr_grid_channels", "inr_local_grid_channels"):
            bounded(name, 1, MAX_CHANNELS)
        bounded("inr_grid_levels", 1, 8)
        bounded("inr_expansion", 1, 16)
        bounded("nola_bases", 0, MAX_NOLA_BASES)
        bounded("nola_rank", 0, MAX_NOLA_RANK)
        stages = (v["inr_stage_channels"], v["inr_strides"], v["inr_blocks"])
        limits = (MAX_CHANNELS, MAX_STRIDE, MAX_BLOCKS)
        if any(len(s) > MAX_STAGES or any(x > lim for x in s) for s, lim in zip(stages, limits)):  # type: ignore[arg-type]
            raise BitstreamError("the INR stages exceed divinr's limits (widths, strides, blocks); the bitstream is corrupt")
        try:
            kind = CodecKind(int(v["kind"]))  # type: ignore[call-overload]
            mask_mode = MaskMode(int(v["mask_mode"]))  # type: ignore[call-overload]
            head = {code: name for name, code in _INR_HEADS.items()}[int(v["inr_head"])]  # type: ignore[call-overload]
            model_dtype = {code: name for name, code in _DIT_DTYPES.items()}[int(v["dit_dtype"])]  # type: ignore[call-overload]
            targets = _NOLA_TARGET_SETS[int(v["nola_targets"])]  # type: ignore[call-overload]
            inr = INRConfig(
                head=head,
                **{f.name: v[f"inr_{f.name}"] for f in fields(INRConfig) if f.name != "head"},  # type: ignore[arg-type]
            )
            nola = NOLAConfig(
                rank=int(v["nola_rank"]), num_bases=int(v["nola_bases"]),  # type: ignore[call-overload]
                basis_variance=float(v["nola_variance"]), scaling=float(v["nola_scaling"]),  # type: ignore[arg-type]
                seed=int(v["nola_seed"]), target_modules=targets,  # type: ignore[call-overload]
            )
            sampler = SamplerConfig(
                steps=int(v["sampler_steps"]), flow_shift=float(v["sampler_flow_shift"]),  # type: ignore[call-overload,arg-type]
                noise_seed=int(v["sampler_noise_seed"]), solver_order=int(v["sampler_order"]),  # type: ignore[call-overload]
            )
        except (ValueError, KeyError, PresetError) as exc:
            raise BitstreamError(f"invalid header value ({exc}); the bitstream is corrupt") from None
        return cls(
            kind=kind,
            backbone=str(v["backbone"]),
            backbone_fingerprint=bytes(v["backbone_fingerprint"]),  # type: ignore[arg-type]
            frames=int(v["frames"]),  # type: ignore[call-overload]
            width=int(v["width"]),  # type: ignore[call-overload]
            height=int(v["height"]),  # type: ignore[call-overload]
            fps=Fraction(int(v["fps_num"]), int(v["fps_den"])),  # type: ignore[call-overload]
            gop_size=bounded("gop_size", 1, 4097),
            inr=inr,
            mask_mode=mask_mode,
            quant_bits=int(v["quant_bits"]),  # type: ignore[call-overload]
            nola=nola,
            nola_layers=bounded("nola_layers", 0, 4096),
            sampler=sampler,
            model_dtype=model_dtype,
        )


# -- tensor sections ----------------------------------------------------------------------------
class SectionCoding(enum.IntEnum):
    """How a section's tensors are entropy-coded; the encoder keeps whichever is smaller."""

    PER_TENSOR = 0  # each tensor with its own histogram (large tensors with distinct statistics)
    SHARED = 1  # one histogram for all (many short tensors, e.g. NOLA's coefficient vectors)


def encode_tensors(tensors: Mapping[str, torch.Tensor], bits: int) -> bytes:
    """Quantise tensors per tensor (own scale and zero point) and range-code them, in the given order.

    Both codings are built and the smaller is kept; the leading byte says which.
    """
    items = []
    for value in tensors.values():
        w = value.detach().float().cpu()
        params = quant_params(w, bits)
        items.append((quantize(w, params).numpy(), params, tuple(w.shape)))
    records = [encode_quantized_tensor(*item) for item in items]
    per_tensor = bytes([SectionCoding.PER_TENSOR]) + b"".join(encode_varint(len(r)) + r for r in records)
    shared = bytes([SectionCoding.SHARED]) + encode_quantized_group(items)
    return min(per_tensor, shared, key=len)


def decode_tensors(data: bytes, expected: Mapping[str, tuple[int, ...]], bits: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_tensors` against the shapes the header's architecture implies."""
    if not data:
        raise BitstreamError("empty tensor section; the bitstream is corrupt")
    mode, body = data[0], data[1:]
    if mode == SectionCoding.SHARED:
        decoded = decode_quantized_group(body, list(expected.values()))
    elif mode == SectionCoding.PER_TENSOR:
        decoded = []
        pos = 0
        for name, shape in expected.items():
            try:
                length, pos = decode_varint(body, pos)
            except (ValueError, IndexError):
                raise BitstreamError(f"tensor {name}: bad length prefix; the bitstream is corrupt") from None
            if length > len(body) - pos:
                raise BitstreamError(f"tensor {name}: record runs past its section; the bitstream is truncated or corrupt")
            decoded.append(decode_quantized_tensor(body[pos : pos + length], expected_shape=shape))
            pos += length
        if pos != len(body):
            raise BitstreamError(f"{len(body) - pos} unexpected bytes after the last tensor; the bitstream is corrupt")
    else:
        raise BitstreamError(f"unknown section coding {mode}; the bitstream is corrupt")
    out: dict[str, torch.Tensor] = {}
    for name, (codes, params, _) in zip(expected, decoded):
        if params.bits != bits:
            raise BitstreamError(f"tensor {name}: {params.bits}-bit codes in a {bits}-bit stream; the bitstream is corrupt")
        out[name] = dequantize(torch.from_numpy(np.ascontiguousarray(codes)), params)
    return out


@dataclass(frozen=True)
class Bitstream:
    """A parsed stream: the header and the two tensor sections, still coded."""

    header: StreamHeader
    inr_section: bytes
    nola_section: bytes


def pack(header: StreamHeader, inr_tensors: Mapping[str, torch.Tensor], nola_tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Write a complete bitstream; ``nola_tensors`` empty for the pixel baseline or b = 0."""
    sections = [("inr", encode_tensors(inr_tensors, header.quant_bits))]
    if nola_tensors:
        sections.append(("nola", encode_tensors(nola_tensors, header.quant_bits)))
    return write_container(SCHEMA_V1, header.to_fields(), sections, version=FORMAT_VERSION)


def unpack(data: bytes) -> Bitstream:
    """Parse and validate the container and header; tensors are decoded by :func:`decode_tensors`."""
    _, values, sections = read_container(data, SCHEMAS)
    header = StreamHeader.from_fields(values)
    named = dict(sections)
    unknown = set(named) - {"inr", "nola"}
    if unknown or "inr" not in named:
        raise BitstreamError(f"unexpected sections {sorted(named)}; expected 'inr' and optionally 'nola'")
    if ("nola" in named) != (header.nola.num_bases > 0 and header.nola_layers > 0):
        raise BitstreamError("NOLA section presence disagrees with the header; the bitstream is corrupt")
    return Bitstream(header, named["inr"], named.get("nola", b""))


def bits_breakdown(data: bytes) -> dict[str, int]:
    """Bits by part: ``header`` (magic, version, fields, section count, CRC) and each section
    (its name and length prefix included); the parts sum to ``total`` = 8 x file size."""
    _, values, sections = read_container(data, SCHEMAS)
    parts = dict(bits_by_part(SCHEMA_V1, values, sections))
    result = {"header": parts.pop("header"), "inr": parts.pop("inr", 0), "nola": parts.pop("nola", 0)}
    result["total"] = 8 * len(data)
    if sum(v for k, v in result.items() if k != "total") != result["total"]:
        raise BitstreamError("section sizes do not add up to the file size; the bitstream is corrupt")
    return result

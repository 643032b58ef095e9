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

Every header field is bounded by what the decoder can really do (see the ``MAX_*`` limits), both
when a stream is read and when an encoder plans one, so a stream that would exhaust memory, run
for hours or crash the transformer is refused with one line before any work. :func:`read_header`
checks all of it without importing torch or diffusers; the typed :class:`StreamHeader` (whose
configs live in torch modules) is built only when a stream is decoded or written.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from divinr.compression.container import (
    Field,
    FieldKind,
    HeaderValue,
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
from divinr.errors import BitstreamError, PresetError

if TYPE_CHECKING:
    import torch

    from divinr.inference.sampler import SamplerConfig
    from divinr.models.inr import INRConfig
    from divinr.models.nola import NOLAConfig

FORMAT_VERSION = 1


class CodecKind(enum.IntEnum):
    """What the INR drives: the diffusion decoder (DiV-INR) or pixels directly (baseline)."""

    DIVINR = 0
    PIXEL_INR = 1


class MaskMode(enum.IntEnum):
    LEARNED = 0
    ONES = 1


INR_HEAD_CODES = {"latent": 0, "rgb": 1}
# Compute dtype of the DiT: the decoder must sample in the encoder's precision to reproduce it.
_DIT_DTYPES = {"float32": 0, "bfloat16": 1}
# NOLA target sets a stream may signal (codes; the regexes are divinr.models.nola's); custom
# regexes would have to be sent as text.
_NOLA_TARGET_CODES = (0,)

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
# The INR architecture fields, in schema order (``inr_<INRConfig field>``; the head is a code).
INR_FIELDS = tuple(f.name for f in SCHEMA_V1 if f.name.startswith("inr_") and f.name != "inr_head")

# Upper bounds checked before anything is built from a header (a hostile file must not make the
# decoder allocate gigabytes, loop for hours or hand the transformer what it cannot take).
MAX_FRAMES = 18_000  # ten minutes at 30 fps; the benchmark sequences have at most 600 frames
MAX_SIDE = 8192  # pixels per side; Wan's RoPE would allow 16384 (1024 positions x patch 2 x VAE 8)
# Wan's RoPE tables hold 1024 temporal positions (rope_max_seq_len, temporal patch 1), so a GoP
# may have at most 1024 latent frames: 1 + 4 x 1023 frames.
MAX_LATENT_FRAMES = 1024
MAX_GOP = 1 + 4 * (MAX_LATENT_FRAMES - 1)
MAX_FPS = 1000
MIN_FPS = Fraction(1, 100)
MAX_CHANNELS = 4096
MAX_STAGES = 8
MAX_STRIDE = 16
MAX_BLOCKS = 64
MAX_GRID_FRAMES = 4096
MAX_HEAD_CHANNELS = 64  # of y and M; Wan's DiT takes 16 + 4
MAX_NOLA_BASES = 1024  # = divinr.models.nola.MAX_NUM_BASES (a test keeps them equal)
MAX_NOLA_RANK = 128  # = divinr.models.nola.MAX_RANK
MAX_NOLA_LAYERS = 4096
MAX_SAMPLER_STEPS = 1000
# NOLA basis variance and scaling, and the sampler's flow shift, are O(1) (0.25, 1.0, 3-5);
# beyond these the adapted weights or the timesteps overflow and the video comes out constant.
MAX_NOLA_VARIANCE = 100.0
MAX_NOLA_SCALING = 100.0
MAX_FLOW_SHIFT = 100.0
# The largest INR a stream may describe (divinr's presets stay under 3M parameters); checked on
# the meta device before the decoder allocates it.
MAX_INR_PARAMETERS = 64_000_000
FINGERPRINT_BYTES = 16
_BACKBONE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Integer fields and their inclusive ranges; the seeds take any u32.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "kind": (min(CodecKind), max(CodecKind)),
    "dit_dtype": (0, max(_DIT_DTYPES.values())),
    "frames": (1, MAX_FRAMES),
    "width": (16, MAX_SIDE),
    "height": (16, MAX_SIDE),
    "fps_num": (1, 2**31 - 1),
    "fps_den": (1, 2**31 - 1),
    "gop_size": (1, MAX_GOP),
    "inr_head": (0, max(INR_HEAD_CODES.values())),
    "inr_channels": (1, MAX_CHANNELS),
    "inr_grid_frames": (2, MAX_GRID_FRAMES),
    "inr_grid_channels": (1, MAX_CHANNELS),
    "inr_grid_levels": (1, 8),
    "inr_local_grid_frames": (2, MAX_GRID_FRAMES),
    "inr_local_grid_channels": (1, MAX_CHANNELS),
    "inr_expansion": (1, 16),
    "inr_out_channels": (1, MAX_HEAD_CHANNELS),
    "inr_mask_channels": (1, MAX_HEAD_CHANNELS),
    "mask_mode": (min(MaskMode), max(MaskMode)),
    "quant_bits": (1, 16),
    "nola_bases": (0, MAX_NOLA_BASES),
    "nola_rank": (1, MAX_NOLA_RANK),
    "nola_targets": (min(_NOLA_TARGET_CODES), max(_NOLA_TARGET_CODES)),
    "nola_layers": (0, MAX_NOLA_LAYERS),
    "sampler_steps": (1, MAX_SAMPLER_STEPS),
    "sampler_order": (1, 3),
}
# Float fields: (exclusive lower bound, inclusive upper bound); NaN and infinities never pass.
_FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "nola_variance": (0.0, MAX_NOLA_VARIANCE),
    "nola_scaling": (0.0, MAX_NOLA_SCALING),
    "sampler_flow_shift": (0.0, MAX_FLOW_SHIFT),
}
# Per-stage lists: (lowest item, highest item).
_STAGE_RANGES: dict[str, tuple[int, int]] = {
    "inr_stage_channels": (1, MAX_CHANNELS),
    "inr_strides": (1, MAX_STRIDE),
    "inr_blocks": (0, MAX_BLOCKS),
}


def header_problem(v: Mapping[str, HeaderValue]) -> str | None:
    """The first header value divinr's decoder cannot handle, described in a phrase, or None.

    Pure Python on the raw field values: no torch, so ``divinr info`` can afford it, and the
    encoder runs the same check before training so it never writes a stream it cannot decode.
    """
    for name, (low, high) in _INT_RANGES.items():
        if not low <= v[name] <= high:  # type: ignore[operator]
            return f"header field {name}={v[name]} outside {low}..{high}"
    for name, (low, high) in _FLOAT_RANGES.items():
        value = float(v[name])  # type: ignore[arg-type]
        if not (math.isfinite(value) and low < value <= high):
            return f"header field {name}={value} outside ({low:g}, {high:g}]"
    for side in ("width", "height"):
        if v[side] % 16:  # type: ignore[operator]
            return f"header {side} {v[side]} is not a multiple of 16"
    if (v["gop_size"] - 1) % 4:  # type: ignore[operator]
        return f"header gop_size {v['gop_size']} is not 1 + 4k as the Wan VAE needs"
    fps = Fraction(v["fps_num"], v["fps_den"])  # type: ignore[arg-type]
    if not MIN_FPS <= fps <= MAX_FPS:
        return f"header frame rate {float(fps):g} fps outside {float(MIN_FPS):g}..{MAX_FPS}"
    lists = [v[name] for name in _STAGE_RANGES]
    if not 1 <= len(lists[0]) <= MAX_STAGES or any(len(s) != len(lists[0]) for s in lists):  # type: ignore[arg-type]
        return f"the INR has {[len(s) for s in lists]} stage widths/strides/blocks, not 1..{MAX_STAGES} of each"  # type: ignore[arg-type]
    for (name, (low, high)), items in zip(_STAGE_RANGES.items(), lists):
        if any(not low <= x <= high for x in items):  # type: ignore[union-attr]
            return f"header field {name}={list(items)} has items outside {low}..{high}"  # type: ignore[call-overload]
    backbone, fingerprint = v["backbone"], v["backbone_fingerprint"]
    if v["kind"] == CodecKind.DIVINR:
        if not _BACKBONE_NAME.fullmatch(backbone):  # type: ignore[arg-type]
            return f"backbone name {backbone!r} is not a preset name (letters, digits, '.', '_', '-')"
        if len(fingerprint) != FINGERPRINT_BYTES:  # type: ignore[arg-type]
            return f"backbone fingerprint has {len(fingerprint)} bytes, not {FINGERPRINT_BYTES}"  # type: ignore[arg-type]
    elif backbone or fingerprint:
        return "a pixel-INR stream names a backbone"
    return None


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

    def to_fields(self) -> dict[str, HeaderValue]:
        """The header's field values; a header the decoder could not handle is a BitstreamError."""
        from divinr.models.nola import DEFAULT_WAN_TARGETS

        if tuple(self.nola.target_modules) != DEFAULT_WAN_TARGETS:
            raise PresetError("custom NOLA target_modules cannot be signalled in bitstream v1; use the default targets")
        values: dict[str, HeaderValue] = {
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
            "inr_head": INR_HEAD_CODES[self.inr.head],
            "mask_mode": int(self.mask_mode),
            "quant_bits": self.quant_bits,
            "nola_bases": self.nola.num_bases,
            "nola_rank": self.nola.rank,
            "nola_variance": self.nola.basis_variance,
            "nola_scaling": self.nola.scaling,
            "nola_seed": self.nola.seed,
            "nola_targets": _NOLA_TARGET_CODES[0],
            "nola_layers": self.nola_layers,
            "sampler_steps": self.sampler.steps,
            "sampler_flow_shift": self.sampler.flow_shift,
            "sampler_noise_seed": self.sampler.noise_seed,
            "sampler_order": self.sampler.solver_order,
        }
        for name in INR_FIELDS:
            values[name] = getattr(self.inr, name.removeprefix("inr_"))
        problem = header_problem(values)
        if problem:
            raise BitstreamError(f"{problem}; divinr's decoder could not read such a stream")
        return values

    @classmethod
    def from_fields(cls, v: Mapping[str, HeaderValue]) -> StreamHeader:
        """Validate ranges and build the typed header; any inconsistency is a BitstreamError."""
        from divinr.inference.sampler import SamplerConfig
        from divinr.models.inr import INRConfig
        from divinr.models.nola import DEFAULT_WAN_TARGETS, NOLAConfig

        problem = header_problem(v)
        if problem:
            raise BitstreamError(f"{problem}; the bitstream is corrupt")
        try:
            inr = INRConfig(
                head={code: name for name, code in INR_HEAD_CODES.items()}[v["inr_head"]],  # type: ignore[index]
                **{name.removeprefix("inr_"): v[name] for name in INR_FIELDS},  # type: ignore[arg-type]
            )
            nola = NOLAConfig(
                rank=v["nola_rank"], num_bases=v["nola_bases"],  # type: ignore[arg-type]
                basis_variance=v["nola_variance"], scaling=v["nola_scaling"],  # type: ignore[arg-type]
                seed=v["nola_seed"], target_modules=DEFAULT_WAN_TARGETS,  # type: ignore[arg-type]
            )
            sampler = SamplerConfig(
                steps=v["sampler_steps"], flow_shift=v["sampler_flow_shift"],  # type: ignore[arg-type]
                noise_seed=v["sampler_noise_seed"], solver_order=v["sampler_order"],  # type: ignore[arg-type]
            )
        except PresetError as exc:
            raise BitstreamError(f"invalid header value ({exc}); the bitstream is corrupt") from None
        return cls(
            kind=CodecKind(v["kind"]),
            backbone=str(v["backbone"]),
            backbone_fingerprint=bytes(v["backbone_fingerprint"]),  # type: ignore[arg-type]
            frames=int(v["frames"]),  # type: ignore[call-overload]
            width=int(v["width"]),  # type: ignore[call-overload]
            height=int(v["height"]),  # type: ignore[call-overload]
            fps=Fraction(v["fps_num"], v["fps_den"]),  # type: ignore[arg-type]
            gop_size=int(v["gop_size"]),  # type: ignore[call-overload]
            inr=inr,
            mask_mode=MaskMode(v["mask_mode"]),
            quant_bits=int(v["quant_bits"]),  # type: ignore[call-overload]
            nola=nola,
            nola_layers=int(v["nola_layers"]),  # type: ignore[call-overload]
            sampler=sampler,
            model_dtype={code: name for name, code in _DIT_DTYPES.items()}[v["dit_dtype"]],  # type: ignore[index]
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
    from divinr.compression.quant import quant_params, quantize

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
    import torch

    from divinr.compression.quant import dequantize

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


def _read(data: bytes) -> tuple[dict[str, HeaderValue], dict[str, bytes]]:
    """Container, header limits and section layout checked; sections still coded."""
    _, values, sections = read_container(data, SCHEMAS)
    problem = header_problem(values)
    if problem:
        raise BitstreamError(f"{problem}; the bitstream is corrupt")
    named = dict(sections)
    unknown = set(named) - {"inr", "nola"}
    if unknown or "inr" not in named:
        raise BitstreamError(f"unexpected sections {sorted(named)}; expected 'inr' and optionally 'nola'")
    if ("nola" in named) != (values["nola_bases"] > 0 and values["nola_layers"] > 0):  # type: ignore[operator]
        raise BitstreamError("NOLA section presence disagrees with the header; the bitstream is corrupt")
    return values, named


def read_header(data: bytes) -> dict[str, HeaderValue]:
    """The header fields of a stream, every one checked against the decoder's limits.

    Needs neither torch nor diffusers, so showing a header takes milliseconds; the typed
    configs are built (and their own checks run) by :func:`unpack`.
    """
    return _read(data)[0]


def unpack(data: bytes) -> Bitstream:
    """Parse and validate the container and header; tensors are decoded by :func:`decode_tensors`."""
    values, named = _read(data)
    return Bitstream(StreamHeader.from_fields(values), named["inr"], named.get("nola", b""))


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

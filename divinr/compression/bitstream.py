"""The divinr bitstreams: what each decoder needs, declared field by field, and nothing else.

    container (see :mod:`divinr.compression.container`), schema chosen by (format version, kind)
      DiV-INR v4    codec kind, backbone preset + fingerprint, DiT dtype, video geometry (coded
                    size and display size), GoP length, INR architecture, mask mode, quantiser
                    width, NOLA settings, sampler, adapter family + LoRA and VeRA settings,
                    conditioning, granularity + adapter scope (v3, still read: one INR and one
                    adapter set per sequence; v2: NOLA, INR conditioning; v1: no display size either)
      pixel INR v2  codec kind, video geometry, INR architecture, quantiser width
      "inr"         every INR tensor, 6-bit quantised + range coded, in state-dict order
                    (granularity gop: one section per GoP, "inr.0", "inr.1", ..., each an INR of
                    the header's architecture for that GoP alone)
      "keyframes"   (DiV-INR with JPEG conditioning, instead of "inr") one JPEG file per GoP
                    (:mod:`divinr.compression.jpeg`); such a header's INR fields are not read
      adapter       (DiV-INR) section named after the family ("nola", "lora", "vera"): every
                    trained adapter tensor (NOLA: alpha, beta per layer; LoRA: A, B; VeRA:
                    lambda_b, lambda_d), same coding; VeRA's shared projections are not sent
                    (adapter scope gop: one section per GoP, "nola.0", "nola.1", ...)
      CRC32

Nothing is kept at higher precision: every INR tensor (grids, weights, biases) and every adapter
tensor is quantised with its own per-tensor scale and zero point (both inside the
tensor's record, counted in its section's bits). A section's codes are range-coded either with
one histogram per tensor or with one shared histogram, whichever is smaller (a leading byte
says which). Tensor names are not sent: records follow the
canonical state-dict order of the architecture the header describes, and each record's stored
shape is checked against that architecture before anything is decoded.

Each header field is declared once, in the element table :data:`DIVINR_ELEMENTS` (name, wire kind,
place in the typed header, bounds, codes; see :mod:`divinr.compression.header`). The pixel-space
INR baseline (HiNeRV recipe, ``kind = PIXEL_INR``) takes the elements its
:class:`PixelINRHeader` has a place for, under format v2; its v1 streams carried the whole DiV-INR
header with placeholder backbone, NOLA and sampler fields and are still read (read-only schema).

Every header field is bounded by what the decoder can really do (see the ``MAX_*`` limits), both
when a stream is read and when an encoder plans one, so a stream that would exhaust memory, run
for hours or crash the transformer is refused with one line before any work. :func:`read_header`
checks all of it without importing torch or diffusers; the typed headers (whose configs live in
torch modules) are built only when a stream is decoded or written.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from divinr.compression.container import (
    FieldKind,
    HeaderValue,
    SchemaKey,
    bits_by_part,
    decode_quantized_group,
    decode_quantized_tensor,
    encode_quantized_group,
    encode_quantized_tensor,
    read_container,
    write_container,
)
from divinr.compression.entropy import decode_varint, encode_varint
from divinr.compression.header import DEFAULT, Element, HeaderSchema, value_of
from divinr.errors import BitstreamError

if TYPE_CHECKING:
    import torch

    from divinr.inference.sampler import SamplerConfig
    from divinr.models.adapters import AdapterConfig, LoRAConfig, VeRAConfig
    from divinr.models.inr import INRConfig
    from divinr.models.nola import NOLAConfig

FORMAT_VERSION = 4
"""The format version DiV-INR streams are written in (v2 added the display size, v3 the adapter
family and the conditioning, v4 the granularity and the adapter scope)."""
BLOCK = 16
"""Coded sides are multiples of this: the VAE downsamples by 8 and the DiT patches latents by 2."""


class CodecKind(enum.IntEnum):
    """What the INR drives: the diffusion decoder (DiV-INR) or pixels directly (baseline)."""

    DIVINR = 0
    PIXEL_INR = 1


class MaskMode(enum.IntEnum):
    LEARNED = 0
    ONES = 1


class Conditioning(enum.IntEnum):
    """What gives the DiT its (y, M): the INR (the paper's codec) or JPEG keyframes (its ablation)."""

    INR = 0
    JPEG = 1


class Granularity(enum.IntEnum):
    """What one INR (granularity) or one adapter set (adapter scope) represents: the whole
    sequence, or one GoP, so that GoPs train independently."""

    SEQUENCE = 0
    GOP = 1


INR_HEAD_CODES = {"latent": 0, "rgb": 1}
# Compute dtype of the DiT: the decoder must sample in the encoder's precision to reproduce it.
DIT_DTYPE_CODES = {"float32": 0, "bfloat16": 1}
MASK_MODE_CODES = {mode: int(mode) for mode in MaskMode}
# The adapter family; its name is also the name of the stream's adapter section.
ADAPTER_CODES = {"nola": 0, "lora": 1, "vera": 2}
CONDITIONING_CODES = {kind: int(kind) for kind in Conditioning}
GRANULARITY_CODES = {kind: int(kind) for kind in Granularity}

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
MAX_LORA_RANK = 256  # = divinr.models.adapters.MAX_LORA_RANK (a test keeps the three equal)
MAX_VERA_RANK = 1024  # = divinr.models.adapters.MAX_VERA_RANK
MAX_LORA_ALPHA = 1024.0  # = divinr.models.adapters.MAX_LORA_ALPHA
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
_FRACTION = 2**31 - 1  # largest numerator / denominator of the frame rate

U8, U16, U32, F32, STR, BYTES, LIST = (
    FieldKind.U8, FieldKind.U16, FieldKind.U32, FieldKind.F32, FieldKind.STR, FieldKind.BYTES, FieldKind.U32LIST,
)  # fmt: skip


class _TypedHeader:
    """Shared by the typed headers: their fields come from the schema they are written with."""

    def to_fields(self) -> dict[str, HeaderValue]:
        """The header's field values; a header the decoder could not handle is a BitstreamError."""
        return writer_schema(type(self)).to_fields(self)

    @classmethod
    def from_fields(cls, values: Mapping[str, HeaderValue]) -> Any:
        """Validate the values of the schema this class is written with and build the typed header."""
        return writer_schema(cls).from_fields(values)


@dataclass(frozen=True)
class StreamHeader(_TypedHeader):
    """Typed header of a DiV-INR stream.

    ``width`` x ``height`` is the coded size (multiples of :data:`BLOCK`, what the VAE and DiT
    see); ``display_width`` x ``display_height`` is the conformance window the decoder crops to
    (the input's size; 0 stands for the coded size, as in v1 streams, and is replaced by it).
    ``adapter`` names the family whose settings (``nola``, ``lora`` or ``vera``) the decoder
    uses (v1 and v2 streams: NOLA); the other families' settings hold their defaults.
    ``nola_layers`` counts the adapted layers, whatever the family.
    ``conditioning`` says which section gives the DiT its (y, M) (v1 and v2 streams: the INR).
    ``granularity`` says whether one INR codes the sequence or each GoP has its own (``inr`` is
    then the architecture of every GoP's INR), ``nola_scope`` the same for the adapter tensors,
    whatever the family (GoP scope needs GoP granularity; v1 to v3 streams: sequence, sequence).
    """

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
    display_width: int = 0
    display_height: int = 0
    adapter: str = "nola"
    lora: LoRAConfig = dataclasses.field(default_factory=lambda: _config_types()["lora"]())
    vera: VeRAConfig = dataclasses.field(default_factory=lambda: _config_types()["vera"]())
    conditioning: Conditioning = Conditioning.INR
    granularity: Granularity = Granularity.SEQUENCE
    nola_scope: Granularity = Granularity.SEQUENCE

    def __post_init__(self) -> None:
        for side in ("width", "height"):
            if not getattr(self, f"display_{side}"):
                object.__setattr__(self, f"display_{side}", getattr(self, side))

    @property
    def adapter_config(self) -> AdapterConfig:
        """The settings of the stream's adapter family (its part of the header is named after it)."""
        return getattr(self, self.adapter)

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def num_gops(self) -> int:
        return gop_count(self.frames, self.gop_size)

    @property
    def per_gop_inr(self) -> bool:
        return self.granularity == Granularity.GOP

    @property
    def per_gop_adapters(self) -> bool:
        return self.nola_scope == Granularity.GOP


def gop_count(frames: int, gop_size: int) -> int:
    """GoPs of a sequence (:func:`divinr.data.gop.plan_gops` without torch: the header is read torch-free)."""
    return -(-frames // gop_size)


def gop_section(name: str, index: int) -> str:
    """The name of GoP ``index``'s section of kind ``name`` ("inr", or an adapter family)."""
    return f"{name}.{index}"


@dataclass(frozen=True)
class PixelINRHeader(_TypedHeader):
    """Typed header of a pixel-space INR stream (the HiNeRV-recipe baseline): only what its decoder
    needs, since the INR renders frames itself (no backbone, no NOLA, no sampler, no GoPs)."""

    frames: int
    width: int
    height: int
    fps: Fraction
    inr: INRConfig
    quant_bits: int
    kind: CodecKind = CodecKind.PIXEL_INR


Header = Union[StreamHeader, PixelINRHeader]


def _config_types() -> dict[str, Callable[..., Any]]:
    """Constructors of the typed headers' parts; imported only when a typed header is built."""
    from divinr.inference.sampler import SamplerConfig
    from divinr.models.adapters import LoRAConfig, VeRAConfig
    from divinr.models.inr import INRConfig
    from divinr.models.nola import NOLAConfig

    return {
        "fps": Fraction, "inr": INRConfig, "nola": NOLAConfig, "sampler": SamplerConfig, "lora": LoRAConfig,
        "vera": VeRAConfig,
    }


# -- the element table: each field once ---------------------------------------------------------
DIVINR_ELEMENTS: tuple[Element, ...] = (
    Element("kind", U8, "kind", codes={CodecKind.DIVINR: 0}),
    Element("backbone", STR, "backbone"),
    Element("backbone_fingerprint", BYTES, "backbone_fingerprint"),
    Element("dit_dtype", U8, "model_dtype", codes=DIT_DTYPE_CODES),
    Element("frames", U32, "frames", 1, MAX_FRAMES),
    Element("width", U16, "width", 16, MAX_SIDE),
    Element("height", U16, "height", 16, MAX_SIDE),
    Element("fps_num", U32, "fps.numerator", 1, _FRACTION),
    Element("fps_den", U32, "fps.denominator", 1, _FRACTION),
    Element("gop_size", U16, "gop_size", 1, MAX_GOP),
    Element("inr_head", U8, "inr.head", codes=INR_HEAD_CODES),
    Element("inr_channels", U16, "inr.channels", 1, MAX_CHANNELS),
    Element("inr_stage_channels", LIST, "inr.stage_channels", 1, MAX_CHANNELS),
    Element("inr_strides", LIST, "inr.strides", 1, MAX_STRIDE),
    Element("inr_blocks", LIST, "inr.blocks", 0, MAX_BLOCKS),
    Element("inr_grid_frames", U16, "inr.grid_frames", 2, MAX_GRID_FRAMES),
    Element("inr_grid_channels", U16, "inr.grid_channels", 1, MAX_CHANNELS),
    Element("inr_grid_levels", U8, "inr.grid_levels", 1, 8),
    Element("inr_local_grid_frames", U16, "inr.local_grid_frames", 2, MAX_GRID_FRAMES),
    Element("inr_local_grid_channels", U16, "inr.local_grid_channels", 1, MAX_CHANNELS),
    Element("inr_expansion", U8, "inr.expansion", 1, 16),
    Element("inr_out_channels", U8, "inr.out_channels", 1, MAX_HEAD_CHANNELS),
    Element("inr_mask_channels", U8, "inr.mask_channels", 1, MAX_HEAD_CHANNELS),
    Element("mask_mode", U8, "mask_mode", codes=MASK_MODE_CODES),
    Element("quant_bits", U8, "quant_bits", 1, 16),
    Element("nola_bases", U16, "nola.num_bases", 0, MAX_NOLA_BASES),
    Element("nola_rank", U16, "nola.rank", 1, MAX_NOLA_RANK),
    Element("nola_variance", F32, "nola.basis_variance", 0.0, MAX_NOLA_VARIANCE),
    Element("nola_scaling", F32, "nola.scaling", 0.0, MAX_NOLA_SCALING),
    Element("nola_seed", U32, "nola.seed"),  # any u32
    # NOLA target sets a stream may signal: only divinr.models.nola's default regexes (custom
    # regexes would have to be sent as text).
    Element("nola_targets", U8, "nola.target_modules", codes={DEFAULT: 0}),
    Element("nola_layers", U16, "nola_layers", 0, MAX_NOLA_LAYERS),  # adapted layers, of any family
    Element("sampler_steps", U16, "sampler.steps", 1, MAX_SAMPLER_STEPS),
    Element("sampler_flow_shift", F32, "sampler.flow_shift", 0.0, MAX_FLOW_SHIFT),
    Element("sampler_noise_seed", U32, "sampler.noise_seed"),  # any u32
    Element("sampler_order", U8, "sampler.solver_order", 1, 3),
)
_STAGE_LISTS = tuple(e.name for e in DIVINR_ELEMENTS if e.kind is LIST)
_DISPLAY_ELEMENTS = (
    Element("display_width", U16, "display_width", 1, MAX_SIDE),
    Element("display_height", U16, "display_height", 1, MAX_SIDE),
)
_AFTER_GEOMETRY = [e.name for e in DIVINR_ELEMENTS].index("height") + 1
DIVINR_V2_ELEMENTS = DIVINR_ELEMENTS[:_AFTER_GEOMETRY] + _DISPLAY_ELEMENTS + DIVINR_ELEMENTS[_AFTER_GEOMETRY:]
"""Format v2: v1's elements with the display size after the coded size."""
_V3_ELEMENTS: tuple[Element, ...] = (
    Element("adapter", U8, "adapter", codes=ADAPTER_CODES),
    Element("lora_rank", U16, "lora.rank", 1, MAX_LORA_RANK),
    Element("lora_alpha", F32, "lora.alpha", 0.0, MAX_LORA_ALPHA),
    Element("vera_rank", U16, "vera.rank", 1, MAX_VERA_RANK),
    Element("vera_seed", U32, "vera.seed"),  # any u32

    Element("conditioning", U8, "conditioning", codes=CONDITIONING_CODES),
)
DIVINR_V3_ELEMENTS = DIVINR_V2_ELEMENTS + _V3_ELEMENTS
"""Format v3: v2's elements, then the adapter family, the LoRA and VeRA settings and the conditioning."""
DIVINR_V4_ELEMENTS = DIVINR_V3_ELEMENTS + (
    Element("granularity", U8, "granularity", codes=GRANULARITY_CODES),
    Element("nola_scope", U8, "nola_scope", codes=GRANULARITY_CODES),
)
"""Format v4: v3's elements, then the granularity and the adapter scope."""


# -- cross-field rules --------------------------------------------------------------------------
def _sides_rule(v: Mapping[str, HeaderValue]) -> str | None:
    for side in ("width", "height"):
        if value_of(v, side, int) % BLOCK:
            return f"header {side} {v[side]} is not a multiple of {BLOCK}"
    return None


def _display_rule(v: Mapping[str, HeaderValue]) -> str | None:
    """The display window fits the coded frame, and the padding is less than one block."""
    for side in ("width", "height"):
        coded, shown = value_of(v, side, int), value_of(v, f"display_{side}", int)
        if not coded - BLOCK < shown <= coded:
            return f"header display_{side} {shown} is not in {coded - BLOCK + 1}..{coded} (coded {side} {coded})"
    return None


def _gop_rule(v: Mapping[str, HeaderValue]) -> str | None:
    if (value_of(v, "gop_size", int) - 1) % 4:
        return f"header gop_size {v['gop_size']} is not 1 + 4k as the Wan VAE needs"
    return None


def _fps_rule(v: Mapping[str, HeaderValue]) -> str | None:
    fps = Fraction(value_of(v, "fps_num", int), value_of(v, "fps_den", int))
    if not MIN_FPS <= fps <= MAX_FPS:
        return f"header frame rate {float(fps):g} fps outside {float(MIN_FPS):g}..{MAX_FPS}"
    return None


def _stages_rule(v: Mapping[str, HeaderValue]) -> str | None:
    lengths = [len(value_of(v, name, tuple)) for name in _STAGE_LISTS]
    if not 1 <= lengths[0] <= MAX_STAGES or any(n != lengths[0] for n in lengths):
        return f"the INR has {lengths} stage widths/strides/blocks, not 1..{MAX_STAGES} of each"
    return None


def _keyframes_rule(v: Mapping[str, HeaderValue]) -> str | None:
    """A keyframe stream's masks come from its keyframes: it signals no mask mode but the default."""
    if v["conditioning"] == Conditioning.JPEG and v["mask_mode"] != MaskMode.LEARNED:
        return f"header mask_mode {v['mask_mode']} in a JPEG-conditioned stream, whose masks come from its keyframes"
    return None


def _granularity_rule(v: Mapping[str, HeaderValue]) -> str | None:
    """Per-GoP adapters belong to per-GoP models; keyframes are per GoP already."""
    if v["nola_scope"] == Granularity.GOP and v["granularity"] != Granularity.GOP:
        return "header nola_scope gop with granularity sequence (one model per sequence has one adapter set)"
    if v["granularity"] == Granularity.GOP and v["conditioning"] != Conditioning.INR:
        return "header granularity gop in a JPEG-conditioned stream, which has no INR to split by GoP"
    return None


def _backbone_rule(v: Mapping[str, HeaderValue]) -> str | None:
    backbone, fingerprint = value_of(v, "backbone", str), value_of(v, "backbone_fingerprint", bytes)
    if not _BACKBONE_NAME.fullmatch(backbone):
        return f"backbone name {backbone!r} is not a preset name (letters, digits, '.', '_', '-')"
    if len(fingerprint) != FINGERPRINT_BYTES:
        return f"backbone fingerprint has {len(fingerprint)} bytes, not {FINGERPRINT_BYTES}"
    return None


def _no_backbone_rule(v: Mapping[str, HeaderValue]) -> str | None:
    if v["backbone"] or v["backbone_fingerprint"]:
        return "a pixel-INR stream names a backbone"
    return None


# -- the schemas, keyed by (format version, codec kind) -----------------------------------------
_DIVINR_RULES = (_sides_rule, _gop_rule, _fps_rule, _stages_rule, _backbone_rule)
# v1 to v3 stay readable (v1 streams display the coded size; v1 and v2 use NOLA and are
# INR-conditioned; all three code one INR and one adapter set per sequence); headers are written with v4.
DIVINR_V1: HeaderSchema[StreamHeader] = HeaderSchema(1, DIVINR_ELEMENTS, StreamHeader, _config_types, _DIVINR_RULES)
DIVINR_V2: HeaderSchema[StreamHeader] = HeaderSchema(
    2, DIVINR_V2_ELEMENTS, StreamHeader, _config_types, _DIVINR_RULES + (_display_rule,)
)
DIVINR_V3: HeaderSchema[StreamHeader] = HeaderSchema(
    3, DIVINR_V3_ELEMENTS, StreamHeader, _config_types, _DIVINR_RULES + (_display_rule, _keyframes_rule)
)
DIVINR_V4: HeaderSchema[StreamHeader] = HeaderSchema(
    FORMAT_VERSION, DIVINR_V4_ELEMENTS, StreamHeader, _config_types,
    _DIVINR_RULES + (_display_rule, _keyframes_rule, _granularity_rule),
)
_PIXEL_KIND = Element("kind", U8, "kind", codes={CodecKind.PIXEL_INR: 1})
_PIXEL_PARTS = {f.name for f in dataclasses.fields(PixelINRHeader)}


# Fields of INRConfig only the latent head reads (the RGB head ignores them): not sent in v2.
_LATENT_HEAD_ONLY = ("inr.out_channels", "inr.mask_channels")


def _in_pixel_header(element: Element) -> bool:
    return (
        element.path is not None and element.path.split(".")[0] in _PIXEL_PARTS and element.path not in _LATENT_HEAD_ONLY
    )


def _pixel_v2(element: Element) -> Element:
    """A DiV-INR element as pixel-INR v2 takes it: the INR head can only be the RGB one."""
    return replace(element, codes={"rgb": INR_HEAD_CODES["rgb"]}) if element.path == "inr.head" else element


PIXEL_INR_V2: HeaderSchema[PixelINRHeader] = HeaderSchema(
    2, (_PIXEL_KIND,) + tuple(_pixel_v2(e) for e in DIVINR_ELEMENTS[1:] if _in_pixel_header(e)), PixelINRHeader,
    _config_types, (_sides_rule, _fps_rule, _stages_rule),
)  # fmt: skip
# Read-only: v1 pixel-INR streams carry the DiV-INR v1 layout; the fields the pixel header has no
# place for were placeholders and are checked as before, then dropped.
PIXEL_INR_V1: HeaderSchema[PixelINRHeader] = HeaderSchema(
    1, (_PIXEL_KIND,) + tuple(e if _in_pixel_header(e) else replace(e, path=None) for e in DIVINR_ELEMENTS[1:]),
    PixelINRHeader, _config_types, (_sides_rule, _gop_rule, _fps_rule, _stages_rule, _no_backbone_rule),
)  # fmt: skip
HEADER_SCHEMAS: dict[SchemaKey, HeaderSchema[Any]] = {
    s.key: s for s in (DIVINR_V1, DIVINR_V2, DIVINR_V3, DIVINR_V4, PIXEL_INR_V1, PIXEL_INR_V2)
}
SCHEMAS = {key: schema.elements for key, schema in HEADER_SCHEMAS.items()}
"""What :func:`~divinr.compression.container.read_container` takes: the fields of every schema."""
SCHEMA_V1 = DIVINR_V1.elements
"""DiV-INR format v1's fields, for writing a container by hand (tests rewrite streams with it)."""
SCHEMA_V2 = DIVINR_V2.elements
"""DiV-INR format v2's fields, for the same use."""
SCHEMA_V3 = DIVINR_V3.elements
"""DiV-INR format v3's fields, for the same use."""
SCHEMA_V4 = DIVINR_V4.elements
"""DiV-INR format v4's fields (the ones DiV-INR streams are written with), for the same use."""


def writer_schema(header_type: type) -> HeaderSchema[Any]:
    """The schema headers of ``header_type`` are written with: its newest writable one."""
    return max((s for s in HEADER_SCHEMAS.values() if s.header is header_type and s.writable), key=lambda s: s.version)


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
    """A parsed stream: the header and its sections, still coded.

    ``inr_sections`` holds the sequence's INR section, or (granularity gop) one per GoP, in GoP
    order; ``adapter_sections`` none (no adapted layers), the sequence's one or one per GoP
    (adapter scope gop). A keyframe stream's ``keyframes_section`` replaces the INR sections.
    """

    header: Header
    inr_sections: tuple[bytes, ...]
    adapter_sections: tuple[bytes, ...]
    keyframes_section: bytes = b""

    @property
    def inr_section(self) -> bytes:
        """The INR section of a sequence-granularity stream (empty for keyframe streams)."""
        return _only(self.inr_sections, "INR")

    @property
    def adapter_section(self) -> bytes:
        """The adapter section of a stream with one adapter set (empty without adapters)."""
        return _only(self.adapter_sections, "adapter")


def _only(sections: tuple[bytes, ...], what: str) -> bytes:
    if len(sections) > 1:
        raise ValueError(f"the stream has one {what} section per GoP; index its {what.lower()}_sections")
    return sections[0] if sections else b""


def pack(
    header: Header,
    inr_tensors: Mapping[str, torch.Tensor],
    adapter_tensors: Mapping[str, torch.Tensor],
    keyframes: Sequence[bytes] = (),
) -> bytes:
    """Write a complete bitstream with one INR and one adapter set; ``adapter_tensors`` (in a
    section named after ``header.adapter``) empty for the pixel baseline or NOLA with b = 0.

    A JPEG-conditioned header takes ``keyframes`` (one JPEG file per GoP) and no INR tensors.
    Per-GoP streams are assembled from their coded sections by :func:`pack_sections`.
    """
    if isinstance(header, StreamHeader) and header.conditioning == Conditioning.JPEG:
        if inr_tensors:
            raise ValueError("a JPEG-conditioned stream carries keyframes, not INR tensors")
        from divinr.compression.jpeg import pack_keyframes

        return pack_sections(header, [], adapter_payload(header, adapter_tensors), pack_keyframes(keyframes))
    if keyframes:
        raise ValueError("keyframes need a JPEG-conditioned header")
    inr = [encode_tensors(inr_tensors, header.quant_bits)]
    return pack_sections(header, inr, adapter_payload(header, adapter_tensors))


def adapter_payload(header: Header, adapter_tensors: Mapping[str, torch.Tensor]) -> list[bytes]:
    """The coded adapter section of one adapter set, as :func:`pack_sections` takes it: none when
    there are no adapter tensors (the pixel baseline, NOLA with b = 0)."""
    if not adapter_tensors:
        return []
    if not isinstance(header, StreamHeader):
        raise ValueError("only DiV-INR streams carry adapter tensors")
    return [encode_tensors(adapter_tensors, header.quant_bits)]


def pack_sections(
    header: Header, inr: Sequence[bytes], adapter: Sequence[bytes], keyframes: bytes | None = None
) -> bytes:
    """Write a bitstream from coded sections (:func:`encode_tensors` payloads): ``inr`` the
    sequence's one or one per GoP, as the header's granularity says; ``adapter`` none, one, or
    one per GoP (its adapter scope); ``keyframes`` the keyframe section of a JPEG-conditioned
    header. The counts must be the ones the header implies."""
    schema = writer_schema(type(header))
    fields = schema.to_fields(header)
    inr_names, adapter_names, keyframed = _section_layout(schema, fields)
    if keyframed != (keyframes is not None):
        raise ValueError("a keyframe section goes with, and only with, a JPEG-conditioned header")
    if (len(inr), len(adapter)) != (len(inr_names), len(adapter_names)):
        raise ValueError(
            f"the header implies {len(inr_names)} INR and {len(adapter_names)} adapter sections, "
            f"got {len(inr)} and {len(adapter)}"
        )
    sections = [("keyframes", keyframes)] if keyframes is not None else list(zip(inr_names, inr))
    return write_container(schema.elements, fields, sections + list(zip(adapter_names, adapter)), version=schema.version)


def _read(data: bytes) -> tuple[HeaderSchema[Any], dict[str, HeaderValue], dict[str, bytes]]:
    """Container, header limits and section layout checked; sections still coded."""
    version, values, sections = read_container(data, SCHEMAS)
    schema = HEADER_SCHEMAS[version, value_of(values, "kind", int)]
    problem = schema.problem(values)
    if problem:
        raise BitstreamError(f"{problem}; the bitstream is corrupt")
    named = dict(sections)
    inr_names, adapter_names, keyframed = _section_layout(schema, values)
    expected = (["keyframes"] if keyframed else inr_names) + adapter_names
    if sorted(named) != sorted(expected):
        shown = expected if len(expected) <= 6 else [*expected[:3], "...", *expected[-2:]]
        raise BitstreamError(
            f"sections {sorted(named)[:6]}{'...' if len(named) > 6 else ''} disagree with the header, which "
            f"signals {'JPEG' if keyframed else 'INR'} conditioning and {adapter_names[0] if adapter_names else 'no'} "
            f"adapters, so implies {shown}; the bitstream is corrupt"
        )
    return schema, values, named


def _keyframe_conditioned(values: Mapping[str, HeaderValue]) -> bool:
    """Whether a stream conditions on JPEG keyframes (streams without the field: on an INR)."""
    return values.get("conditioning", Conditioning.INR) == Conditioning.JPEG


def _section_layout(schema: HeaderSchema[Any], values: Mapping[str, HeaderValue]) -> tuple[list[str], list[str], bool]:
    """The names of a stream's INR sections, of its adapter sections, and whether it has keyframes.

    DiV-INR streams have adapter sections, named after their family, exactly when they adapt
    layers (NOLA with b > 0); pixel-INR streams never do. Per-GoP INRs and adapters have one
    section per GoP (:func:`gop_section`), in GoP order.
    """
    keyframed = _keyframe_conditioned(values)
    gops = gop_count(value_of(values, "frames", int), value_of(values, "gop_size", int)) if "gop_size" in values else 1

    def names(kind: str, scope: str) -> list[str]:
        per_gop = values.get(scope, Granularity.SEQUENCE) == Granularity.GOP
        return [gop_section(kind, g) for g in range(gops)] if per_gop else [kind]

    inr = [] if keyframed else names("inr", "granularity")
    adapter = _adapter_family(schema, values)
    return inr, names(adapter, "nola_scope") if adapter else [], keyframed


def _adapter_family(schema: HeaderSchema[Any], values: Mapping[str, HeaderValue]) -> str | None:
    """The adapter family whose sections a stream carries, or None (see :func:`_section_layout`)."""
    if schema.kind != CodecKind.DIVINR or value_of(values, "nola_layers", int) == 0:
        return None
    codes = {code: name for name, code in ADAPTER_CODES.items()}
    adapter = codes[value_of(values, "adapter", int)] if "adapter" in values else "nola"
    return None if adapter == "nola" and value_of(values, "nola_bases", int) == 0 else adapter


def read_header_schema(data: bytes) -> tuple[HeaderSchema[Any], dict[str, HeaderValue]]:
    """The schema a stream was written with and its header fields, every one checked (torch-free)."""
    schema, values, _ = _read(data)
    return schema, values


def read_header(data: bytes) -> dict[str, HeaderValue]:
    """The header fields of a stream, every one checked against the decoder's limits.

    Needs neither torch nor diffusers, so showing a header takes milliseconds; the typed
    configs are built (and their own checks run) by :func:`unpack`.
    """
    return read_header_schema(data)[1]


def unpack(data: bytes) -> Bitstream:
    """Parse and validate the container and header; tensors are decoded by :func:`decode_tensors`."""
    schema, values, named = _read(data)
    inr_names, adapter_names, _ = _section_layout(schema, values)
    return Bitstream(
        schema.from_fields(values), tuple(named[n] for n in inr_names), tuple(named[n] for n in adapter_names),
        named.get("keyframes", b""),
    )


def bits_breakdown(data: bytes) -> dict[str, int]:
    """Bits by part: ``header`` (magic, version, fields, section count, CRC), ``inr`` or
    ``keyframes`` (the conditioning), and ``adapter`` (the adapter sections, whatever their
    family); 0 where a stream has none, each section's name and length prefix included, per-GoP
    sections summed; the parts sum to ``total`` = 8 x file size. The header and the section
    layout are checked first, so every section is one the header implies."""
    schema, values, named = _read(data)
    result = {"header": 0, "inr": 0, "keyframes": 0, "adapter": 0}
    for name, bits in bits_by_part(schema.elements, values, list(named.items())):  # file order
        kind = name.split(".")[0]
        result["adapter" if kind in ADAPTER_CODES else kind] += bits
    result["total"] = 8 * len(data)
    if sum(v for k, v in result.items() if k != "total") != result["total"]:
        raise BitstreamError("section sizes do not add up to the file size; the bitstream is corrupt")
    return result

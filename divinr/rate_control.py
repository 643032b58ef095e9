"""Rate control: the INR size that codes a sequence at a target bpp, chosen before training.

A DiV-INR stream is a header, the INR section and the adapter section. The header is known
exactly before training, and each section's size follows almost linearly from the shapes of
the tensors it codes (6-bit codes, range-coded with one histogram per tensor)::

    bits ~= header (exact) + inr.per_value x INR values + inr.per_tensor x INR tensors
                           + adapter.per_value x adapter values + adapter.per_tensor x ...

The per-value and per-tensor costs (the entropy of the trained, pruned codes and the
histogram/scale overhead of each tensor) are fitted by least squares on real streams
(:func:`fit_rate_model`; ``python -m benchmarks.rate_control calibrate``) and shipped as
``rate_model.json``. :func:`size_for_target` then searches INR sizes: the presets, and between
them a preset with every channel width scaled by ``s`` (:func:`scaled_inr`), whose exact
tensor shapes come from the architecture built on the meta device.

The model is only as good as its calibration: it was fitted at one quantisation width and one
pruning fraction, and :meth:`RateModel.check_applies` refuses others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
import torch

from divinr.compression.bitstream import StreamHeader, bits_breakdown, gop_section, unpack, writer_schema
from divinr.compression.container import header_bits, section_bits
from divinr.data.gop import inr_latent_frames
from divinr.errors import PresetError
from divinr.models.inr import INR_PRESETS, INRConfig, LatentINR, planned_inr
from divinr.rate import pixel_count

RATE_MODEL_NAME = "rate_model.json"
"""The shipped calibration, inside the ``divinr`` package."""

Shape = tuple[int, ...]

# Channel widths a width scale multiplies; strides, blocks and grid lengths stay the preset's.
_WIDTH_FIELDS = ("channels", "stage_channels", "grid_channels", "local_grid_channels")
_MIN_SCALE, _MAX_SCALE = 0.25, 2.0
_BISECTION_STEPS = 40


@dataclass(frozen=True)
class SectionModel:
    """Bits of one tensor section as ``per_value x values + per_tensor x tensors``."""

    per_value: float
    per_tensor: float = 0.0

    def bits(self, shapes: Iterable[Shape]) -> float:
        shapes = list(shapes)
        return self.per_value * values_in(shapes) + self.per_tensor * len(shapes)


@dataclass(frozen=True)
class RateEstimate:
    """Predicted bits by part (``total`` is their sum) and the bpp they make."""

    header: int
    inr: float
    adapter: float
    pixels: int

    @property
    def total(self) -> float:
        return self.header + self.inr + self.adapter

    @property
    def bpp(self) -> float:
        return self.total / self.pixels


@dataclass(frozen=True)
class RateModel:
    """Calibrated section costs and the settings they were measured at.

    Attributes:
        inr, adapter: the two sections' costs (payload only: section framing is counted exactly).
        quant_bits: code width of the calibration streams.
        prune_fraction: fraction of INR decoder weights pruned in them.
        streams: what the fit used, one ``name: sha256`` line per stream.
    """

    inr: SectionModel
    adapter: SectionModel
    quant_bits: int
    prune_fraction: float
    streams: tuple[str, ...] = ()

    def check_applies(self, quant_bits: int, prune_fraction: float) -> None:
        """Refuse settings the calibration never saw: the per-value cost depends on both."""
        if quant_bits != self.quant_bits or not math.isclose(prune_fraction, self.prune_fraction, abs_tol=1e-6):
            raise PresetError(
                f"the rate model was calibrated at {self.quant_bits}-bit codes and {self.prune_fraction:.0%} pruning, "
                f"not {quant_bits} bits and {prune_fraction:.0%}; choose the INR size by preset, or recalibrate on "
                "streams made with these settings (python -m benchmarks.rate_control calibrate)"
            )

    def predict(self, header: StreamHeader, adapter_shapes: Sequence[Shape]) -> RateEstimate:
        """Bits of the stream ``header`` describes, with adapter tensors of ``adapter_shapes``."""
        schema = writer_schema(StreamHeader)
        inr = _sections(self.inr.bits(inr_shapes(header.inr, header.latent_size)), "inr", header, header.per_gop_inr)
        adapter = (
            _sections(self.adapter.bits(adapter_shapes), header.adapter, header, header.per_gop_adapters)
            if adapter_shapes else 0.0
        )  # fmt: skip
        return RateEstimate(
            header=header_bits(schema.elements, schema.to_fields(header)),
            inr=inr,
            adapter=adapter,
            pixels=pixel_count(header.frames, header.display_width, header.display_height),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RateModel:
        values: dict[str, Any] = json.loads(text)
        return cls(
            inr=SectionModel(**values["inr"]), adapter=SectionModel(**values["adapter"]),
            quant_bits=values["quant_bits"], prune_fraction=values["prune_fraction"], streams=tuple(values["streams"]),
        )  # fmt: skip


def _sections(bits: float, name: str, header: StreamHeader, per_gop: bool) -> float:
    """Bits of one section of ``bits`` payload, or of one per GoP (each with its own name and length)."""
    names = [gop_section(name, g) for g in range(header.num_gops)] if per_gop else [name]
    return sum(bits + section_bits(n, b"") for n in names)


def shipped_rate_model() -> RateModel:
    """The calibration that ships with divinr (fitted on the streams it lists)."""
    return RateModel.from_json(resources.files("divinr").joinpath(RATE_MODEL_NAME).read_text())


def values_in(shapes: Iterable[Shape]) -> int:
    """Number of scalars in tensors of ``shapes``."""
    return sum(math.prod(s) for s in shapes)


def inr_shapes(config: INRConfig, latent_size: tuple[int, int]) -> list[Shape]:
    """Shapes of the tensors an INR section codes, built on the meta device (no memory, exact)."""
    with torch.device("meta"):
        return [tuple(t.shape) for t in LatentINR(config, latent_size).state_dict().values()]


def adapter_shapes(header: StreamHeader) -> list[Shape]:
    """Shapes of a NOLA stream's adapter section: ``alpha`` and ``beta``, ``(b,)`` each, per
    adapted layer (what the header alone says; other families' shapes depend on the backbone).

    Raises:
        PresetError: a LoRA or VeRA stream.
    """
    if header.adapter != "nola":
        raise PresetError(f"a {header.adapter} stream's adapter shapes depend on the backbone; read them from the adapted model")
    return [(header.nola.num_bases,)] * (2 * header.nola_layers) if header.nola.num_bases else []


def fit_rate_model(streams: Mapping[str, bytes], *, prune_fraction: float) -> RateModel:
    """Least-squares section costs over real DiV-INR streams.

    The INR cost is fitted per value and per tensor (the streams must span sizes, or the two are
    confounded); the adapter cost per value only, since every calibration stream adapts the same
    layers (with NOLA: the calibration is NOLA's, and LoRA / VeRA coefficients are assumed to cost
    the same per value). ``prune_fraction`` is the one setting a stream does not record.

    Raises:
        PresetError: fewer than two streams, streams of different code widths, or LoRA / VeRA streams.
    """
    if len(streams) < 2:
        raise PresetError(f"a rate model needs at least two calibration streams, got {len(streams)}")
    rows, inr_bits, adapter_values, adapter_bits, widths = [], [], 0, 0, set()
    for data in streams.values():
        header = unpack(data).header
        bits = bits_breakdown(data)
        shapes = inr_shapes(header.inr, header.latent_size)
        rows.append([values_in(shapes), len(shapes)])
        inr_bits.append(bits["inr"] - section_bits("inr", b""))
        if bits["adapter"]:
            adapter_values += values_in(adapter_shapes(header))
            adapter_bits += bits["adapter"] - section_bits(header.adapter, b"")
        widths.add(header.quant_bits)
    if len(widths) != 1:
        raise PresetError(f"calibration streams mix code widths {sorted(widths)}; fit one width at a time")
    (per_value, per_tensor), *_ = np.linalg.lstsq(np.array(rows, float), np.array(inr_bits, float), rcond=None)
    return RateModel(
        inr=SectionModel(float(per_value), float(per_tensor)),
        adapter=SectionModel(adapter_bits / adapter_values if adapter_values else 0.0),
        quant_bits=widths.pop(),
        prune_fraction=prune_fraction,
        streams=tuple(f"{name}: {hashlib.sha256(data).hexdigest()}" for name, data in streams.items()),
    )


def scaled_inr(config: INRConfig, scale: float) -> INRConfig:
    """``config`` with every channel width multiplied by ``scale`` (rounded, at least 1)."""

    def width(c: int) -> int:
        return max(1, round(c * scale))

    values = {name: getattr(config, name) for name in _WIDTH_FIELDS}
    return replace(config, **{k: tuple(map(width, v)) if isinstance(v, tuple) else width(v) for k, v in values.items()})


@dataclass(frozen=True)
class SizeChoice:
    """The INR size picked for a target: ``config`` is ``inr_config(preset, **overrides)`` for the
    sequence, i.e. ``preset`` with its widths scaled by ``scale``."""

    preset: str
    scale: float
    overrides: dict[str, Any]
    config: INRConfig
    estimate: RateEstimate
    parameters: int

    def describe(self) -> str:
        size = self.preset if self.scale == 1.0 else f"{self.preset} x{self.scale:.3f}"
        return f"INR {size} ({self.parameters:,} parameters), predicted {self.estimate.bpp:.5f} bpp"


def size_for_target(
    target_bpp: float,
    header: StreamHeader,
    adapter: Sequence[Shape],
    *,
    model: RateModel | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SizeChoice:
    """The INR size whose predicted rate is nearest ``target_bpp`` for the stream ``header`` plans.

    The largest preset predicted at or below the target is scaled up towards it (below the
    smallest preset, the smallest is scaled down), so a size between two presets keeps the
    smaller one's depth. ``overrides`` (INRConfig fields, e.g. strides for tiny frames) apply
    to every candidate before scaling.

    Raises:
        PresetError: a target outside what the scaled presets reach, with the reachable range.
    """
    model = model or shipped_rate_model()
    if not target_bpp > 0:
        raise PresetError(f"target bpp must be positive, got {target_bpp}")
    overrides = dict(overrides or {})
    latent = inr_latent_frames(header.frames, header.gop_size, per_gop=header.per_gop_inr)

    def estimate(preset: str, scale: float) -> tuple[RateEstimate, INRConfig]:
        config = scaled_inr(planned_inr(preset, overrides, latent, header.latent_size), scale)
        return model.predict(replace(header, inr=config), adapter), config

    presets = list(INR_PRESETS)
    at_one = [estimate(p, 1.0)[0].bpp for p in presets]
    below = [i for i, bpp in enumerate(at_one) if bpp <= target_bpp]
    preset = presets[below[-1]] if below else presets[0]
    low, high = (1.0, _MAX_SCALE) if below else (_MIN_SCALE, 1.0)
    smallest = estimate(presets[0], _MIN_SCALE)[0]
    reach = (smallest.bpp, estimate(presets[-1], _MAX_SCALE)[0].bpp)
    if not reach[0] <= target_bpp <= reach[1]:
        raise PresetError(
            f"target {target_bpp:g} bpp is outside what the INR sizes reach here, {reach[0]:.4g}..{reach[1]:.4g} bpp "
            f"({smallest.pixels:,} pixels; header and adapters alone take "
            f"{(smallest.header + smallest.adapter) / smallest.pixels:.4g} bpp); pick a target in that range, or "
            "change the adapters (nola.num_bases), the number of frames or the resolution"
        )

    def bpp_at(scale: float) -> float:
        return estimate(preset, scale)[0].bpp

    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if bpp_at(middle) <= target_bpp else (low, middle)
    scale = min((low, high), key=lambda s: abs(bpp_at(s) - target_bpp))
    chosen, config = estimate(preset, scale)
    base = planned_inr(preset, overrides, latent, header.latent_size)
    widths = {k: getattr(config, k) for k in _WIDTH_FIELDS if getattr(config, k) != getattr(base, k)}
    return SizeChoice(
        preset=preset, scale=1.0 if not widths else round(scale, 6), overrides={**overrides, **widths}, config=config, estimate=chosen,
        parameters=values_in(inr_shapes(config, header.latent_size)),
    )  # fmt: skip

"""The DiV-INR decoder: bitstream + public backbone -> video (paper Eq. 1).

    header      --> INR architecture, adapter family and settings, geometry, sampler, conditioning
    "inr"       --> dequantised INR --g(f)--> (y, M) per GoP (granularity gop: each GoP its own
                    INR, at coordinates over the GoP alone)
    "keyframes" --> (instead of "inr") per GoP its JPEG --VAE--> (y, M) on its first latent frame
    adapter     --> NOLA coefficients / LoRA / VeRA tensors --merge into W0--> adapted DiT
                    (adapter scope gop: before each GoP, W0 restored and that GoP's merged)
    per GoP: z_1 (seeded) --UniPC(DiT(cat(z, M, y)))--> z_0 --VAE--> frames (padding trimmed)

The encoder reconstructs through this same code, so "what the encoder saw" and "what a decoder
in another process produces" are the same computation.

Before anything is built the decoder checks that the stream fits: the decoded video against a
memory budget (:func:`memory_budget`, default 8 GiB; ``divinr decode --max-memory``), and the
GoP length, latent size and conditioning widths against the backbone's transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from divinr.compression.bitstream import (
    MAX_INR_PARAMETERS,
    Bitstream,
    CodecKind,
    Conditioning,
    Header,
    MaskMode,
    StreamHeader,
    decode_tensors,
    unpack,
)
from divinr.compression.jpeg import check_jpeg, decode_jpeg, split_keyframes
from divinr.data.gop import GoPSpan, gop_coordinates, plan_gops
from divinr.errors import BitstreamError, DivinrError, PresetError
from divinr.inference.sampler import SamplerConfig, initial_noise, sample
from divinr.models.adapters import (
    adapter_layers,
    adapter_parameters,
    eject_adapters,
    load_adapter_state_dict,
    merge_adapters,
    restore_layers,
    snapshot_layers,
)
from divinr.models.backbone import Backbone, backbone_fingerprint
from divinr.models.inr import LatentINR, count_parameters, dit_conditioning
from divinr.models.keyframes import keyframe_conditioning, keyframe_latent


DEFAULT_MEMORY_BUDGET = 8 * 2**30
Conditioner = Callable[[GoPSpan, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(y, M) in DiT layout for one GoP, from its span and its latent coordinates (see :func:`stream_conditioner`);
the one :func:`prepare_stream` returns also merges the GoP's adapters first where each GoP has its own."""
_MEMORY_BUDGET: ContextVar[int] = ContextVar("decode_memory_budget", default=DEFAULT_MEMORY_BUDGET)


@contextmanager
def memory_budget(nbytes: int) -> Iterator[None]:
    """Let decodes inside the block hold up to ``nbytes`` of decoded video (default 8 GiB)."""
    if nbytes <= 0:
        raise PresetError(f"the decode memory budget must be positive, got {nbytes} bytes")
    token = _MEMORY_BUDGET.set(nbytes)
    try:
        yield
    finally:
        _MEMORY_BUDGET.reset(token)


def _first_gop(header: StreamHeader) -> GoPSpan:
    """The sequence's first GoP, its longest."""
    return plan_gops(min(header.frames, header.gop_size), header.gop_size)[0]


def decoded_video_bytes(header: Header, held_frames: int | None = None) -> int:
    """Bytes of pixels the decoder holds: ``held_frames`` output frames (default all) plus the
    longest GoP's VAE output, in float32.

    A lower bound of the peak (weights and activations come on top), but one that grows with
    exactly the fields a hostile header inflates: frames, width and height. A streaming decode
    holds no output frames (``held_frames=0``): one GoP at a time.
    """
    # The pixel INR renders straight into the output (one frame of slack, as before it had no GoPs).
    working = _first_gop(header).num_padded if header.kind == CodecKind.DIVINR else 1
    held = header.frames if held_frames is None else held_frames
    return (held + working) * 3 * header.height * header.width * 4


def check_decode_memory(header: Header, budget: int | None = None, held_frames: int | None = None) -> None:
    """Refuse, before any work, a decode that holds more than ``budget`` (default: the current one)
    of pixels (see :func:`decoded_video_bytes`)."""
    budget = _MEMORY_BUDGET.get() if budget is None else budget
    needed = decoded_video_bytes(header, held_frames)
    if needed > budget:
        held = header.frames if held_frames is None else held_frames
        enough = math.ceil(needed / 2**30 * 100) / 100  # GiB, rounded up to 0.01
        raise DivinrError(
            f"decoding needs at least {needed:,} bytes ({held} frames of {header.width}x{header.height} "
            f"in float32), more than the memory budget of {budget:,} bytes; raise it with --max-memory {enough:g} "
            "(GiB, divinr decode), decode a range with --frames, or use memory_budget() (Python)"
        )


def frame_range(header: Header, frames: tuple[int, int] | None) -> tuple[int, int]:
    """The frames ``[start, stop)`` a decode returns (``None``: all), checked against the stream."""
    if frames is None:
        return 0, header.frames
    start, stop = frames
    if not 0 <= start < stop <= header.frames:
        raise DivinrError(
            f"frames {start}:{stop} are not a non-empty range inside the stream's 0:{header.frames}; "
            f"give A:B with 0 <= A < B <= {header.frames}"
        )
    return start, stop


def check_capacity(backbone: Backbone, header: StreamHeader) -> None:
    """Refuse GoPs and sizes the transformer's RoPE tables cannot index, and conditioning widths
    its input layer does not take, instead of failing inside the model."""
    config = backbone.transformer.config
    patch_t, patch_h, patch_w = config.patch_size
    positions = config.rope_max_seq_len
    latent_frames = _first_gop(header).num_latent
    h, w = header.latent_size
    if latent_frames > positions * patch_t or h > positions * patch_h or w > positions * patch_w:
        raise BitstreamError(
            f"the stream's GoPs of {latent_frames} latent frames of {h}x{w} exceed what backbone "
            f"{header.backbone!r} can take ({positions} positions per axis, patch {tuple(config.patch_size)}); "
            "the bitstream is corrupt"
        )
    y, m = header.inr.out_channels, header.inr.mask_channels
    if y != config.out_channels or config.out_channels + m + y != config.in_channels:
        raise BitstreamError(
            f"the stream's conditioning has {y} + {m} channels, backbone {header.backbone!r} takes "
            f"{config.out_channels} + {config.in_channels - 2 * config.out_channels}; the bitstream is corrupt"
        )


@dataclass
class Decoded:
    """Decoder output: frames (T, 3, H, W) in [0, 1] on CPU, the sampled latents per GoP, fps."""

    frames: torch.Tensor
    latents: list[torch.Tensor]
    fps: float


def _inr_architecture(stream: Bitstream) -> LatentINR:
    """The stream's INR architecture on the meta device, after refusing an impossible or oversized
    one from a corrupt header before any memory is allocated (the limit counts every GoP's INR)."""
    header = stream.header
    size = header.latent_size if header.kind == CodecKind.DIVINR else (header.height, header.width)
    try:
        with torch.device("meta"):
            probe = LatentINR(header.inr, size)
    except PresetError as err:
        raise BitstreamError(f"the header describes an impossible INR ({err}); the bitstream is corrupt") from None
    total = count_parameters(probe) * len(stream.inr_sections)
    if total > MAX_INR_PARAMETERS:
        raise BitstreamError(
            f"the header describes {len(stream.inr_sections)} INR(s) of {count_parameters(probe):,} parameters, over "
            f"{MAX_INR_PARAMETERS:,} in all; the bitstream is corrupt"
        )
    return probe


def build_inr_from_stream(stream: Bitstream, gop: int = 0) -> LatentINR:
    """Rebuild the INR (section ``gop`` of a stream with one per GoP) from the header and load its
    dequantised tensors; the architecture is checked first (:func:`_inr_architecture`)."""
    header = stream.header
    probe = _inr_architecture(stream)
    inr = LatentINR(header.inr, probe.output_size)
    expected = {name: tuple(t.shape) for name, t in inr.state_dict().items()}
    inr.load_state_dict(decode_tensors(stream.inr_sections[gop], expected, header.quant_bits))
    return inr.eval()


def stream_conditioner(stream: Bitstream, backbone: Backbone, device: torch.device | str = "cpu") -> Conditioner:
    """How the stream conditions each GoP: its INR at the GoP's latent coordinates, or the GoP's
    JPEG keyframe through ``backbone``'s VAE (:mod:`divinr.models.keyframes`).

    The INR is decoded here (where each GoP has its own, their architecture is checked here and
    each is decoded when its GoP is, holding one at a time); the keyframe files are split and
    their headers checked here, but each is decoded only when its GoP is, so a range decode
    touches only its GoPs' sections.
    """
    header = stream.header
    if header.conditioning == Conditioning.JPEG:
        size = header.display_width, header.display_height
        files = split_keyframes(stream.keyframes_section, len(plan_gops(header.frames, header.gop_size)))
        for index, data in enumerate(files):
            check_jpeg(data, *size, index)

        def keyframes(span: GoPSpan, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            image = decode_jpeg(files[span.index], *size, span.index)
            latent = keyframe_latent(backbone, image, header.width, header.height)
            return keyframe_conditioning(latent.to(device), span.num_latent)

        return keyframes
    ones_mask = header.mask_mode == MaskMode.ONES
    if not header.per_gop_inr:
        inr = build_inr_from_stream(stream).to(device)
        return lambda span, f: dit_conditioning(inr, f.to(device), ones_mask=ones_mask)
    _inr_architecture(stream)
    current: dict[int, LatentINR] = {}

    def own_inr(span: GoPSpan, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if span.index not in current:
            current.clear()
            current[span.index] = build_inr_from_stream(stream, span.index).to(device)
        return dit_conditioning(current[span.index], f.to(device), ones_mask=ones_mask)

    return own_inr


def _adapted_layers(backbone: Backbone, header: StreamHeader) -> dict[str, tuple[int, ...]]:
    """Inject the stream's adapter family as the header describes; the shapes of its tensors."""
    if adapter_layers(backbone.transformer):
        raise ValueError("the backbone already carries adapters; decode with a freshly loaded backbone")
    names = backbone.adapt(header.adapter_config)
    if len(names) != header.nola_layers:
        raise BitstreamError(
            f"the stream adapts {header.nola_layers} layers but backbone {header.backbone!r} offers {len(names)}; "
            "decode with the backbone it was encoded for"
        )
    return {k: tuple(v.shape) for k, v in adapter_parameters(backbone.transformer).items()}


def install_adapters(backbone: Backbone, stream: Bitstream) -> None:
    """Inject the stream's adapter family as the header describes, load its tensors and merge them into W0
    (VeRA's projections regenerate from the header's seed; NOLA's bases are freed after merging)."""
    header = stream.header
    expected = _adapted_layers(backbone, header)
    if expected:
        load_adapter_state_dict(backbone.transformer, decode_tensors(stream.adapter_section, expected, header.quant_bits))
        merge_adapters(backbone.transformer)


def gop_adapters(backbone: Backbone, stream: Bitstream) -> Callable[[int], None]:
    """For a stream whose GoPs have their own adapters: a switch that gives the DiT the weights of
    one GoP, W0 restored exactly (from a CPU snapshot of the adapted layers) and that GoP's adapters
    decoded and merged (:func:`~divinr.models.adapters.restore_layers`), so any GoP decodes as it
    would alone and a range decode reads only its GoPs' sections."""
    header = stream.header
    expected = _adapted_layers(backbone, header)
    names = list(adapter_layers(backbone.transformer))
    eject_adapters(backbone.transformer)  # never merged: exact
    snapshot = snapshot_layers(backbone.transformer, names)
    current: list[int] = []

    def switch(gop: int) -> None:
        if current == [gop] or not names:
            return
        restore_layers(backbone.transformer, snapshot)
        current.clear()
        _adapted_layers(backbone, header)
        tensors = decode_tensors(stream.adapter_sections[gop], expected, header.quant_bits)
        load_adapter_state_dict(backbone.transformer, tensors)
        merge_adapters(backbone.transformer)
        current.append(gop)

    return switch


def check_backbone(backbone: Backbone, stream: Bitstream, fingerprint: bytes | None = None) -> None:
    """Refuse to decode with a backbone other than the encoder's (the output would be garbage)."""
    header = stream.header
    if backbone.preset.name != header.backbone:
        raise BitstreamError(
            f"the stream was encoded with backbone {header.backbone!r}, not {backbone.preset.name!r}; "
            f"decode with --backbone {header.backbone}"
        )
    fingerprint = backbone_fingerprint(backbone) if fingerprint is None else fingerprint
    if fingerprint != header.backbone_fingerprint:
        raise BitstreamError(
            f"backbone {header.backbone!r} has different weights (fingerprint {fingerprint.hex()[:12]} vs the "
            f"stream's {header.backbone_fingerprint.hex()[:12]}); use the exact weights the encoder used"
        )


def sample_gop(
    backbone: Backbone,
    y: torch.Tensor,
    m: torch.Tensor,
    config: SamplerConfig,
    gop_index: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Sample GoP ``gop_index``'s clean latents (1, 16, T', h, w) from its seeded noise, given (y, M):
    the one sampling call of the decoder, so anything that measures "what the decoder would give
    with this conditioning" runs exactly it."""
    noise = initial_noise(tuple(y.shape), config, gop_index).to(y.device)
    return sample(
        lambda x, t: backbone.predict(x, y.to(x.dtype), m.to(x.dtype), t),
        noise,
        config,
        model_dtype=backbone.model_dtype,
        progress=progress,
    )


def _real_frames(backbone: Backbone, z: torch.Tensor, span: GoPSpan, header: StreamHeader) -> torch.Tensor:
    """The VAE decode of one GoP's latents ``z``: its real frames, cropped to the display window
    (the encoder pads at the bottom and right), on CPU."""
    return backbone.decode(z)[: span.num_real, :, : header.display_height, : header.display_width].cpu()


def decode_gops(
    backbone: Backbone,
    stream: Bitstream,
    condition: Conditioner,
    *,
    frames: tuple[int, int] | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Sample only the GoPs that cover ``frames`` (default all) with the adapted backbone.

    Each GoP needs nothing from another: its conditioning is the INR at its own latent
    coordinates (or its own keyframe) and its noise is seeded by its index. So any range decodes
    bit-identically to the same frames of a full decode, at the cost of the GoPs it touches.

    Yields:
        ``(index of its first frame, frames (n, 3, H, W) in [0, 1] on CPU, the GoP's latents)``
        per GoP, in order; the frames are those of the range inside the GoP, at the display size.
    """
    header = stream.header
    start, stop = frame_range(header, frames)
    spans = plan_gops(header.frames, header.gop_size)
    coordinates = gop_coordinates(spans, per_gop=header.per_gop_inr)
    chosen = [(s, f) for s, f in zip(spans, coordinates) if s.start < stop and s.start + s.num_real > start]
    with tqdm(total=len(chosen) * header.sampler.steps, desc="decode", unit="step", disable=not progress) as bar:
        for span, f in chosen:
            with torch.no_grad():  # per GoP, not across the yield: the caller's grad mode stays its own
                y, m = condition(span, f)
                z0 = sample_gop(backbone, y, m, header.sampler, span.index, progress=bar.update)
                video = _real_frames(backbone, z0[0], span, header)
            first, last = max(start, span.start), min(stop, span.start + span.num_real)
            yield first, video[first - span.start : last - span.start], z0[0].cpu()


def reconstruct(
    backbone: Backbone,
    stream: Bitstream,
    condition: Conditioner,
    *,
    frames: tuple[int, int] | None = None,
    progress: bool = True,
) -> Decoded:
    """All frames of ``frames`` (default the whole stream) in one tensor (see :func:`decode_gops`)."""
    header = stream.header
    start, stop = frame_range(header, frames)
    out = torch.empty((stop - start, 3, header.display_height, header.display_width), dtype=torch.float32)
    latents = []
    for first, video, z0 in decode_gops(backbone, stream, condition, frames=frames, progress=progress):
        out[first - start : first - start + video.shape[0]] = video
        latents.append(z0)
    return Decoded(out, latents, float(header.fps))


def _require_latent_conditioning(header: Header) -> None:
    if header.kind != CodecKind.DIVINR:
        raise BitstreamError(
            f"a {header.kind.name} stream carries no latent conditioning; decode it with divinr.codec.decompress"
        )


@torch.no_grad()
def render_conditioning(backbone: Backbone, stream: Bitstream, *, device: torch.device | str = "cpu") -> Decoded:
    """Decode a DiV-INR stream's conditioning ``y`` straight through the VAE, without diffusion.

    The "INR only" reference of the quality benchmark: the same bits, no generative prior and no
    adapters (so ``backbone`` need not be fresh). Comparing it with :func:`decode_stream` measures
    what the diffusion model adds to the INR's own prediction.
    """
    header = stream.header
    _require_latent_conditioning(header)
    check_decode_memory(header)
    condition = stream_conditioner(stream, backbone, device)
    spans = plan_gops(header.frames, header.gop_size)
    frames = torch.empty((header.frames, 3, header.display_height, header.display_width), dtype=torch.float32)
    latents = []
    for span, f in zip(spans, gop_coordinates(spans, per_gop=header.per_gop_inr)):
        y, _ = condition(span, f)
        latents.append(y[0].cpu())
        frames[span.start : span.start + span.num_real] = _real_frames(backbone, y[0], span, header)
    return Decoded(frames, latents, float(header.fps))


def prepare_stream(
    stream: Bitstream, backbone: Backbone, fingerprint: bytes | None = None, device: torch.device | str = "cpu"
) -> Conditioner:
    """The stream's conditioning (:func:`stream_conditioner`), after every check against ``backbone``
    (freshly loaded, no adapters) and with the stream's adapters merged into it: ready for
    :func:`decode_gops`. The caller has checked the memory budget (:func:`check_decode_memory`),
    before loading the backbone."""
    condition = stream_conditioner(stream, backbone, device)
    check_backbone(backbone, stream, fingerprint)
    check_capacity(backbone, stream.header)
    if not stream.header.per_gop_adapters:
        install_adapters(backbone, stream)
        return condition
    switch = gop_adapters(backbone, stream)

    def adapted(span: GoPSpan, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        switch(span.index)
        return condition(span, f)

    return adapted


def decode_stream(
    data: bytes,
    backbone: Backbone,
    *,
    frames: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    fingerprint: bytes | None = None,
) -> Decoded:
    """Decode a DiV-INR bitstream (or the range ``frames`` of it); ``backbone`` freshly loaded."""
    stream = unpack(data)
    _require_latent_conditioning(stream.header)
    start, stop = frame_range(stream.header, frames)
    check_decode_memory(stream.header, held_frames=stop - start)
    condition = prepare_stream(stream, backbone, fingerprint, device)
    return reconstruct(backbone, stream, condition, frames=frames, progress=progress)

"""The DiV-INR decoder: bitstream + public backbone -> video (paper Eq. 1).

    header --> INR architecture, NOLA settings, geometry, sampler
    "inr"  --> dequantised INR --g(f)--> (y, M) per GoP
    "nola" --> coefficients --merge into W0--> adapted DiT
    per GoP: z_1 (seeded) --UniPC(DiT(cat(z, M, y)))--> z_0 --VAE--> frames (padding trimmed)

The encoder reconstructs through this same code, so "what the encoder saw" and "what a decoder
in another process produces" are the same computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from divinr.compression.bitstream import MAX_INR_PARAMETERS, Bitstream, CodecKind, MaskMode, decode_tensors, unpack
from divinr.data.gop import GoPSpan, latent_coordinates, plan_gops
from divinr.errors import BitstreamError, PresetError
from divinr.inference.sampler import initial_noise, sample
from divinr.models.backbone import Backbone, backbone_fingerprint
from divinr.models.inr import LatentINR, count_parameters, dit_conditioning
from divinr.models.nola import (
    NOLALayer,
    inject_nola,
    load_nola_state_dict,
    merge_nola,
    nola_state_dict,
    release_nola_bases,
)


@dataclass
class Decoded:
    """Decoder output: frames (T, 3, H, W) in [0, 1] on CPU, the sampled latents per GoP, fps."""

    frames: torch.Tensor
    latents: list[torch.Tensor]
    fps: float


def build_inr_from_stream(stream: Bitstream) -> LatentINR:
    """Rebuild the INR from the header and load its dequantised tensors.

    The architecture is first built on the meta device, so an impossible or oversized one from
    a corrupt header is refused before any memory is allocated.
    """
    header = stream.header
    size = header.latent_size if header.kind == CodecKind.DIVINR else (header.height, header.width)
    try:
        with torch.device("meta"):
            probe = LatentINR(header.inr, size)
    except PresetError as err:
        raise BitstreamError(f"the header describes an impossible INR ({err}); the bitstream is corrupt") from None
    if count_parameters(probe) > MAX_INR_PARAMETERS:
        raise BitstreamError(f"the header describes an INR over {MAX_INR_PARAMETERS} parameters; the bitstream is corrupt")
    inr = LatentINR(header.inr, size)
    expected = {name: tuple(t.shape) for name, t in inr.state_dict().items()}
    inr.load_state_dict(decode_tensors(stream.inr_section, expected, header.quant_bits))
    return inr.eval()


def install_adapters(backbone: Backbone, stream: Bitstream) -> None:
    """Inject NOLA as the header describes, load the coefficients, merge them into W0, free the bases."""
    header = stream.header
    if any(isinstance(m, NOLALayer) for m in backbone.transformer.modules()):
        raise ValueError("the backbone already carries NOLA adapters; decode with a freshly loaded backbone")
    names = inject_nola(backbone.transformer, header.nola, extra_targets=backbone.nola_extra_targets())
    if len(names) != header.nola_layers:
        raise BitstreamError(
            f"the stream adapts {header.nola_layers} layers but backbone {header.backbone!r} offers {len(names)}; "
            "decode with the backbone it was encoded for"
        )
    if names:
        expected = {k: tuple(v.shape) for k, v in nola_state_dict(backbone.transformer).items()}
        load_nola_state_dict(backbone.transformer, decode_tensors(stream.nola_section, expected, header.quant_bits))
        merge_nola(backbone.transformer)
        release_nola_bases(backbone.transformer)


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


@torch.no_grad()
def reconstruct(
    backbone: Backbone,
    stream: Bitstream,
    inr: LatentINR,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_gop: Callable[[GoPSpan, torch.Tensor], None] | None = None,
) -> Decoded:
    """Sample every GoP with the adapted backbone (NOLA already merged) and decode to frames."""
    header = stream.header
    spans = plan_gops(header.frames, header.gop_size)
    coords = latent_coordinates(spans)
    h, w = header.latent_size
    inr = inr.to(device)
    model_dtype = backbone.model_dtype
    frames = torch.empty((header.frames, 3, header.height, header.width), dtype=torch.float32)
    latents = []
    steps = len(spans) * header.sampler.steps
    with tqdm(total=steps, desc="decode", unit="step", disable=not progress) as bar:
        for span, f in zip(spans, coords):
            y, m = dit_conditioning(inr, f.to(device), ones_mask=header.mask_mode == MaskMode.ONES)
            noise = initial_noise((1, y.shape[1], span.num_latent, h, w), header.sampler, span.index).to(device)
            z0 = sample(
                lambda x, t: backbone.predict(x, y.to(x.dtype), m.to(x.dtype), t),
                noise,
                header.sampler,
                model_dtype=model_dtype,
                progress=bar.update,
            )
            video = backbone.decode(z0[0])[: span.num_real].cpu()
            latents.append(z0[0].cpu())
            frames[span.start : span.start + span.num_real] = video
            if on_gop is not None:
                on_gop(span, video)
    return Decoded(frames, latents, float(header.fps))


@torch.no_grad()
def render_conditioning(backbone: Backbone, stream: Bitstream, *, device: torch.device | str = "cpu") -> Decoded:
    """Decode a DiV-INR stream's conditioning ``y`` straight through the VAE, without diffusion.

    The "INR only" reference of the quality benchmark: the same bits, no generative prior and no
    NOLA (so ``backbone`` need not be fresh). Comparing it with :func:`decode_stream` measures
    what the diffusion model adds to the INR's own prediction.
    """
    header = stream.header
    if header.kind != CodecKind.DIVINR:
        raise BitstreamError("only DiV-INR streams carry latent conditioning")
    inr = build_inr_from_stream(stream).to(device)
    spans = plan_gops(header.frames, header.gop_size)
    frames = torch.empty((header.frames, 3, header.height, header.width), dtype=torch.float32)
    latents = []
    for span, f in zip(spans, latent_coordinates(spans)):
        y, _ = dit_conditioning(inr, f.to(device), ones_mask=True)
        latents.append(y[0].cpu())
        frames[span.start : span.start + span.num_real] = backbone.decode(y[0])[: span.num_real].cpu()
    return Decoded(frames, latents, float(header.fps))


def render_pixel_inr(stream: Bitstream, inr: LatentINR, *, device: torch.device | str = "cpu") -> Decoded:
    """Decode a pixel-space INR stream (the HiNeRV-recipe baseline): evaluate g at every frame."""
    from divinr.training.hinerv import render

    return Decoded(render(inr.to(device), stream.header.frames), [], float(stream.header.fps))


def decode_stream(
    data: bytes,
    backbone: Backbone | None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    fingerprint: bytes | None = None,
) -> Decoded:
    """Decode a complete bitstream; ``backbone`` must be freshly loaded (None for the pixel baseline)."""
    stream = unpack(data)
    inr = build_inr_from_stream(stream)
    if stream.header.kind == CodecKind.PIXEL_INR:
        return render_pixel_inr(stream, inr, device=device)
    if backbone is None:
        raise BitstreamError(f"this stream needs the {stream.header.backbone!r} backbone to decode")
    check_backbone(backbone, stream, fingerprint)
    install_adapters(backbone, stream)
    return reconstruct(backbone, stream, inr, device=device, progress=progress)

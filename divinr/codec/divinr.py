"""DiV-INR as a codec: ``compress(video) -> bytes`` and ``decompress(bytes) -> Decoded``.

    encoder: frames --VAE--> cached latents --train INR + adapters (dense -> prune -> Quant-Noise,
             divinr.training.encoder)--> quantise + range-code --> bitstream
             (JPEG conditioning: each GoP's first frame JPEG-coded, only NOLA trains;
              granularity gop: an INR per GoP; with per-GoP adapters each GoP trains alone,
              possibly as its own job, divinr.training.gop_jobs, and the stream is assembled)
    decoder: bitstream + public backbone --> frames        (divinr.inference.decoder)

Nothing but the bitstream and the public backbone passes from encoder to decoder. The optional
reconstruction after encoding (``encode(..., reconstruct=True)``) runs the decoder's own code
on the decoder's own inputs: dequantised tensors and the backbone with its training adapters
removed, then adapted afresh from the stream. Training imports Lightning, so it is imported
only when something is encoded: decoding never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch

from divinr.codec.base import Codec, Encoded
from divinr.compression.bitstream import (
    BLOCK,
    Bitstream,
    CodecKind,
    Conditioning,
    Granularity,
    MaskMode,
    StreamHeader,
    adapter_payload,
    encode_tensors,
    pack,
    pack_sections,
    writer_schema,
)
from divinr.compression.container import write_container
from divinr.compression.jpeg import encode_jpeg
from divinr.data.gop import inr_latent_frames, plan_gops
from divinr.data.video import Video, fps_fraction, pad_frames, read_video
from divinr.devices import resolve_device
from divinr.errors import BitstreamError, PresetError, VideoFormatError
from divinr.inference.decoder import (
    Conditioner,
    Decoded,
    check_decode_memory,
    decode_gops,
    decode_stream,
    frame_range,
    prepare_stream,
    reconstruct,
)
from divinr.models.adapters import LoRAConfig, VeRAConfig, adapter_state_dict, eject_adapters
from divinr.models.backbone import Backbone, backbone_fingerprint, load_backbone
from divinr.models.inr import GoPINRs, INRConfig, LatentINR, planned_inr
from divinr.models.nola import NOLAConfig
from divinr.rate_control import SizeChoice, shipped_rate_model, size_for_target

if TYPE_CHECKING:
    import lightning as L

    from divinr.training.encoder import EncoderConfig
    from divinr.training.gop_jobs import GoPLauncher
    from divinr.training.module import DiVINRModule


#: The INR fields of a JPEG-conditioned header, which no decoder reads (every DiV-INR header has
#: them): the smallest architecture, so that no one mistakes them for a coded INR. Its head widths
#: stay the conditioning widths (16 + 4) the decoder checks against the DiT's input.
UNUSED_INR = INRConfig(channels=1, stage_channels=(1,), strides=(1,), blocks=(0,), grid_frames=2, grid_channels=1)


def coded_size(width: int, height: int) -> tuple[int, int]:
    """The size frames of ``width`` x ``height`` are coded at: each side padded up to a multiple of
    :data:`~divinr.compression.bitstream.BLOCK`, as the VAE and the DiT need."""
    if width <= 0 or height <= 0:
        raise VideoFormatError(f"coding resolution {width}x{height} must be positive on both sides")
    return -(-width // BLOCK) * BLOCK, -(-height // BLOCK) * BLOCK


def pad_video(video: Video, width: int, height: int) -> Video:
    """``video`` extended to ``width`` x ``height`` (:func:`~divinr.data.video.pad_frames`)."""
    return replace(video, frames=pad_frames(video.frames, width, height))


def load_clip(
    path: str | Path,
    *,
    width: int,
    height: int,
    max_frames: int | None = None,
    start: int = 0,
    input_size: tuple[int, int] | None = None,
    **read_kwargs: Any,
) -> Video:
    """Read frames resized to the coding resolution ``width`` x ``height`` (any positive size; the
    encoder pads it, see :func:`coded_size`) as they are decoded.

    ``input_size`` is the stored size of a raw ``.yuv`` file (which does not record it); other
    formats declare their own. Resizing is antialiased bicubic on RGB.
    """
    coded_size(width, height)
    if input_size is not None:
        read_kwargs["width"], read_kwargs["height"] = input_size
    return read_video(path, start=start, max_frames=max_frames, resize=(width, height), **read_kwargs)


def plan_header(video: Video, config: EncoderConfig) -> StreamHeader:
    """The stream header for ``video`` under ``config``, known before training: coded at
    :func:`coded_size`, displayed at the video's own size.

    Only the backbone fingerprint and the adapted-layer count are filled in after the backbone
    is loaded. Writing the header once here makes any setting the format cannot carry fail
    before hours of training, not after. The adapter families the stream does not use keep their
    default settings, so settings that cannot change the stream do not change its bytes.
    """
    width, height = coded_size(video.width, video.height)
    num_latent = inr_latent_frames(video.num_frames, config.gop_size, per_gop=config.granularity == "gop")
    keyframed = config.conditioning == "jpeg"
    inr = UNUSED_INR if keyframed else planned_inr(config.inr, config.inr_overrides, num_latent, (height // 8, width // 8))
    header = StreamHeader(
        kind=CodecKind.DIVINR,
        backbone=config.backbone,
        backbone_fingerprint=bytes(16),
        frames=video.num_frames,
        width=width,
        height=height,
        fps=fps_fraction(video.fps),
        gop_size=config.gop_size,
        inr=inr,
        mask_mode=MaskMode.ONES if config.mask_mode == "ones" else MaskMode.LEARNED,
        quant_bits=config.quant_bits,
        nola=config.nola if config.adapter == "nola" else NOLAConfig(),
        nola_layers=0,
        sampler=config.sampler,
        model_dtype=str(config.model_dtype()).removeprefix("torch."),
        display_width=video.width,
        display_height=video.height,
        adapter=config.adapter,
        lora=config.lora if config.adapter == "lora" else LoRAConfig(),
        vera=config.vera if config.adapter == "vera" else VeRAConfig(),
        conditioning=Conditioning.JPEG if keyframed else Conditioning.INR,
        granularity=Granularity[config.granularity.upper()],
        nola_scope=Granularity[config.adapter_scope.upper()],
    )
    schema = writer_schema(StreamHeader)
    try:
        write_container(schema.elements, header.to_fields(), [], version=schema.version)
    except BitstreamError as err:
        raise PresetError(f"this configuration cannot be stored in a bitstream: {err}") from None
    return header


def keyframe_files(video: Video, config: EncoderConfig) -> list[bytes]:
    """The JPEG file of each GoP's first frame at ``config.keyframe_quality``, coded at the display
    size: the padding is edge replication the decoder redoes, not worth a bit."""
    spans = plan_gops(video.num_frames, config.gop_size)
    return [encode_jpeg(video.frames[span.start], config.keyframe_quality) for span in spans]


def inr_tensors(inr: LatentINR, header: StreamHeader) -> dict[str, torch.Tensor]:
    """A trained INR's tensors in the canonical order of the header's architecture (the order the
    bitstream codes them in, without names)."""
    with torch.device("meta"):
        canonical = list(type(inr)(header.inr, header.latent_size).state_dict())
    trained = inr.state_dict()
    if sorted(canonical) != sorted(trained):
        raise ValueError("the trained INR does not match the architecture in its header")
    return {k: trained[k] for k in canonical}


def pack_module(module: DiVINRModule, header: StreamHeader, keyframes: Sequence[bytes] = ()) -> bytes:
    """The bitstream of a trained module: its INR (or each GoP's) and its adapters, or (a module
    without an INR) the ``keyframes`` it was trained on."""
    adapter = adapter_state_dict(module.transformer)
    if module.inr is None:
        return pack(header, {}, adapter, keyframes)
    if not header.per_gop_inr:
        return pack(header, inr_tensors(module.inr, header), adapter)
    coded = [encode_tensors(inr_tensors(inr, header), header.quant_bits) for inr in module.inr]
    return pack_sections(header, coded, adapter_payload(header, adapter))


def log_gop_histories(logger: Any, history: Sequence[dict[str, float]]) -> None:
    """Hand per-GoP epoch histories to a Lightning logger as ``gop<g>/<metric>``, one step per row in
    GoP order (steps must grow for W&B: GoP g's curve is the g-th stretch of the step axis)."""
    for step, row in enumerate(history):
        gop = int(row["gop"])
        logger.log_metrics({f"gop{gop}/{k}": v for k, v in row.items() if k != "gop"}, step=step)
    logger.save()


class Trained(NamedTuple):
    """A trained encoder before coding: the INR (eval mode; None under JPEG conditioning), its module,
    the complete header and the JPEG keyframes it conditioned on (none under INR conditioning)."""

    inr: LatentINR | GoPINRs | None
    module: DiVINRModule
    header: StreamHeader
    history: list[dict[str, float]]
    keyframes: tuple[bytes, ...] = ()
    size: SizeChoice | None = None


class DiVINRCodec(Codec):
    """INR-conditioned video diffusion (the paper's method).

    Args:
        config: encoder settings (only needed to encode).
        backbone_path: a local copy of the backbone's weights for decoding (default: the
            encoder's ``config.backbone_path``, else the preset's own location).
        device: where decoding runs (default: the encoder's device, else ``auto``).
        progress: show progress bars.
        launcher: where the GoPs of a per-GoP-adapter encode train (default: here, in turn).
    """

    kind: ClassVar[CodecKind] = CodecKind.DIVINR

    def __init__(
        self,
        config: EncoderConfig | None = None,
        *,
        backbone_path: str | Path | None = None,
        device: str | None = None,
        progress: bool = True,
        launcher: GoPLauncher | None = None,
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.backbone_path = backbone_path if backbone_path is not None else (config.backbone_path if config else None)
        self.device = device if device is not None else (config.device if config else "auto")
        self.progress = progress

    @classmethod
    def for_decoding(cls, *, backbone_path: str | Path | None, device: str, progress: bool) -> DiVINRCodec:
        return cls(backbone_path=backbone_path, device=device, progress=progress)

    def train(
        self,
        video: Video,
        *,
        workdir: str | Path | None = None,
        logger: Any = None,
        callbacks: Sequence[L.Callback] = (),
    ) -> Trained:
        """Train INR + adapters on ``video`` (at coding resolution, padded here to the coded size);
        nothing is coded yet.

        With ``workdir`` training checkpoints every epoch and resumes from the folder (same
        settings and frames), holding its lock throughout, so a second run on it fails at once.
        """
        from divinr.training.encoder import train_codec
        from divinr.training.resume import workdir_lock

        config = self._encoder_config()
        if config.adapter_scope == "gop":
            raise PresetError("with per-GoP adapters every GoP trains alone: encode() runs and assembles them")
        header = plan_header(video, config)
        keyframes = tuple(keyframe_files(video, config)) if header.conditioning == Conditioning.JPEG else ()
        video = pad_video(video, header.width, header.height)
        workdir = Path(workdir) if workdir is not None else None
        with workdir_lock(workdir):
            backbone = load_backbone(
                config.backbone, path=config.backbone_path, dtype=config.model_dtype(),
                device=config.resolved_device(), gradient_checkpointing=config.gradient_checkpointing,
            )
            fingerprint = backbone_fingerprint(backbone)
            adapted = backbone.adapt(config.adapter_config, init_seed=config.seed)
            size = None
            if config.target_bpp is not None:
                config, header, size = self._sized(config, replace(header, nola_layers=len(adapted)), backbone)
            module, history = train_codec(
                video, config, header, backbone, fingerprint, keyframes=keyframes, workdir=workdir, logger=logger,
                callbacks=callbacks, progress=self.progress,
            )
        header = replace(header, backbone_fingerprint=fingerprint, nola_layers=len(adapted))
        inr = module.inr.eval() if module.inr is not None else None
        return Trained(inr, module, header, history, keyframes, size)

    def _encoder_config(self) -> EncoderConfig:
        if self.config is None:
            raise PresetError("this DiVINRCodec was built for decoding; give it an EncoderConfig to encode")
        return self.config

    def _encode_gops(
        self, video: Video, workdir: Path | None, callbacks: Sequence[L.Callback]
    ) -> tuple[bytes, StreamHeader, list[dict[str, float]], SizeChoice | None]:
        """Per-GoP adapters: each GoP trained alone (where the launcher says; finished GoPs of an
        earlier run are kept), then the stream assembled from their parts.

        The precision (hence the DiT dtype the header records) is resolved here, once, and the jobs
        train in it; local jobs get this machine's device kind (each sees its GPU as ``cuda``),
        Slurm jobs resolve ``auto`` on their node. A target rate is met by sizing the INR here, on
        a backbone loaded on the CPU only to count the adapter tensors (the jobs load their own).
        """
        from divinr.training.gop_jobs import GoPLauncher, assembled_header, gop_jobs, run_jobs
        from divinr.training.resume import workdir_lock

        config = self._encoder_config()
        launcher = self.launcher or GoPLauncher()
        here = config.resolved_device()
        device = {"inline": str(here), "local": here.type}.get(launcher.kind, config.device)
        config = replace(config, precision=config.resolved_precision(), device=device)
        if workdir is None and launcher.kind == "slurm":
            raise PresetError("Slurm GoP jobs write their parts to a work folder the nodes share: pass workdir")
        header = plan_header(video, config)
        size = None
        if config.target_bpp is not None:
            backbone = load_backbone(config.backbone, path=config.backbone_path, dtype=config.model_dtype(), device="cpu")
            adapted = backbone.adapt(config.adapter_config, init_seed=config.seed)
            config, header, size = self._sized(config, replace(header, nola_layers=len(adapted)), backbone)
            del backbone
        padded = pad_video(video, header.width, header.height)
        with ExitStack() as stack:
            folder = workdir or Path(stack.enter_context(TemporaryDirectory(prefix="divinr-gops-")))
            with workdir_lock(folder):
                parts = run_jobs(gop_jobs(padded, config, header, folder, self.progress), launcher, callbacks)
        header = assembled_header(header, parts)
        data = pack_sections(header, [p.inr for p in parts], [p.adapter for p in parts] if parts[0].adapter else [])
        return data, header, [dict(row, gop=part.index) for part in parts for row in part.history], size

    def _sized(
        self, config: EncoderConfig, header: StreamHeader, backbone: Backbone
    ) -> tuple[EncoderConfig, StreamHeader, SizeChoice]:
        """``config`` and its header with the INR the rate model sizes for ``config.target_bpp``,
        given the adapter tensors ``backbone`` now carries (of any family)."""
        model = shipped_rate_model()
        model.check_applies(config.quant_bits, config.pruned_fraction())
        adapter = [tuple(t.shape) for t in adapter_state_dict(backbone.transformer).values()]
        size = size_for_target(config.target_bpp, header, adapter, model=model, overrides=config.inr_overrides)
        if self.progress:
            print(f"target {config.target_bpp:g} bpp: {size.describe()}")
        return replace(config, inr=size.preset, inr_overrides=size.overrides), replace(header, inr=size.config), size

    def encode(
        self,
        video: Video,
        *,
        reconstruct: bool = False,
        workdir: str | Path | None = None,
        logger: Any = None,
        callbacks: Sequence[L.Callback] = (),
        bitstream_path: str | Path | None = None,
    ) -> Encoded:
        """Train (:meth:`train`) and code; ``reconstruct`` decodes with the training's own backbone.

        With per-GoP adapters the GoPs train alone (:mod:`divinr.training.gop_jobs`): their
        epoch histories (in the result's, tagged ``gop``) reach ``logger`` once all have finished,
        as ``gop<g>/<metric>``, and ``reconstruct`` decodes with a freshly loaded backbone.
        """
        start = time.perf_counter()
        if self._encoder_config().adapter_scope == "gop":
            data, header, history, size = self._encode_gops(video, Path(workdir) if workdir else None, callbacks)
            if logger is not None:
                log_gop_histories(logger, history)
            decode = self.decompress if reconstruct else None
        else:
            trained = self.train(video, workdir=workdir, logger=logger, callbacks=callbacks)
            data, header, history, size = (
                pack_module(trained.module, trained.header, trained.keyframes), trained.header, trained.history,
                trained.size,
            )  # fmt: skip
            decode = partial(self._reconstruct, trained) if reconstruct else None
        encoded = self._encoded(
            video, data, header, history, started=start, bitstream_path=bitstream_path, reconstruct=decode
        )
        if size is not None:
            encoded.predicted_bpp = size.estimate.bpp
        return encoded

    def _reconstruct(self, trained: Trained, data: bytes) -> Decoded:
        """The decoder's path on the encoder's backbone: the training adapters removed, the stream's
        merged afresh (Lightning's teardown left the networks on the CPU)."""
        backbone = trained.module.backbone
        device = resolve_device(self.device)
        eject_adapters(backbone.transformer)
        backbone.transformer.to(device)
        backbone.vae.to(device)
        return decode_stream(
            data, backbone, device=device, progress=self.progress, fingerprint=trained.header.backbone_fingerprint
        )

    def _prepared(
        self, data: bytes, frames: tuple[int, int] | None, *, hold: bool
    ) -> tuple[Bitstream, Backbone, Conditioner]:
        """The stream, a fresh backbone with the stream's adapters merged and its conditioning, on the
        codec's device.

        The memory budget is checked first, before the backbone is loaded: for the range's frames
        when the decode holds them (``hold``), for one GoP when it streams.
        """
        stream = self.stream(data)
        start, stop = frame_range(stream.header, frames)
        check_decode_memory(stream.header, held_frames=stop - start if hold else 0)
        device = resolve_device(self.device)
        dtype = getattr(torch, stream.header.model_dtype)  # a name the header's DiT-dtype codes allow
        backbone = load_backbone(stream.header.backbone, path=self.backbone_path, dtype=dtype, device=device)
        return stream, backbone, prepare_stream(stream, backbone, device=device)

    def decompress(self, data: bytes, frames: tuple[int, int] | None = None) -> Decoded:
        """Decode (the range ``frames`` of) a stream with the public backbone its header names."""
        stream, backbone, condition = self._prepared(data, frames, hold=True)
        return reconstruct(backbone, stream, condition, frames=frames, progress=self.progress)

    def iter_frames(self, data: bytes, frames: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        """Decode GoP by GoP, sampling only the GoPs that cover ``frames``."""
        stream, backbone, condition = self._prepared(data, frames, hold=False)
        for _, video, _ in decode_gops(backbone, stream, condition, frames=frames, progress=self.progress):
            yield video

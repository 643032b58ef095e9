"""DiV-INR as a codec: ``compress(video) -> bytes`` and ``decompress(bytes) -> video``.

    encoder: frames --VAE--> cached latents --train INR + NOLA (dense -> prune -> Quant-Noise)-->
             quantise + range-code --> bitstream --decoder path--> reconstruction
    decoder: bitstream + public backbone --> frames        (divinr.inference.decoder)

Nothing but the bitstream and the public backbone passes from encoder to decoder; the encoder's
reconstruction runs the decoder's own code on the decoder's own inputs (dequantised tensors, a
backbone with adapters freshly injected and merged).
"""

from __future__ import annotations

import resource
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from divinr.data.video import fps_fraction
from divinr.atomic import atomic_write_bytes
from divinr.compression.bitstream import (
    FORMAT_VERSION,
    SCHEMA_V1,
    CodecKind,
    MaskMode,
    StreamHeader,
    bits_breakdown,
    pack,
    unpack,
)
from divinr.compression.container import write_container
from divinr.data.gop import pixel_count, plan_gops, split_gops
from divinr.data.video import Video, read_video
from divinr.errors import BitstreamError, PresetError, VideoFormatError
from divinr.inference.decoder import Decoded, check_decode_memory, decode_stream
from divinr.inference.sampler import SamplerConfig
from divinr.models.backbone import Backbone, backbone_fingerprint, load_backbone
from divinr.models.inr import build_inr, inr_config
from divinr.models.nola import NOLAConfig, eject_nola, nola_layers, nola_state_dict
from divinr.training.data import LatentGoPs, encode_gops, gop_loader
from divinr.training.losses import LossConfig
from divinr.training.module import DiVINRModule
from divinr.training.resume import prepare_workdir, resumable_callbacks, resume_path, settings_digest, workdir_lock
from divinr.training.stages import Phase, paper_phases, total_epochs


@dataclass
class EncoderConfig:
    """Everything the encoder needs besides the video (mirrored by the Hydra config groups).

    ``device="auto"`` picks CUDA when present; ``precision="auto"`` is bf16 mixed precision
    with a bf16 DiT on GPU (the paper's set-up) and float32 on CPU.
    """

    backbone: str = "tiny"
    backbone_path: str | None = None
    inr: str = "xxs"
    inr_overrides: dict[str, Any] = field(default_factory=dict)
    nola: NOLAConfig = field(default_factory=NOLAConfig)
    phases: list[Phase] = field(default_factory=paper_phases)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    gop_size: int = 25
    mask_mode: str = "learned"
    quant_bits: int = 6
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.phases or self.phases[0].epochs < 1:
            raise PresetError("the first (dense) training phase needs at least one epoch; an untrained stream codes nothing")
        if self.mask_mode not in ("learned", "ones"):
            raise PresetError(f"mask_mode must be 'learned' or 'ones', got {self.mask_mode!r}")
        if not 0 <= self.seed < 2**32:
            raise PresetError(f"seed must be in 0..2^32-1, got {self.seed}")
        if self.precision not in ("auto", "32-true", "32", "bf16-mixed", "bf16-true"):
            raise PresetError(f"precision {self.precision!r} is not one of auto, 32-true, bf16-mixed, bf16-true")
        noisy_bits = {p.quant_bits for p in self.phases if p.quant_noise > 0}
        if noisy_bits - {self.quant_bits}:
            raise PresetError(
                f"Quant-Noise trains at {sorted(noisy_bits)} bits but the bitstream would code {self.quant_bits}; "
                "use one width so training sees the decoder's quantiser"
            )
        self.resolved_device()
        # The header stores these as float32: train with exactly the values the decoder will read.
        self.nola = replace(
            self.nola, basis_variance=_float32(self.nola.basis_variance), scaling=_float32(self.nola.scaling)
        )
        self.sampler = replace(self.sampler, flow_shift=_float32(self.sampler.flow_shift))

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if self.resolved_device().type == "cuda" else "32-true"

    def model_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.resolved_precision().startswith("bf16") else torch.float32


def _float32(value: float) -> float:
    return float(np.float32(value))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a clear error for a device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PresetError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise PresetError(f"device {name!r} is not available ({count} CUDA devices found); use --device cpu")
    elif device.type != "cpu":
        raise PresetError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


@dataclass
class CompressResult:
    """The bitstream and what was measured while producing it."""

    bitstream: bytes
    reconstruction: Decoded
    header: StreamHeader
    bits: dict[str, int]
    bpp: float
    history: list[dict[str, float]]
    encode_seconds: float
    decode_seconds: float
    peak_memory_bytes: dict[str, int]


class EpochHistory(L.Callback):
    """Keeps the epoch-averaged training losses so callers can check (and report) convergence."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") or k == "stage"}
        row["epoch"] = trainer.current_epoch
        self.epochs.append(row)


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
    """Read frames resized to the coding resolution ``width`` x ``height`` as they are decoded.

    ``input_size`` is the stored size of a raw ``.yuv`` file (which does not record it); other
    formats declare their own. Resizing is antialiased bicubic on RGB.
    """
    check_resolution(width, height)
    if input_size is not None:
        read_kwargs["width"], read_kwargs["height"] = input_size
    return read_video(path, start=start, max_frames=max_frames, resize=(width, height), **read_kwargs)


def check_resolution(width: int, height: int) -> None:
    """The VAE downsamples by 8 and the DiT patches latents by 2: sides must be multiples of 16."""
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise VideoFormatError(
            f"coding resolution {width}x{height} is not a multiple of 16 on both sides; use e.g. 1024x576 or 256x144"
        )


def peak_memory() -> dict[str, int]:
    """Peak resident memory of this process and, on GPU, peak allocated device memory."""
    peak = {"cpu_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["gpu_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


# The frozen backbone is in eval mode on purpose (DiVINRModule.train keeps it there).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


def _make_trainer(
    config: EncoderConfig, workdir: Path | None, logger: Any, callbacks: Sequence[L.Callback], progress: bool
) -> L.Trainer:
    device = config.resolved_device()
    return L.Trainer(
        max_epochs=total_epochs(config.phases),
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=config.resolved_precision(),
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *resumable_callbacks(config.seed, workdir)],
        enable_checkpointing=workdir is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(workdir) if workdir is not None else None,
    )


def plan_header(video: Video, config: EncoderConfig) -> StreamHeader:
    """The stream header for ``video`` under ``config``, known before training.

    Only the backbone fingerprint and the adapted-layer count are filled in after the backbone
    is loaded. Writing the header once here makes any setting the format cannot carry fail
    before hours of training, not after.
    """
    check_resolution(video.width, video.height)
    num_latent = sum(span.num_latent for span in plan_gops(video.num_frames, config.gop_size))
    header = StreamHeader(
        kind=CodecKind.DIVINR,
        backbone=config.backbone,
        backbone_fingerprint=bytes(16),
        frames=video.num_frames,
        width=video.width,
        height=video.height,
        fps=fps_fraction(video.fps),
        gop_size=config.gop_size,
        inr=inr_config(config.inr, num_latent_frames=num_latent, **config.inr_overrides),
        mask_mode=MaskMode.ONES if config.mask_mode == "ones" else MaskMode.LEARNED,
        quant_bits=config.quant_bits,
        nola=config.nola,
        nola_layers=0,
        sampler=config.sampler,
        model_dtype="bfloat16" if config.model_dtype() == torch.bfloat16 else "float32",
    )
    try:
        write_container(SCHEMA_V1, header.to_fields(), [], version=FORMAT_VERSION)
    except BitstreamError as err:
        raise PresetError(f"this configuration cannot be stored in a bitstream: {err}") from None
    return header


def train_codec(
    video: Video,
    config: EncoderConfig,
    *,
    workdir: str | Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
) -> tuple[DiVINRModule, StreamHeader, list[dict[str, float]]]:
    """Train INR + NOLA on ``video``; return the module, its complete stream header and the history.

    With ``workdir`` the run checkpoints every epoch and resumes from ``last.ckpt`` if one of
    the same settings and frames is present; the resumed run gives the uninterrupted run's
    bitstream. It holds the folder's lock throughout, so a second run on it fails at once.
    """
    header = plan_header(video, config)
    workdir = Path(workdir) if workdir is not None else None
    with workdir_lock(workdir):
        device = config.resolved_device()
        backbone = load_backbone(
            config.backbone,
            path=config.backbone_path,
            dtype=config.model_dtype(),
            device=device,
            gradient_checkpointing=config.gradient_checkpointing,
        )
        fingerprint = backbone_fingerprint(backbone)
        if workdir is not None:
            settings = {
                "header": header, "backbone": fingerprint.hex(), "phases": config.phases, "nola": config.nola,
                "loss": config.loss, "seed": config.seed, "weight_decay": config.weight_decay,
                "gop_size": config.gop_size,
            }
            prepare_workdir(workdir, settings_digest(settings, video.frames))
        checkpoint = resume_path(workdir)  # an unreadable one fails here, before the VAE runs
        gops = split_gops(video.frames, config.gop_size)
        latents = encode_gops(backbone, gops, cache_dir=workdir / "cache" if workdir else None, fingerprint=fingerprint)
        L.seed_everything(config.seed, workers=True, verbose=False)
        inr = build_inr(header.inr, header.latent_size)
        module = DiVINRModule(
            backbone, inr, config.phases, config.nola, config.loss, mask_mode=config.mask_mode,
            weight_decay=config.weight_decay,
        )
        history = EpochHistory()
        trainer = _make_trainer(config, workdir, logger, [history, *callbacks], progress)
        trainer.fit(module, train_dataloaders=gop_loader(LatentGoPs(latents, gops), seed=config.seed),
                    ckpt_path=checkpoint)
    header = replace(header, backbone_fingerprint=fingerprint, nola_layers=len(nola_layers(module.transformer)))
    return module, header, history.epochs


def pack_module(module: DiVINRModule, header: StreamHeader) -> bytes:
    """The bitstream of a trained module: INR tensors in the canonical order of the header's architecture."""
    with torch.device("meta"):
        canonical = list(type(module.inr)(header.inr, header.latent_size).state_dict())
    trained = module.inr.state_dict()
    if sorted(canonical) != sorted(trained):
        raise ValueError("the trained INR does not match the architecture in its header")
    return pack(header, {k: trained[k] for k in canonical}, nola_state_dict(module.transformer))


def compress(
    video: Video,
    config: EncoderConfig,
    *,
    workdir: str | Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
    bitstream_path: str | Path | None = None,
) -> CompressResult:
    """Encode ``video`` (already at coding resolution) into a DiV-INR bitstream.

    The bitstream is written to ``bitstream_path`` (atomically) as soon as it exists, before the
    reconstruction runs, so a failure while reconstructing never loses the training. Returns the
    bitstream, the reconstruction the decoder produces from it, bits by part, bpp (= 8 x bytes
    / real pixels) and timings.
    """
    start = time.perf_counter()
    module, header, history = train_codec(
        video, config, workdir=workdir, logger=logger, callbacks=callbacks, progress=progress
    )
    module.inr.eval()
    data = pack_module(module, header)
    if bitstream_path is not None:
        atomic_write_bytes(bitstream_path, data)
    encode_seconds = time.perf_counter() - start

    # Lightning's teardown leaves the module on the CPU; the decoder path runs on the encode device.
    device = config.resolved_device()
    backbone: Backbone = module.backbone
    eject_nola(backbone.transformer)
    backbone.transformer.to(device)
    backbone.vae.to(device)
    start = time.perf_counter()
    decoded = decode_stream(data, backbone, device=device, progress=progress, fingerprint=header.backbone_fingerprint)
    decode_seconds = time.perf_counter() - start
    bits = bits_breakdown(data)
    return CompressResult(
        bitstream=data,
        reconstruction=decoded,
        header=header,
        bits=bits,
        bpp=bits["total"] / pixel_count(video.num_frames, video.width, video.height),
        history=history,
        encode_seconds=encode_seconds,
        decode_seconds=decode_seconds,
        peak_memory_bytes=peak_memory(),
    )


def decompress(
    data: bytes,
    *,
    backbone_path: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Decoded:
    """Decode a bitstream with the public backbone its header names (loaded fresh).

    The decoded video is checked against the memory budget
    (:func:`divinr.inference.decoder.memory_budget`) before the backbone is loaded.
    """
    header = unpack(data).header
    check_decode_memory(header)
    target = resolve_device(device)
    backbone = None
    if header.kind == CodecKind.DIVINR:
        dtype = torch.bfloat16 if header.model_dtype == "bfloat16" else torch.float32
        backbone = load_backbone(header.backbone, path=backbone_path, dtype=dtype, device=target)
    return decode_stream(data, backbone, device=target, progress=progress)

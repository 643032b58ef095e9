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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from divinr.compression.bitstream import CodecKind, MaskMode, StreamHeader, bits_breakdown, fps_fraction, pack, unpack
from divinr.data.gop import pixel_count, split_gops
from divinr.data.video import Video, read_video
from divinr.errors import PresetError, VideoFormatError
from divinr.inference.decoder import Decoded, decode_stream
from divinr.inference.sampler import SamplerConfig
from divinr.models.backbone import Backbone, backbone_fingerprint, load_backbone
from divinr.models.inr import build_inr, inr_config
from divinr.models.nola import NOLAConfig, eject_nola, nola_layers, nola_state_dict
from divinr.training.data import LatentGoPs, encode_gops, gop_loader
from divinr.training.losses import LossConfig
from divinr.training.module import DiVINRModule
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

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if self.resolved_device().type == "cuda" else "32-true"

    def model_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.resolved_precision().startswith("bf16") else torch.float32


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
    path: str | Path, *, width: int, height: int, max_frames: int | None = None, start: int = 0, **read_kwargs: Any
) -> Video:
    """Read frames resized to the coding resolution as they are decoded (antialiased bicubic on RGB)."""
    check_resolution(width, height)
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
    all_callbacks = list(callbacks)
    if workdir is not None:
        all_callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir / "checkpoints", save_last=True, save_top_k=0)
        )
    return L.Trainer(
        max_epochs=total_epochs(config.phases),
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=config.resolved_precision(),
        logger=logger if logger is not None else False,
        callbacks=all_callbacks,
        enable_checkpointing=workdir is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(workdir) if workdir is not None else None,
    )


def train_codec(
    video: Video,
    config: EncoderConfig,
    *,
    workdir: str | Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
) -> tuple[DiVINRModule, bytes, list[dict[str, float]]]:
    """Train INR + NOLA on ``video`` and return the module, the backbone fingerprint and the history.

    With ``workdir`` the run checkpoints every epoch and resumes from ``last.ckpt`` if present.
    """
    if config.mask_mode not in ("learned", "ones"):
        raise PresetError(f"mask_mode must be 'learned' or 'ones', got {config.mask_mode!r}")
    check_resolution(video.width, video.height)
    workdir = Path(workdir) if workdir is not None else None
    device = config.resolved_device()
    backbone = load_backbone(
        config.backbone,
        path=config.backbone_path,
        dtype=config.model_dtype(),
        device=device,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    fingerprint = backbone_fingerprint(backbone)
    gops = split_gops(video.frames, config.gop_size)
    latents = encode_gops(backbone, gops, cache_dir=workdir / "cache" if workdir else None, fingerprint=fingerprint)
    num_latent = sum(g.num_latent for g in gops)
    h, w = latents[0].shape[-2:]
    L.seed_everything(config.seed, workers=True, verbose=False)
    inr = build_inr(inr_config(config.inr, num_latent_frames=num_latent, **config.inr_overrides), (h, w))
    module = DiVINRModule(
        backbone, inr, config.phases, config.nola, config.loss, mask_mode=config.mask_mode, weight_decay=config.weight_decay
    )
    history = EpochHistory()
    trainer = _make_trainer(config, workdir, logger, [history, *callbacks], progress)
    last = workdir / "checkpoints" / "last.ckpt" if workdir else None
    trainer.fit(module, train_dataloaders=gop_loader(LatentGoPs(latents, gops), seed=config.seed),
                ckpt_path=str(last) if last is not None and last.exists() else None)
    return module, fingerprint, history.epochs


def header_for(video: Video, config: EncoderConfig, module: DiVINRModule, fingerprint: bytes) -> StreamHeader:
    """The header describing a trained module and its video."""
    return StreamHeader(
        kind=CodecKind.DIVINR,
        backbone=config.backbone,
        backbone_fingerprint=fingerprint,
        frames=video.num_frames,
        width=video.width,
        height=video.height,
        fps=fps_fraction(video.fps),
        gop_size=config.gop_size,
        inr=module.inr.config,
        mask_mode=MaskMode.ONES if config.mask_mode == "ones" else MaskMode.LEARNED,
        quant_bits=config.quant_bits,
        nola=config.nola,
        nola_layers=len(nola_layers(module.transformer)),
        sampler=config.sampler,
    )


def compress(
    video: Video,
    config: EncoderConfig,
    *,
    workdir: str | Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
) -> CompressResult:
    """Encode ``video`` (already at coding resolution) into a DiV-INR bitstream.

    Returns the bitstream, the reconstruction the decoder will produce from it, bits by part,
    bpp (= 8 x bytes / real pixels) and timings.
    """
    start = time.perf_counter()
    module, fingerprint, history = train_codec(
        video, config, workdir=workdir, logger=logger, callbacks=callbacks, progress=progress
    )
    module.inr.eval()
    header = header_for(video, config, module, fingerprint)
    data = pack(header, module.inr.state_dict(), nola_state_dict(module.transformer))
    encode_seconds = time.perf_counter() - start

    backbone: Backbone = module.backbone
    eject_nola(backbone.transformer)
    start = time.perf_counter()
    decoded = decode_stream(data, backbone, device=config.resolved_device(), progress=progress, fingerprint=fingerprint)
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
    """Decode a bitstream with the public backbone its header names (loaded fresh)."""
    header = unpack(data).header
    target = EncoderConfig(device=device).resolved_device()
    backbone = None
    if header.kind == CodecKind.DIVINR:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        backbone = load_backbone(header.backbone, path=backbone_path, dtype=dtype, device=target)
    return decode_stream(data, backbone, device=target, progress=progress)

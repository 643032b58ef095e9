"""DiV-INR's encoder side: its settings and the training of INR + adapters on one sequence.

    Video --VAE--> cached GoP latents --DiVINRModule (dense -> prune -> Quant-Noise)--> trained
    INR + adapter tensors (the codec, :class:`divinr.codec.divinr.DiVINRCodec`, codes them)

Under JPEG conditioning (the paper's keyframe ablation) there is no INR: each GoP's decoded JPEG
keyframe conditions the DiT and only NOLA trains, with the flow loss alone. With granularity gop
each GoP has its own INR: trained together when the adapters are shared by the sequence, or one
GoP per training (:mod:`divinr.training.gop_jobs`) when each GoP has its own adapters too.

Everything here needs Lightning; the decoder needs none of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from divinr.compression.bitstream import Conditioning, Granularity, StreamHeader
from divinr.compression.jpeg import check_quality, decode_jpeg
from divinr.data.gop import split_gops
from divinr.data.video import Video
from divinr.devices import resolve_device
from divinr.errors import PresetError
from divinr.inference.sampler import SamplerConfig
from divinr.models.adapters import AdapterConfig, LoRAConfig, VeRAConfig, check_adapter
from divinr.models.backbone import Backbone
from divinr.models.inr import GoPINRs, build_inr
from divinr.models.keyframes import keyframe_latent
from divinr.models.nola import NOLAConfig
from divinr.training.data import LatentGoPs, encode_gops, gop_loader
from divinr.training.losses import LossConfig
from divinr.training.module import DiVINRModule
from divinr.training.resume import prepare_workdir, resume_path, settings_digest
from divinr.training.stages import Phase, paper_phases, total_epochs
from divinr.training.trainer import build_trainer, default_precision, fit


@dataclass
class EncoderConfig:
    """Everything the encoder needs besides the video (mirrored by the Hydra config groups).

    ``target_bpp`` sizes the INR for that rate before training (:mod:`divinr.rate_control`),
    replacing ``inr``; ``inr_overrides`` still apply. ``device="auto"`` picks CUDA when present;
    ``precision="auto"`` is bf16 mixed precision with a bf16 DiT on GPU (the paper's set-up) and
    float32 on CPU. ``adapter`` picks the family that specialises the DiT (``nola``, the paper's;
    peft's ``lora`` or ``vera``); only that family's settings (``nola``, ``lora`` or ``vera``) are
    used. ``seed`` also seeds the initial values of LoRA's ``A``.

    ``conditioning="jpeg"`` replaces the INR by each GoP's first frame, JPEG-coded at
    ``keyframe_quality`` (1..100; unused with the INR): the ``inr`` settings, ``mask_mode``, the
    loss's lambda and pruning (which only acts on the INR) then have nothing to act on, and the
    adapters train through the same phases.

    ``granularity="gop"`` gives each GoP its own INR (the ``inr`` preset sized for one GoP) and,
    unless ``nola_scope="sequence"``, its own adapters: each GoP then trains alone, as its own job
    if asked (:mod:`divinr.training.gop_jobs`). ``nola_scope`` defaults to the granularity.
    """

    backbone: str = "tiny"
    backbone_path: str | None = None
    inr: str = "xxs"
    inr_overrides: dict[str, Any] = field(default_factory=dict)
    target_bpp: float | None = None
    adapter: str = "nola"
    nola: NOLAConfig = field(default_factory=NOLAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    vera: VeRAConfig = field(default_factory=VeRAConfig)
    phases: list[Phase] = field(default_factory=paper_phases)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    gop_size: int = 25
    mask_mode: str = "learned"
    conditioning: str = "inr"
    keyframe_quality: int = 30
    granularity: str = "sequence"
    nola_scope: str | None = None
    quant_bits: int = Phase.quant_bits  # the width Quant-Noise trains at is the width coded
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.phases or self.phases[0].epochs < 1:
            raise PresetError("the first (dense) training phase needs at least one epoch; an untrained stream codes nothing")
        check_adapter(self.adapter)
        if self.mask_mode not in ("learned", "ones"):
            raise PresetError(f"mask_mode must be 'learned' or 'ones', got {self.mask_mode!r}")
        if self.target_bpp is not None and not self.target_bpp > 0:
            raise PresetError(f"target_bpp must be a positive rate (or None to size the INR by preset), got {self.target_bpp}")
        self._check_conditioning()
        self._check_granularity()
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
        self.lora = replace(self.lora, alpha=_float32(self.lora.alpha))
        self.sampler = replace(self.sampler, flow_shift=_float32(self.sampler.flow_shift))

    def pruned_fraction(self) -> float:
        """Fraction of INR decoder weights the schedule prunes (its first pruning phase decides)."""
        return next((p.prune_fraction for p in self.phases if p.prune_fraction > 0), 0.0)

    @property
    def adapter_scope(self) -> str:
        """``nola_scope``, or where it is None the granularity: what one adapter set covers."""
        return self.nola_scope or self.granularity

    @property
    def adapter_config(self) -> AdapterConfig:
        """The settings of the chosen adapter family."""
        return getattr(self, self.adapter)

    def _check_conditioning(self) -> None:
        kinds = [kind.name.lower() for kind in Conditioning]
        if self.conditioning not in kinds:
            raise PresetError(f"conditioning must be one of {', '.join(kinds)}, got {self.conditioning!r}")
        check_quality(self.keyframe_quality)
        if self.conditioning != "jpeg":
            return
        if self.mask_mode != "learned":
            raise PresetError(
                f"mask_mode={self.mask_mode!r} needs INR conditioning: with JPEG keyframes M is 1 on each "
                "keyframe's latent frame and 0 elsewhere by construction; keep mask_mode='learned' or use "
                "conditioning='inr'"
            )
        if self.inr_overrides:
            raise PresetError(
                f"inr_overrides {sorted(self.inr_overrides)} have no INR to act on under conditioning='jpeg'; remove them"
            )
        if self.adapter == "nola" and self.nola.num_bases == 0:
            raise PresetError(
                "conditioning='jpeg' with nola.num_bases=0 trains nothing (there is no INR); give NOLA bases"
            )
        if self.target_bpp is not None:
            raise PresetError(
                "target_bpp sizes the INR, which conditioning='jpeg' does not have; set keyframe_quality instead"
            )

    def _check_granularity(self) -> None:
        kinds = [kind.name.lower() for kind in Granularity]
        for name in ("granularity", "nola_scope"):
            value = getattr(self, name)
            if value not in kinds and not (name == "nola_scope" and value is None):
                raise PresetError(f"{name} must be {' or '.join(repr(k) for k in kinds)}, got {value!r}")
        if self.granularity == "sequence" and self.nola_scope == "gop":
            raise PresetError(
                "nola_scope='gop' needs granularity='gop': one model per sequence has one adapter set"
            )
        if self.granularity == "gop" and self.conditioning != "inr":
            raise PresetError("granularity='gop' gives each GoP its own INR; conditioning='jpeg' has none")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return default_precision(self.resolved_device())

    def model_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.resolved_precision().startswith("bf16") else torch.float32


def _float32(value: float) -> float:
    return float(np.float32(value))


class EpochHistory(L.Callback):
    """Keeps the epoch-averaged training losses so callers can check (and report) convergence."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") or k == "stage"}
        row["epoch"] = trainer.current_epoch
        self.epochs.append(row)


def training_digest(
    video: Video, config: EncoderConfig, header: StreamHeader, fingerprint: bytes, keyframes: Sequence[bytes] = ()
) -> str:
    """What names one training: its settings and its frames (a checkpoint of another is never resumed)."""
    settings = {
        "header": header, "backbone": fingerprint.hex(), "phases": config.phases, "nola": config.nola,
        "loss": config.loss, "seed": config.seed, "weight_decay": config.weight_decay, "gop_size": config.gop_size,
    }
    if keyframes:
        settings["keyframes"] = hashlib.sha256(b"".join(keyframes)).hexdigest()
    return settings_digest(settings, video.frames)


def train_codec(
    video: Video,
    config: EncoderConfig,
    header: StreamHeader,
    backbone: Backbone,
    fingerprint: bytes,
    *,
    keyframes: Sequence[bytes] = (),
    workdir: Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
) -> tuple[DiVINRModule, list[dict[str, float]]]:
    """Train INR + adapters on ``video`` with ``backbone`` (adapted by the caller); the module and its history.

    ``header`` is the stream's planned header (its INR architecture is built here) and
    ``fingerprint`` that of the backbone's weights before adaptation (it keys the caches). A
    JPEG-conditioned header trains NOLA alone on ``keyframes``, the stream's JPEG files, decoded
    and VAE-encoded exactly as the decoder will. With
    ``workdir`` the run checkpoints every epoch and resumes from ``last.ckpt`` if one of the
    same settings and frames is present; the resumed run gives the uninterrupted run's
    bitstream. The caller holds the folder's lock (:func:`~divinr.training.resume.workdir_lock`).
    """
    if workdir is not None:
        prepare_workdir(workdir, training_digest(video, config, header, fingerprint, keyframes))
    checkpoint = resume_path(workdir)  # an unreadable one fails here, before the VAE runs
    gops = split_gops(video.frames, config.gop_size)
    latents = encode_gops(backbone, gops, cache_dir=workdir / "cache" if workdir else None, fingerprint=fingerprint)
    L.seed_everything(config.seed, workers=True, verbose=False)
    keyframed = header.conditioning == Conditioning.JPEG
    if keyframed != bool(keyframes):
        raise ValueError("JPEG conditioning trains on the stream's keyframes and INR conditioning on none")
    inr: GoPINRs | torch.nn.Module | None = None
    if header.per_gop_inr:
        inr = GoPINRs(build_inr(header.inr, header.latent_size) for _ in gops)
    elif not keyframed:
        inr = build_inr(header.inr, header.latent_size)
    keyframe_latents = [
        keyframe_latent(
            backbone, decode_jpeg(data, header.display_width, header.display_height, index), header.width, header.height
        ).cpu()
        for index, data in enumerate(keyframes)
    ]
    module = DiVINRModule(
        backbone, inr, config.phases, config.loss, mask_mode=config.mask_mode, weight_decay=config.weight_decay
    )
    history = EpochHistory()
    trainer = build_trainer(
        max_epochs=total_epochs(config.phases), device=config.resolved_device(),
        precision=config.resolved_precision(), seed=config.seed, workdir=workdir, logger=logger,
        callbacks=[history, *callbacks], progress=progress,
    )
    data = LatentGoPs(latents, gops, keyframe_latents or None, per_gop=header.per_gop_inr)
    fit(trainer, module, gop_loader(data, seed=config.seed), checkpoint)
    return module, history.epochs

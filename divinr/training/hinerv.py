"""HiNeRV baseline: the same INR with an RGB head, trained on pixels with HiNeRV's recipe.

Table 1 of DiV-INR compares against HiNeRV (Kwan et al., NeurIPS 2023) at 1024x576. This
module trains our :class:`~divinr.models.inr.LatentINR` with its ``"rgb"`` head directly in
pixel space, so the baseline shares the INR architecture, the stage schedule
(:class:`~divinr.training.stages.StageCallback`: dense -> 15% adaptive pruning -> 6-bit
Quant-Noise) and the bitstream machinery with DiV-INR; only the target and the loss differ::

    frames (T, 3, H, W) --FrameClips--> clips {"frames": (n, 3, H, W), "coords": (n,)}
    coords --INR (rgb head)--> pred (n, 3, H, W) in [0, 1]
    loss = 0.7 * L1(pred, frames) + 0.3 * (1 - MS-SSIM(pred, frames))
    AdamW (no decay = Adam) lr 2e-3, cosine per phase, set by StageCallback

Time coordinates are ``f = i / (T - 1)`` over the frames of the whole sequence (the pixel head
renders frames, not latent frames). Presets in :data:`HINERV_PRESETS` upsample a 9x16 base
grid by (4, 2, 2, 2, 2) = 64 to 576x1024, HiNeRV's layout at 1080p (9x16 base, stride 120)
scaled to the paper's resolution.

MS-SSIM in the loss follows pytorch_msssim, which HiNeRV trains with: Gaussian window 11 /
1.5, valid (unpadded) filtering, negative contrast terms clamped to 0, per-channel values
averaged. It needs ``10 * 2**(n - 1) + 1`` pixels per side for ``n`` scales; frames too small
for the standard 5 scales (161 px) use as many scales as fit, with the first ``n`` standard
weights renormalised to sum to 1 (see :func:`msssim_scales`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from divinr.errors import PresetError, VideoFormatError, unknown_choice
from divinr.models.inr import INRConfig, LatentINR, parameter_owners
from divinr.training.resume import (
    EpochShuffle,
    prepare_workdir,
    resumable_callbacks,
    resume_path,
    settings_digest,
    workdir_lock,
)
from divinr.training.stages import Phase, StageCallback, phase_at, total_epochs

HINERV_REFERENCE_FRAMES = 600
"""Sequence length the presets' grid sizes are chosen for (a UVG sequence)."""

HINERV_STRIDES = (4, 2, 2, 2, 2)
"""Upsampling of the presets: 9x16 base grid -> 576x1024 frames."""

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Standard MS-SSIM scale weights (Wang et al. 2003), finest scale first."""

_MSSSIM_WINDOW = 11
_MSSSIM_SIGMA = 1.5
# Frames smaller than this many base cells per side get smaller strides (see hinerv_config),
# so the stem still sees some spatial context.
_MIN_BASE_SIDE = 4

HINERV_PRESETS: dict[str, INRConfig] = {
    # Parameters at 1024x576 for 25 / 150 / 600 frames (grids scaled by frames / 600):
    # 4xs 9K / 22K / 68K, 3xs 26K / 53K / 155K,
    # xxs 54K / 105K / 289K, xs 131K / 230K / 578K, s 376K / 582K / 1.32M, m 968K / 1.33M / 2.61M.
    # At ~5 bits per coded parameter: 600 frames 0.004 / 0.008 / 0.019 / 0.037 bpp for xxs..m,
    # 150 frames 0.006 / 0.013 / 0.033 / 0.075 bpp. 4xs and 3xs put short or small clips
    # (e.g. 49 frames at 512x288: 0.006 / 0.016 / 0.035 / 0.088 bpp for 4xs..xs) in the
    # 0.005-0.1 bpp range; on full sequences they fall below it.
    "4xs": INRConfig(
        channels=24, stage_channels=(16, 12, 8, 6, 4), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=60, grid_channels=4, local_grid_frames=150, local_grid_channels=2, head="rgb",
    ),
    "3xs": INRConfig(
        channels=40, stage_channels=(32, 20, 12, 8, 6), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=90, grid_channels=6, local_grid_frames=200, local_grid_channels=3, head="rgb",
    ),
    "xxs": INRConfig(
        channels=64, stage_channels=(48, 32, 16, 12, 8), strides=HINERV_STRIDES, blocks=(1, 1, 1, 1, 1),
        grid_frames=120, grid_channels=8, local_grid_frames=300, local_grid_channels=4, head="rgb",
    ),
    "xs": INRConfig(
        channels=96, stage_channels=(64, 40, 24, 16, 12), strides=HINERV_STRIDES, blocks=(2, 1, 1, 1, 1),
        grid_frames=150, grid_channels=12, local_grid_frames=300, local_grid_channels=8, head="rgb",
    ),
    "s": INRConfig(
        channels=128, stage_channels=(112, 64, 32, 20, 12), strides=HINERV_STRIDES, blocks=(2, 2, 1, 1, 1),
        grid_frames=200, grid_channels=20, local_grid_frames=300, local_grid_channels=12, head="rgb",
    ),
    "m": INRConfig(
        channels=192, stage_channels=(160, 96, 48, 24, 16), strides=HINERV_STRIDES, blocks=(3, 2, 1, 1, 1),
        grid_frames=300, grid_channels=24, local_grid_frames=300, local_grid_channels=16, head="rgb",
    ),
}

SEQUENCE_PRESETS = ("xxs", "xs", "s", "m")
"""The default sweep: about 0.004-0.04 bpp on 600-frame 1024x576 sequences, 0.006-0.075 on 150 frames
(estimates from parameter counts; the measured rate is the bitstream's size)."""


def hinerv_config(preset: str, frame_size: tuple[int, int], num_frames: int) -> INRConfig:
    """Resolve an rgb-head INR config for one sequence from a named size preset.

    The grids keep the preset's number of grid frames per video frame (their temporal sizes are
    scaled by ``num_frames / 600``, at least 2 each). Frames whose shorter side is below
    ``4 x 64`` px get smaller strides, halving the first stride still above 1 until the base
    grid has at least 4 cells on the shorter side; the decoder's widths and depths, hence its
    parameter count, do not change.

    Args:
        preset: a key of :data:`HINERV_PRESETS`.
        frame_size: (H, W) of the frames, the order of ``LatentINR``'s ``output_size``.
        num_frames: frames of the sequence the INR represents.

    Returns:
        The config; build it with ``LatentINR(config, frame_size)``.

    Raises:
        PresetError: unknown preset, or a non-positive size or frame count.
    """
    if preset not in HINERV_PRESETS:
        raise unknown_choice("HiNeRV preset", preset, list(HINERV_PRESETS))
    if len(frame_size) != 2 or min(frame_size) < 1:
        raise PresetError(f"frame_size must be (H, W) with positive sides, got {frame_size!r}")
    if num_frames < 1:
        raise PresetError(f"num_frames must be >= 1, got {num_frames}")
    config = HINERV_PRESETS[preset]
    strides = list(config.strides)
    limit = max(min(frame_size) // _MIN_BASE_SIDE, 1)
    for index in range(len(strides)):
        while strides[index] > 1 and math.prod(strides) > limit:
            strides[index] //= 2
    ratio = num_frames / HINERV_REFERENCE_FRAMES
    return dataclasses.replace(
        config,
        strides=tuple(strides),
        grid_frames=max(2, round(config.grid_frames * ratio)),
        local_grid_frames=max(2, round(config.local_grid_frames * ratio)),
    )


# ------------------------------------------------------------------------------- loss


def msssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales the loss uses for frames of this size.

    Valid 11-tap filtering needs at least ``10 * 2**(n - 1) + 1`` pixels per side at the finest
    scale for ``n`` scales: 5 from 161 px (1024x576 uses all 5), 3 from 41 px, 1 (plain SSIM)
    from 11 px.

    >>> msssim_scales(576, 1024), msssim_scales(48, 112)
    (5, 3)

    Raises:
        VideoFormatError: a side shorter than 11 px.
    """
    side = min(height, width)
    if side < _MSSSIM_WINDOW:
        raise VideoFormatError(
            f"frames of {height}x{width} are too small for the MS-SSIM loss; use frames of at least 11 px per side"
        )
    scales = 1
    while scales < len(MSSSIM_WEIGHTS) and side >= (_MSSSIM_WINDOW - 1) * 2**scales + 1:
        scales += 1
    return scales


def training_ms_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Differentiable MS-SSIM for the loss, averaged over frames (see the module docstring).

    Unlike :func:`divinr.metrics.functional.ms_ssim` (the evaluation metric) it does not round
    to 8-bit levels, so gradients flow.

    Args:
        pred: (N, 3, H, W) in [0, 1].
        target: (N, 3, H, W) in [0, 1].

    Returns:
        Scalar MS-SSIM in [0, 1].
    """
    # Imported here: piq takes seconds to import and only training needs it.
    import piq

    scales = msssim_scales(*pred.shape[-2:])
    weights = torch.tensor(MSSSIM_WEIGHTS[:scales], dtype=pred.dtype, device=pred.device)
    return piq.multi_scale_ssim(
        pred, target, kernel_size=_MSSSIM_WINDOW, kernel_sigma=_MSSSIM_SIGMA, data_range=1.0,
        scale_weights=weights, reduction="mean",
    )


class HiNeRVLoss(NamedTuple):
    """The training loss and its two terms (all scalars)."""

    loss: Tensor
    l1: Tensor
    ms_ssim: Tensor


def hinerv_loss(pred: Tensor, target: Tensor, *, l1_weight: float = 0.7, msssim_weight: float = 0.3) -> HiNeRVLoss:
    """HiNeRV's distortion: ``l1_weight * L1 + msssim_weight * (1 - MS-SSIM)``.

    Computed in float32 outside autocast: MS-SSIM's variance terms lose too much precision in
    bf16.

    Args:
        pred: (N, 3, H, W) rendered frames in [0, 1].
        target: (N, 3, H, W) original frames in [0, 1].
        l1_weight: weight of the mean absolute error.
        msssim_weight: weight of ``1 - MS-SSIM``.

    Returns:
        ``HiNeRVLoss(loss, l1, ms_ssim)``.
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        l1 = F.l1_loss(pred, target)
        similarity = training_ms_ssim(pred, target)
        return HiNeRVLoss(l1_weight * l1 + msssim_weight * (1.0 - similarity), l1, similarity)


# ------------------------------------------------------------------------------- data


def frame_coordinates(num_frames: int) -> Tensor:
    """Temporal coordinate of every frame of a sequence: ``i / (T - 1)``; a lone frame gets 0.

    >>> frame_coordinates(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    scale = 1.0 / (num_frames - 1) if num_frames > 1 else 0.0
    return torch.arange(num_frames, dtype=torch.float64).mul(scale).float()


class FrameClips(Dataset):
    """A sequence cut into consecutive clips of ``clip_len`` frames (the last may be shorter).

    Items are ``{"frames": (n, 3, H, W) float32 in [0, 1], "coords": (n,)}``, the coordinates
    taken over the whole sequence. Frames may be stored as uint8, which keeps a 600-frame
    1024x576 sequence at 1 GB instead of 4 GB; each clip is converted when it is read.

    Args:
        frames: (T, 3, H, W), float in [0, 1] or uint8.
        clip_len: frames per clip (one training step).

    Raises:
        VideoFormatError: wrong shape or float values outside [0, 1].
        PresetError: ``clip_len < 1``.
    """

    def __init__(self, frames: Tensor, clip_len: int = 8) -> None:
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
            raise VideoFormatError(f"expected RGB frames of shape (T>=1, 3, H, W), got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and (frames.min() < 0 or frames.max() > 1):
            raise VideoFormatError("float frames must lie in [0, 1]; clamp them or pass uint8 frames")
        if clip_len < 1:
            raise PresetError(f"clip_len must be >= 1, got {clip_len}")
        self.frames = frames
        self.clip_len = clip_len
        self.coords = frame_coordinates(frames.shape[0])

    def __len__(self) -> int:
        return -(-self.frames.shape[0] // self.clip_len)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        span = slice(index * self.clip_len, (index + 1) * self.clip_len)
        clip = self.frames[span]
        clip = clip.float().div(255.0) if clip.dtype == torch.uint8 else clip.float()
        return {"frames": clip, "coords": self.coords[span]}


# ------------------------------------------------------------------------------- training


class HiNeRVModule(L.LightningModule):
    """Trains an rgb-head INR on the frames of one sequence with HiNeRV's loss.

    Provides the training contract of :class:`~divinr.training.stages.StageCallback`
    (``pruning_targets``, ``quantised_targets``, one optimiser group named ``"inr"``), so the
    dense -> prune -> Quant-Noise schedule is the one DiV-INR uses. Per-epoch means of the loss
    terms and the stage name are kept in :attr:`history`.

    Args:
        inr: an INR with ``head="rgb"`` and ``output_size`` equal to the frame size.
        phases: the stage schedule (also handed to the StageCallback).
        l1_weight: weight of L1 in the loss.
        msssim_weight: weight of ``1 - MS-SSIM`` in the loss.
        weight_decay: AdamW's decoupled weight decay (HiNeRV: 0, i.e. Adam).

    Raises:
        PresetError: an INR without the rgb head.
    """

    def __init__(
        self,
        inr: LatentINR,
        phases: list[Phase],
        *,
        l1_weight: float = 0.7,
        msssim_weight: float = 0.3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if inr.config.head != "rgb":
            raise PresetError(f"the HiNeRV baseline needs an INR with head='rgb', got head={inr.config.head!r}")
        self.inr = inr
        self.phases = list(phases)
        self.l1_weight = l1_weight
        self.msssim_weight = msssim_weight
        self.weight_decay = weight_decay
        self.history: dict[str, list[Any]] = {"loss": [], "l1": [], "ms_ssim": [], "stage": []}
        self._epoch_terms: list[Tensor] = []

    def pruning_targets(self) -> list[tuple[str, nn.Parameter]]:
        """The INR decoder's conv and linear weights (grids, biases and norms are not pruned)."""
        return self.inr.decoder_parameters()

    def quantised_targets(self) -> list[tuple[nn.Module, str]]:
        """Every INR parameter as (owning module, name): all of them go into the bitstream."""
        return parameter_owners(self.inr)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        frames = batch["frames"]
        terms = hinerv_loss(
            self.inr(batch["coords"]).y, frames, l1_weight=self.l1_weight, msssim_weight=self.msssim_weight
        )
        self._epoch_terms.append(torch.stack(terms).detach())
        self.log_dict(
            {"train/loss": terms.loss, "train/l1": terms.l1, "train/ms_ssim": terms.ms_ssim},
            on_step=False, on_epoch=True, prog_bar=True, batch_size=frames.shape[0],
        )
        return terms.loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_terms:
            means = torch.stack(self._epoch_terms).mean(dim=0).tolist()
            for key, value in zip(("loss", "l1", "ms_ssim"), means):
                self.history[key].append(value)
            self.history["stage"].append(self.phases[phase_at(self.phases, self.current_epoch)[0]].name)
        self._epoch_terms = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hinerv_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run keeps the per-epoch history of the epochs before the interruption."""
        self.history = checkpoint.get("hinerv_history", self.history)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        group = {"name": "inr", "params": list(self.inr.parameters()), "lr": self.phases[0].inr_lr}
        return torch.optim.AdamW([group], weight_decay=self.weight_decay)

    def configure_callbacks(self) -> list[L.Callback]:
        return [StageCallback(self.phases)]


def train_hinerv(
    frames: Tensor,
    config: INRConfig,
    phases: list[Phase],
    *,
    clip_len: int = 8,
    seed: int = 0,
    accelerator: str = "auto",
    precision: str = "32",
    logger: Any = None,
    max_time: Any = None,
    enable_progress_bar: bool = True,
    workdir: str | Path | None = None,
    callbacks: list[L.Callback] | None = None,
) -> tuple[LatentINR, dict[str, list[Any]]]:
    """Train the HiNeRV baseline on one sequence through all phases.

    One epoch is one pass over the sequence's clips in a seeded random order.

    Args:
        frames: (T, 3, H, W) frames, float in [0, 1] or uint8.
        config: an rgb-head config, e.g. from :func:`hinerv_config`.
        phases: stage schedule, e.g. ``paper_phases(300, 120, 60)``.
        clip_len: frames per training step.
        seed: seeds the clip order, Quant-Noise and the INR's initialisation, which follows
            the seeding directly (``torch.manual_seed(seed); LatentINR(config, (H, W))``
            reproduces the initial weights).
        accelerator: Lightning accelerator.
        precision: Lightning precision, e.g. "32" or "bf16-mixed" (the loss stays float32).
        logger: a Lightning logger; None logs nothing.
        max_time: Lightning's wall-clock limit (e.g. "00:12:00:00"); training stops early.
        enable_progress_bar: show Lightning's progress bar.
        workdir: where per-epoch checkpoints go; a run finding ``last.ckpt`` of the same
            settings and frames there resumes from it (checkpoints of other settings are
            discarded). Checkpointing is off without it.
        callbacks: extra Lightning callbacks.

    Returns:
        (the trained INR on CPU, in eval mode, with Quant-Noise removed and pruned weights at
        zero; the history: per-epoch means "loss", "l1", "ms_ssim" and the "stage" name).

    Raises:
        PresetError: a config without the rgb head.
    """
    if config.head != "rgb":
        raise PresetError(f"the HiNeRV baseline needs head='rgb', got head={config.head!r}; use hinerv_config")
    dataset = FrameClips(frames, clip_len)
    workdir = Path(workdir) if workdir is not None else None
    with workdir_lock(workdir):
        L.seed_everything(seed, verbose=False)
        module = HiNeRVModule(LatentINR(config, tuple(frames.shape[-2:])), phases)
        loader = DataLoader(dataset, batch_size=None, sampler=EpochShuffle(len(dataset), seed))
        if workdir is not None:
            settings = {"config": config, "phases": phases, "clip_len": clip_len, "seed": seed}
            prepare_workdir(workdir, settings_digest(settings, frames))
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            precision=precision,
            max_epochs=total_epochs(phases),
            max_time=max_time,
            logger=logger if logger is not None else False,
            callbacks=[*(callbacks or []), *resumable_callbacks(seed, workdir)],
            enable_checkpointing=workdir is not None,
            default_root_dir=str(workdir) if workdir is not None else None,
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=min(50, len(dataset)),
        )
        trainer.fit(module, loader, ckpt_path=resume_path(workdir))
    return module.inr.eval(), module.history


@torch.no_grad()
def render(inr: LatentINR, num_frames: int, *, batch: int = 8) -> Tensor:
    """Evaluate an rgb-head INR at every frame of a ``num_frames`` sequence.

    The INR runs in eval mode (restored afterwards): an INR still carrying Quant-Noise then
    renders with fully quantised weights, i.e. what the bitstream decodes to.

    Args:
        inr: the trained INR (any device).
        num_frames: frames of the sequence it was trained on.
        batch: frames per forward pass.

    Returns:
        (num_frames, 3, H, W) float32 frames in [0, 1], on CPU.
    """
    if batch < 1:
        raise PresetError(f"batch must be >= 1, got {batch}")
    device = next(inr.parameters()).device
    coords = frame_coordinates(num_frames).to(device)
    was_training = inr.training
    inr.eval()
    try:
        return torch.cat([inr(chunk).y.float().cpu() for chunk in coords.split(batch)])
    finally:
        inr.train(was_training)

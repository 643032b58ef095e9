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
renders frames, not latent frames). Presets in :data:`divinr.models.pixel_inr.HINERV_PRESETS`
upsample a 9x16 base grid by (4, 2, 2, 2, 2) = 64 to 576x1024, HiNeRV's layout at 1080p (9x16
base, stride 120) scaled to the paper's resolution.

MS-SSIM in the loss follows pytorch_msssim, which HiNeRV trains with: Gaussian window 11 /
1.5, valid (unpadded) filtering, negative contrast terms clamped to 0, per-channel values
averaged. It needs ``10 * 2**(n - 1) + 1`` pixels per side for ``n`` scales; frames too small
for the standard 5 scales (161 px) use as many scales as fit, with the first ``n`` standard
weights renormalised to sum to 1 (see :func:`msssim_scales`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from divinr.devices import resolve_device
from divinr.errors import PresetError, VideoFormatError
from divinr.models.inr import INRConfig, LatentINR, parameter_owners
from divinr.models.pixel_inr import frame_coordinates
from divinr.training.resume import EpochShuffle, prepare_workdir, resume_path, settings_digest, workdir_lock
from divinr.training.stages import Phase, StageCallback, phase_at, total_epochs
from divinr.training.trainer import build_trainer, fit

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Standard MS-SSIM scale weights (Wang et al. 2003), finest scale first."""

_MSSSIM_WINDOW = 11
_MSSSIM_SIGMA = 1.5

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
    device: str | torch.device = "auto",
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
        config: an rgb-head config, e.g. from :func:`divinr.models.pixel_inr.hinerv_config`.
        phases: stage schedule, e.g. ``paper_phases(300, 120, 60)``.
        clip_len: frames per training step.
        seed: seeds the clip order, Quant-Noise and the INR's initialisation, which follows
            the seeding directly (``torch.manual_seed(seed); LatentINR(config, (H, W))``
            reproduces the initial weights).
        device: where to train (``auto``: CUDA when present).
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
        trainer = build_trainer(
            max_epochs=total_epochs(phases), device=resolve_device(device), precision=precision, seed=seed,
            workdir=workdir, logger=logger, callbacks=callbacks or (), progress=enable_progress_bar,
            log_every_n_steps=min(50, len(dataset)), max_time=max_time,
        )
        fit(trainer, module, loader, resume_path(workdir))
    return module.inr.eval(), module.history

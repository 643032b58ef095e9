"""The one Lightning Trainer both codecs train with (DiV-INR's module and the pixel INR's).

Both need the same things from it: one device, the stage schedule's epoch count, per-epoch
checkpoints in a work folder with bit-exact resume (:func:`~divinr.training.resume.resumable_callbacks`),
no sanity check and no model summary; only the logging cadence differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from divinr.training.resume import resumable_callbacks


def default_precision(device: torch.device) -> str:
    """bf16 mixed precision on GPU (the paper's set-up), float32 on CPU."""
    return "bf16-mixed" if device.type == "cuda" else "32-true"


def build_trainer(
    *,
    max_epochs: int,
    device: torch.device,
    precision: str,
    seed: int,
    workdir: Path | None = None,
    logger: Any = None,
    callbacks: Sequence[L.Callback] = (),
    progress: bool = True,
    log_every_n_steps: int = 1,
    max_time: Any = None,
) -> L.Trainer:
    """A Trainer on ``device`` that checkpoints into ``workdir`` (when given) every epoch."""
    return L.Trainer(
        max_epochs=max_epochs,
        max_time=max_time,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,  # type: ignore[arg-type]
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *resumable_callbacks(seed, workdir)],
        enable_checkpointing=workdir is not None,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=log_every_n_steps,
        default_root_dir=str(workdir) if workdir is not None else None,
    )


def fit(trainer: L.Trainer, module: L.LightningModule, loader: DataLoader, checkpoint: str | None) -> None:
    """``trainer.fit``, resuming from ``checkpoint`` (:func:`~divinr.training.resume.resume_path`) if given.

    DiV-INR's frozen backbone is in eval mode on purpose, so Lightning's warning about modules
    in eval mode is silenced here, for this call only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=checkpoint)

"""Per-epoch checkpoints that let a long per-video training resume where it stopped.

Both trainers (DiV-INR's :func:`divinr.codec.train_codec` and the HiNeRV baseline's
:func:`divinr.training.hinerv.train_hinerv`) run for hours per video on a GPU; a crash or a
cluster time-out must cost at most one epoch, not the whole run.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

CHECKPOINT_DIR = "checkpoints"


def epoch_checkpoint(workdir: Path) -> L.pytorch.callbacks.ModelCheckpoint:
    """One rolling checkpoint per epoch, plus ``last.ckpt`` and one written on an exception."""
    return L.pytorch.callbacks.ModelCheckpoint(
        dirpath=Path(workdir) / CHECKPOINT_DIR,
        filename="latest",
        save_last=True,
        save_top_k=1,
        every_n_epochs=1,
        save_on_exception=True,
        enable_version_counter=False,
    )


def resume_path(workdir: Path | None) -> str | None:
    """The checkpoint to resume from (``last.ckpt`` under ``workdir``), or None to start afresh."""
    if workdir is None:
        return None
    last = Path(workdir) / CHECKPOINT_DIR / "last.ckpt"
    return str(last) if last.exists() else None

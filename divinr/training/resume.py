"""Per-epoch checkpoints that let a long per-video training resume where it stopped.

Both trainers (DiV-INR's :func:`divinr.codec.train_codec` and the HiNeRV baseline's
:func:`divinr.training.hinerv.train_hinerv`) run for hours per video on a GPU; a crash or a
cluster time-out must cost at most one epoch, not the whole run. Checkpoints are kept only for
the settings and frames they were trained with (:func:`prepare_workdir`): a re-run with other
settings starts afresh instead of resuming someone else's training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

from divinr.atomic import atomic_write_text

CHECKPOINT_DIR = "checkpoints"
SETTINGS_NAME = "settings.sha256"


def settings_digest(settings: dict[str, Any], frames: torch.Tensor) -> str:
    """SHA-256 of a training's settings (JSON; dataclasses and enums by their repr) and its frames."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode())
    digest.update(str((tuple(frames.shape), frames.dtype)).encode())
    digest.update(frames.detach().cpu().contiguous().numpy())  # hashed in place: no copy of a long video
    return digest.hexdigest()


def prepare_workdir(workdir: Path, digest: str) -> None:
    """Make ``workdir`` hold checkpoints of the training ``digest`` names, and only those.

    Checkpoints written under another digest (other settings or other frames) are deleted, so
    the run starts afresh rather than resuming a different training or failing to load it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / SETTINGS_NAME
    if not marker.is_file() or marker.read_text().strip() != digest:
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
        atomic_write_text(marker, digest + "\n")


def clear_workdir(workdir: Path) -> None:
    """Remove what :func:`prepare_workdir` and the checkpoints put in ``workdir``, and the folder if then empty."""
    shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
    (workdir / SETTINGS_NAME).unlink(missing_ok=True)
    try:
        workdir.rmdir()
    except OSError:  # not empty (the caller keeps other files there) or already gone
        pass


def epoch_checkpoint(workdir: Path) -> L.pytorch.callbacks.ModelCheckpoint:
    """One rolling checkpoint per epoch and ``last.ckpt``, both at epoch ends.

    No checkpoint is written on an exception: a mid-epoch state resumes with a fresh shuffle
    and a partial epoch, which Lightning itself warns is unreliable; losing at most one epoch
    is the intended cost.
    """
    return L.pytorch.callbacks.ModelCheckpoint(
        dirpath=Path(workdir) / CHECKPOINT_DIR,
        filename="latest",
        save_last=True,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )


def resume_path(workdir: Path | None) -> str | None:
    """The checkpoint to resume from (``last.ckpt`` under ``workdir``), or None to start afresh."""
    if workdir is None:
        return None
    last = Path(workdir) / CHECKPOINT_DIR / "last.ckpt"
    return str(last) if last.exists() else None

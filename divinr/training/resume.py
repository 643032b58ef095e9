"""Per-epoch checkpoints that let a long per-video training resume where it stopped.

Both trainers (DiV-INR's :func:`divinr.training.encoder.train_codec` and the HiNeRV baseline's
:func:`divinr.training.hinerv.train_hinerv`) run for hours per video on a GPU; a crash or a
cluster time-out must cost at most one epoch, not the whole run. Checkpoints are kept only for
the settings and frames they were trained with (:func:`prepare_workdir`): a re-run with other
settings starts afresh instead of resuming someone else's training.

A resumed run is bit-exact with an uninterrupted one when every random draw of a training
step (:class:`StepSeed`) and every epoch's sample order (:class:`EpochShuffle`) is a function
of the seed and the step or epoch alone: nothing random then has to travel in a checkpoint.
One training at a time may use a work folder (:func:`workdir_lock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Sampler

from divinr.atomic import atomic_write_text
from divinr.errors import DivinrError

CHECKPOINT_DIR = "checkpoints"
SETTINGS_NAME = "settings.sha256"
LOCK_NAME = ".lock"
# Spawn-key tags that keep the seed streams of different uses apart.
_STEP_STREAM, _SHUFFLE_STREAM = 1, 2


def derived_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for the draws named by ``key`` (e.g. epoch, batch) under ``seed``.

    NumPy's ``SeedSequence`` spawn keys mix the parts, so neighbouring keys give unrelated streams.
    """
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class StepSeed(L.Callback):
    """Seed torch's global generators (CPU and CUDA) from (seed, epoch, batch) before each training step.

    Timesteps, noise and Quant-Noise masks then depend on the step alone. A run resumed from
    an epoch-end checkpoint draws what the uninterrupted run drew, whatever consumed random
    numbers before (model construction, Lightning's set-up); saving and restoring generator
    states instead would hold only if nothing drew between the save and the next step in
    either run.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(derived_seed(self.seed, _STEP_STREAM, trainer.current_epoch, batch_idx))


class EpochShuffle(Sampler[int]):
    """A random order of ``size`` items drawn from (seed, epoch), for the same reason as :class:`StepSeed`.

    Lightning calls :meth:`set_epoch` before every epoch (as for a ``DistributedSampler``), so a
    resumed run visits the items of each epoch in the uninterrupted run's order; a stateful
    generator would restart from the seed.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, _SHUFFLE_STREAM, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def resumable_callbacks(seed: int, workdir: Path | None) -> list[L.Callback]:
    """What makes a training resumable and its resume bit-exact: per-step seeds, and with a
    work folder the epoch-end checkpoint (both trainers use exactly these)."""
    return [StepSeed(seed), *([epoch_checkpoint(workdir)] if workdir is not None else [])]


@contextmanager
def workdir_lock(workdir: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``workdir`` (created if missing) while one training uses it;
    without a work folder there is nothing to share and nothing is locked.

    A second training on the same folder would resume from the first one's live checkpoint
    (or delete it) and both would write different streams, so it is refused at once. The lock
    is an ``flock`` on ``workdir/.lock``: the OS drops it when its holder dies, even by
    SIGKILL, so a crashed run never leaves a stale lock. The file is removed on release
    (leaving no trace in the folder); a process that locked a file removed that way retries.

    Raises:
        DivinrError: another process holds the lock.
    """
    if workdir is None:
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DivinrError(
                f"work folder {workdir} is in use by another encode (process {holder}); "
                "wait for it to finish or choose another work folder"
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: no one may lock the old file after us
        os.close(fd)


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
    """The checkpoint to resume from (``last.ckpt`` under ``workdir``), or None to start afresh.

    An unreadable checkpoint (truncated by a full disk or a partial copy) is an error naming
    the file, not a silent fresh start: it may stand for days of training, and only the user
    knows whether an intact copy exists; deleting it is a one-line fix.

    Raises:
        DivinrError: ``last.ckpt`` exists but is not a complete checkpoint.
    """
    if workdir is None:
        return None
    last = Path(workdir) / CHECKPOINT_DIR / "last.ckpt"
    if not last.exists():
        return None
    try:  # torch.save writes a zip archive: a truncated file loses its directory, a damaged one a CRC
        with zipfile.ZipFile(last) as archive:
            damaged = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        damaged = str(exc)
    if damaged is not None:
        raise DivinrError(
            f"checkpoint {last} is unreadable ({damaged}); delete it to start this training afresh, "
            "or put back an intact copy to resume"
        )
    return str(last)

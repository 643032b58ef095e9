"""Granularity gop with per-GoP adapters: every GoP trains alone, so GoPs can run as separate jobs.

    video --split--> GoP g frames --GoPJob--> train_gops (a job: one backbone, its GoPs in turn)
          --> workdir/gop-<g>/part.json (atomic: the GoP's coded INR + adapter sections)
    all parts present --assemble--> one bitstream (header + "inr.<g>" + "<family>.<g>" sections)

A part is the finished work of one GoP. A re-run skips every GoP whose part was made with the
same settings and frames and resumes the others from their own per-epoch checkpoints, so a
cluster job that dies costs only its unfinished GoP. Jobs run here one after another
(``launcher="inline"``), as ``workers`` local processes (``"local"``) or as a Slurm array
(``"slurm"``), both through submitit; the caller waits for them and assembles.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from divinr.atomic import atomic_path, atomic_write_text
from divinr.compression.bitstream import StreamHeader, encode_tensors
from divinr.data.video import Video
from divinr.errors import DivinrError, PresetError
from divinr.models.adapters import adapter_state_dict, eject_adapters
from divinr.models.backbone import Backbone, backbone_fingerprint, load_backbone
from divinr.training.resume import settings_digest, workdir_lock

if TYPE_CHECKING:
    from divinr.training.encoder import EncoderConfig

PART_NAME = "part.json"
FRAMES_NAME = "frames.pt"
LAUNCHERS = ("inline", "local", "slurm")


@dataclass(frozen=True)
class GoPLauncher:
    """Where the GoPs of a per-GoP encode train.

    ``inline``: in this process, one after another. ``local``: ``workers`` processes on this
    machine (each GoP's training gets ``threads`` threads, default ``cpu_count / workers``). ``slurm``: one array task
    per unfinished GoP, at most ``workers`` at once (0: no limit), with ``slurm`` the submitit
    parameters (``slurm_partition``, ``gpus_per_node``, ``timeout_min``, ...). ``timeout_min``
    bounds a local job.
    """

    kind: str = "inline"
    workers: int = 1
    timeout_min: int = 24 * 60
    threads: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise PresetError(f"GoP launcher must be one of {', '.join(LAUNCHERS)}, got {self.kind!r}")
        if self.workers < 0 or (self.kind != "slurm" and self.workers < 1):
            raise PresetError(f"GoP workers must be >= 1 (slurm: >= 0, 0 = no limit), got {self.workers}")


@dataclass(frozen=True)
class GoPJob:
    """One GoP's training: everything a job on another machine needs, and nothing it must share.

    The GoP's frames (padded to the coded size) wait in ``frames.pt`` in its folder, so a job's
    pickle stays small however long the video; ``digest`` names the finished part (see
    :func:`part_digest`); ``header`` is the stream's planned header (backbone fingerprint and
    layer count still unknown).
    """

    config: EncoderConfig
    header: StreamHeader
    index: int
    fps: float
    digest: str
    workdir: Path
    progress: bool = False

    @property
    def folder(self) -> Path:
        return self.workdir / f"gop-{self.index:04d}"

    @property
    def frames_file(self) -> Path:
        return self.folder / FRAMES_NAME

    def video(self) -> Video:
        return Video(torch.load(self.frames_file, weights_only=True), self.fps)


def part_digest(config: EncoderConfig, header: StreamHeader, index: int, frames: torch.Tensor) -> str:
    """Names a finished part: the settings, the GoP's place and its frames. Not the backbone's
    weights, which only a loaded backbone knows: parts record their fingerprint instead."""
    settings = {
        "header": replace(header, backbone_fingerprint=bytes(16), nola_layers=0), "gop": index,
        "backbone_path": config.backbone_path, "phases": config.phases, "loss": config.loss, "seed": config.seed,
        "weight_decay": config.weight_decay, "precision": config.precision,
    }  # fmt: skip
    return settings_digest(settings, frames)


@dataclass(frozen=True)
class GoPPart:
    """A finished GoP: its coded sections and what the assembled header needs from its training."""

    index: int
    inr: bytes
    adapter: bytes
    fingerprint: bytes
    nola_layers: int
    history: list[dict[str, float]]
    seconds: float

    def to_json(self, digest: str) -> str:
        return json.dumps({
            "digest": digest, "index": self.index, "inr": base64.b64encode(self.inr).decode(),
            "adapter": base64.b64encode(self.adapter).decode(), "fingerprint": self.fingerprint.hex(),
            "nola_layers": self.nola_layers, "history": self.history, "seconds": self.seconds,
        })  # fmt: skip


def read_part(job: GoPJob) -> GoPPart | None:
    """The job's finished part, or None if it has none made with its settings and frames."""
    path = job.folder / PART_NAME
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        return None  # a part is written atomically: an unreadable one is foreign, train again
    if stored.get("digest") != job.digest:
        return None
    return GoPPart(
        stored["index"], base64.b64decode(stored["inr"]), base64.b64decode(stored["adapter"]),
        bytes.fromhex(stored["fingerprint"]), stored["nola_layers"], stored["history"], stored["seconds"],
    )  # fmt: skip


def train_gops(jobs: Sequence[GoPJob], threads: int | None = None, callbacks: Sequence[Any] = ()) -> None:
    """Train the GoPs of ``jobs`` one after another on one backbone, skipping finished ones: what a
    job of the launcher runs."""
    if threads is not None:
        torch.set_num_threads(threads)
    todo = [job for job in jobs if read_part(job) is None]
    if not todo:
        return
    config = todo[0].config
    backbone = load_backbone(
        config.backbone, path=config.backbone_path, dtype=config.model_dtype(), device=config.resolved_device(),
        gradient_checkpointing=config.gradient_checkpointing,
    )
    fingerprint = backbone_fingerprint(backbone)
    for job in todo:
        _train_one(job, backbone, fingerprint, callbacks)


def _train_one(job: GoPJob, backbone: Backbone, fingerprint: bytes, callbacks: Sequence[Any]) -> None:
    """Train one GoP with fresh adapters (removed again afterwards), write its part, and drop what
    only an unfinished training needs (its checkpoints, latents and frames)."""
    from divinr.codec.divinr import inr_tensors
    from divinr.training.encoder import train_codec

    start = time.perf_counter()
    config = job.config
    if str(config.model_dtype()).removeprefix("torch.") != job.header.model_dtype:
        raise DivinrError(
            f"GoP {job.index} would train with a {config.model_dtype()} DiT but the stream's header says "
            f"{job.header.model_dtype}; set training.precision (and the device) explicitly"
        )
    with workdir_lock(job.folder):
        if read_part(job) is not None:  # finished by another job since this one's list was made
            return
        adapted = backbone.adapt(config.adapter_config, init_seed=config.seed)
        try:
            module, history = train_codec(
                job.video(), config, job.header, backbone, fingerprint, workdir=job.folder / "train",
                callbacks=callbacks, progress=job.progress,
            )  # fmt: skip
            adapter = adapter_state_dict(backbone.transformer)
            part = GoPPart(
                job.index, encode_tensors(inr_tensors(module.inr[0], job.header), config.quant_bits),
                encode_tensors(adapter, config.quant_bits) if adapter else b"", fingerprint, len(adapted), history,
                time.perf_counter() - start,
            )  # fmt: skip
        finally:
            eject_adapters(backbone.transformer)  # never merged: the next GoP adapts the backbone as loaded
        atomic_write_text(job.folder / PART_NAME, part.to_json(job.digest))
        shutil.rmtree(job.folder / "train", ignore_errors=True)
        job.frames_file.unlink(missing_ok=True)


def run_jobs(jobs: Sequence[GoPJob], launcher: GoPLauncher, callbacks: Sequence[Any] = ()) -> list[GoPPart]:
    """Train every unfinished GoP of ``jobs`` where ``launcher`` says, wait, and return all parts in order.

    ``callbacks`` (Lightning's) reach inline trainings only: they do not travel to other processes.
    """
    todo = [job for job in jobs if read_part(job) is None]
    if todo and launcher.kind == "inline":
        train_gops(todo, callbacks=callbacks)
    elif todo:
        _submit(todo, launcher)
    parts = [read_part(job) for job in jobs]
    missing = [job.index for job, part in zip(jobs, parts) if part is None]
    if missing:
        raise DivinrError(f"GoPs {missing} finished without a part; run the encode again to train them")
    return [part for part in parts if part is not None]


def _submit(todo: Sequence[GoPJob], launcher: GoPLauncher) -> None:
    """Run ``todo`` through submitit and wait for every job; failures are reported together, after
    the others finished (no job is left writing into the folder)."""
    import submitit

    folder = todo[0].workdir / "jobs"
    if launcher.kind == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        workers = min(launcher.workers, len(todo))
        threads = launcher.threads or max(1, (os.cpu_count() or 1) // workers)
        # submitit hides the GPUs from a local job unless given some: one each, round robin
        gpus = torch.cuda.device_count() if todo[0].config.resolved_device().type == "cuda" else 0
        submitted = []
        for k in range(workers):
            visible = {"gpus_per_node": 1, "visible_gpus": [k % gpus]} if gpus else {}
            executor.update_parameters(timeout_min=launcher.timeout_min, **visible)
            submitted.append(executor.submit(train_gops, list(todo[k::workers]), threads))
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        parallel = {"slurm_array_parallelism": launcher.workers} if launcher.workers else {}
        executor.update_parameters(**{**parallel, **launcher.slurm})
        submitted = executor.map_array(train_gops, [[job] for job in todo])
    failures = []
    for job in submitted:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - collected, then re-raised with where to look
            failures.append((job.job_id, exc))
    if failures:
        ids = ", ".join(f"{job_id} ({type(exc).__name__}: {exc})" for job_id, exc in failures)
        raise DivinrError(
            f"GoP jobs failed: {ids}; their logs are in {folder}. GoPs that finished keep their parts in "
            f"{todo[0].workdir}: run the encode again with the same work folder to train only the others"
        ) from failures[0][1]


def gop_jobs(video: Video, config: EncoderConfig, header: StreamHeader, workdir: Path, progress: bool) -> list[GoPJob]:
    """One job per GoP of ``video`` (padded to the coded size); the frames of every GoP without a
    finished part are written to its folder for its job to read."""
    from divinr.data.gop import plan_gops

    jobs = []
    for span in plan_gops(video.num_frames, config.gop_size):
        frames = video.frames[span.start : span.start + span.num_real]
        job = GoPJob(config, header, span.index, video.fps, part_digest(config, header, span.index, frames), workdir,
                     progress)  # fmt: skip
        if read_part(job) is None:
            job.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(job.frames_file) as tmp:
                torch.save(frames.clone(), tmp)  # a clone: a saved view would carry the whole video
        jobs.append(job)
    return jobs


def assembled_header(header: StreamHeader, parts: Sequence[GoPPart]) -> StreamHeader:
    """The planned header completed by the parts, which must agree on the backbone they trained with."""
    seen = {(part.fingerprint, part.nola_layers) for part in parts}
    if len(seen) != 1:
        by = {p.index: p.fingerprint.hex()[:12] for p in parts}
        raise DivinrError(
            f"the GoPs were trained with different backbone weights ({by}); delete the parts of the GoPs "
            "trained with the wrong weights (gop-*/part.json in the work folder) and encode again"
        )
    ((fingerprint, layers),) = seen
    return replace(header, backbone_fingerprint=fingerprint, nola_layers=layers)

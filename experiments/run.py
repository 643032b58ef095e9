"""Run one rate point of one sequence from a Hydra config, and nothing twice.

    cfg --encoder_config/load_frames--> EncoderConfig, Video
        --DiVINRCodec.encode--> stream.dvr (atomic)
        --decompress(stream.dvr bytes, fresh backbone)--> decoded.mp4, metrics
        --> compare.png (original / decoded / error of three frames)
        --> fid_stats.npz (atomic; FID statistics for pooled per-dataset FID)
        --> results.json (atomic, last: its presence with status "ok" marks the point done)

A point's folder is fixed by its config, ``results_root/exp_name/<dataset|clip>/<sequence>/
rate_point``, so a sweep re-run skips finished points and resumes unfinished ones from their
last training checkpoint. A point that fails records ``status: failed`` with a one-line error
and returns normally, so the other points of a multirun go on. With ``rescore=true`` a
finished point that lacks requested metrics (skipped for missing weights) is scored again from
its decoded file instead of being skipped. That logic is shared with the reference codecs'
sweeps: ``experiments.points``.

    python -m experiments.run +exp=demo
    python -m experiments.run +exp=uvg_sweep hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
    python -m experiments.run +exp=anchors_uvg     (reference codecs: experiments/anchors.py)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from divinr.codec import DiVINRCodec, decompress, peak_memory
from divinr.data.video import Video, read_video, write_video
from divinr.errors import DivinrError, PresetError, VideoFormatError, unknown_choice
from divinr.inference.sampler import SamplerConfig
from divinr.metrics.evaluate import evaluate_sequence
from divinr.models.adapters import LoRAConfig, VeRAConfig
from divinr.models.backbone import get_preset
from divinr.models.inr import inr_config
from divinr.models.nola import NOLAConfig
from divinr.reporting import plot_comparison
from divinr.results import RunResult, git_commit
from divinr.rate import bits_per_pixel
from divinr.training.encoder import EncoderConfig
from divinr.training.gop_jobs import GoPLauncher
from divinr.training.losses import LossConfig
from divinr.training.stages import Phase, paper_phases
from experiments.anchors import run_anchor
from experiments.callbacks import summary_table
from experiments.points import (
    Point, exit_status, failed_result, frames_source, point_name, rescore_result, run_points, score_fields, sequence_dir,
)
from experiments.schema import library_kwargs, register_configs
from experiments.wandb_logging import OfflineNotice, finish_wandb, log_media, wandb_logger

STREAM_NAME = "stream.dvr"
DECODED_NAME = "decoded.mp4"
COMPARE_NAME = "compare.png"  # original | decoded | error for three frames, for a person to look at
WORK_NAME = "train"  # checkpoints and the latent cache; removed after success unless keep_workdir
LOG_NAME = "logs"
LOGGERS = ("none", "csv", "wandb")


# ---------------------------------------------------------------------------- config -> objects


def training_phases(training: DictConfig) -> list[Phase]:
    """The stage schedule: explicit ``training.phases`` or the paper's three stages.

    Args:
        training: the ``training`` group.

    Returns:
        Phases with Quant-Noise at ``training.bits`` (the width the bitstream quantises to).
    """
    if training.phases:
        try:
            explicit = [OmegaConf.to_container(p, throw_on_missing=True) for p in training.phases]
        except MissingMandatoryValue as exc:
            raise PresetError(f"training.phases: every phase needs a name and epochs ({exc.key} is not set)") from None
        return [Phase(**p, quant_bits=training.bits) for p in explicit]
    return paper_phases(**library_kwargs(paper_phases, training))


def encoder_config(cfg: DictConfig) -> EncoderConfig:
    """Build the library's encoder settings, checking preset names before anything heavy runs.

    Args:
        cfg: the composed root config.

    Returns:
        The :class:`EncoderConfig` that ``compress`` takes.

    Raises:
        PresetError: unknown backbone/INR preset, bad INR override or other invalid value.
    """
    get_preset(cfg.backbone.preset)
    overrides = OmegaConf.to_container(cfg.inr.overrides, resolve=True)
    inr_config(cfg.inr.preset, **overrides)
    if cfg.logger.name not in LOGGERS:
        raise unknown_choice("logger", cfg.logger.name, LOGGERS)
    training = cfg.training
    return EncoderConfig(
        backbone=cfg.backbone.preset,
        backbone_path=cfg.backbone.path,
        gradient_checkpointing=cfg.backbone.gradient_checkpointing,
        inr=cfg.inr.preset,
        inr_overrides=overrides,
        target_bpp=cfg.inr.target_bpp,
        adapter=cfg.adapter,
        nola=NOLAConfig(**OmegaConf.to_container(cfg.nola, resolve=True)),
        lora=LoRAConfig(**OmegaConf.to_container(cfg.lora, resolve=True)),
        vera=VeRAConfig(**OmegaConf.to_container(cfg.vera, resolve=True)),
        phases=training_phases(training),
        loss=LossConfig(**library_kwargs(LossConfig, training)),
        sampler=SamplerConfig(**OmegaConf.to_container(cfg.sampler, resolve=True)),
        gop_size=cfg.gop_size,
        mask_mode=cfg.mask_mode,
        conditioning=cfg.conditioning,
        keyframe_quality=cfg.keyframe_quality,
        granularity=cfg.granularity,
        nola_scope=cfg.nola_scope,
        quant_bits=training.bits,
        seed=training.seed,
        device=training.device,
        precision=training.precision,
        weight_decay=training.weight_decay,
    )


def launcher_of(cfg: DictConfig) -> GoPLauncher:
    """Where the GoPs of a per-GoP-adapter point train (``gop_jobs``)."""
    return GoPLauncher(**OmegaConf.to_container(cfg.gop_jobs, resolve=True))


def point_dir(cfg: DictConfig) -> Path:
    """``results_root/exp_name/<dataset|clip>/<sequence>/rate_point``, absolute (from the launch folder)."""
    return sequence_dir(cfg) / cfg.rate_point


def load_frames(cfg: DictConfig) -> Video:
    """The point's frames, read exactly as :func:`frames_source` records them."""
    return frames_source(cfg).read()


def default_label(cfg: DictConfig) -> str:
    """Describes the curve (not the point): backbone, adapter size, schedule, mask or keyframes."""
    t = cfg.training
    epochs = [p.epochs for p in t.phases] if t.phases else [t.dense_epochs, t.prune_epochs, t.quant_epochs]
    schedule = "/".join(str(e) for e in epochs)
    mask = ", M=1" if cfg.mask_mode == "ones" else ""
    sizes = {"nola": f"NOLA b={cfg.nola.num_bases}", "lora": f"LoRA r={cfg.lora.rank}", "vera": f"VeRA r={cfg.vera.rank}"}
    keyframes = ", JPEG keyframes" if cfg.conditioning == "jpeg" else ""
    scope = cfg.nola_scope or cfg.granularity
    gops = "" if cfg.granularity == "sequence" else f", per-GoP INR{' + adapters' if scope == 'gop' else ''}"
    return f"DiV-INR ({cfg.backbone.preset}, {sizes.get(cfg.adapter, cfg.adapter)}, {schedule} ep{mask}{keyframes}{gops})"


# ---------------------------------------------------------------------------- loggers


def make_logger(cfg: DictConfig, run_dir: Path, title: str) -> CSVLogger | WandbLogger | None:
    """The Lightning logger of the point, or None. W&B trouble falls back to CSV with a warning."""
    kind = cfg.logger.name
    if kind == "none":
        return None
    if kind == "wandb":
        try:
            return wandb_logger(cfg, run_dir, title, OfflineNotice())
        except Exception as exc:  # noqa: BLE001 - logging must never cost a run
            warnings.warn(f"W&B unavailable ({type(exc).__name__}: {exc}); logging to CSV in {run_dir / LOG_NAME}")
    return CSVLogger(save_dir=str(run_dir), name=LOG_NAME, version="")


# ---------------------------------------------------------------------------- one point


def _rescore_point(cfg: DictConfig, run_dir: Path, stored: RunResult, metrics: list[str]) -> RunResult:
    """Score a finished DiV-INR point again from its lossless decoded file."""
    decoded_file = run_dir / (stored.decoded or DECODED_NAME)
    if not decoded_file.is_file():
        raise VideoFormatError(
            f"{decoded_file} is missing, so {run_dir} cannot be re-scored; decode its stream again with "
            f"`divinr decode {run_dir / STREAM_NAME} -o {decoded_file}`"
        )
    return rescore_result(stored, run_dir, load_frames(cfg).frames, read_video(decoded_file).frames, metrics)


def decode_agreement(reconstruction: torch.Tensor, decoded: torch.Tensor, run_dir: Path) -> dict[str, Any]:
    """Whether the encoder's reconstruction and the decode from the file are the same frames (a warning if not)."""
    matches = reconstruction.shape == decoded.shape and torch.equal(reconstruction, decoded)
    max_diff = 0.0 if matches else float((decoded - reconstruction).abs().max())
    if not matches:
        warnings.warn(f"{run_dir}: decoded frames differ from the encoder's reconstruction (max |diff| {max_diff:.3g})")
    return {"decoder_matches_encoder": matches, "decoder_max_abs_diff": max_diff}


def encode_point(cfg: DictConfig, run_dir: Path, dataset: str, sequence: str) -> RunResult:
    """Encode, write the stream, decode it from the file, evaluate; the result to be written."""
    config = encoder_config(cfg)
    video = load_frames(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(cfg, run_dir, f"{cfg.exp_name}/{dataset}/{sequence}/{cfg.rate_point}")
    stream = run_dir / STREAM_NAME
    # The stream is written as soon as it exists, so a failure afterwards never loses the training.
    encoded = DiVINRCodec(config, progress=cfg.progress, launcher=launcher_of(cfg)).encode(
        video, workdir=run_dir / WORK_NAME, logger=logger, bitstream_path=stream, reconstruct=cfg.verify_decode
    )
    # The honest decoder: only the file and the public backbone, loaded afresh.
    start = time.perf_counter()
    decoded = decompress(
        stream.read_bytes(), backbone_path=cfg.backbone.path, device=config.device, progress=cfg.progress
    )
    decode_seconds = time.perf_counter() - start
    checks = {}
    if encoded.reconstruction is not None:
        checks = decode_agreement(encoded.reconstruction.frames, decoded.frames, run_dir)
        encoded.reconstruction = None  # a third full-length float32 copy is not needed any more
    write_video(run_dir / DECODED_NAME, decoded.frames, decoded.fps)
    plot_comparison(video.frames, decoded.frames, run_dir / COMPARE_NAME)

    bpp = bits_per_pixel(os.path.getsize(stream), video.num_frames, video.width, video.height)
    scores = evaluate_sequence(
        video.frames, decoded.frames, metrics=list(cfg.metrics),
        device=None if config.device == "auto" else config.device, skip_missing=True,
    )
    if isinstance(logger, WandbLogger):
        try:
            payload = {f"bits/{k}": v for k, v in encoded.bits.items()}
            payload.update({"bpp": bpp, **{f"eval/{m}": scores[m] for m in cfg.metrics if scores[m] is not None}})
            log_media(logger.experiment, cfg, video, decoded.frames, payload)
        except Exception as exc:  # noqa: BLE001 - media logging is a convenience, never a failure
            warnings.warn(f"W&B media logging failed ({type(exc).__name__}: {exc})")
    fields, extra = score_fields(cfg, scores, run_dir)
    return RunResult(
        codec=cfg.codec,
        label=cfg.label or default_label(cfg),
        dataset=dataset,
        sequence=sequence,
        rate_point=cfg.rate_point,
        bpp=bpp,
        bits=dict(encoded.bits),
        frames=video.num_frames,
        width=video.width,
        height=video.height,
        fps=float(video.fps),
        **fields,
        encode_seconds=encoded.encode_seconds,
        decode_seconds=decode_seconds,
        peak_memory_bytes=peak_memory(),  # of the whole point: training, then the decode from the file
        backbone=cfg.backbone.preset,
        bitstream=STREAM_NAME,
        decoded=DECODED_NAME,
        git_commit=git_commit(),
        config={
            "resolved": resolved,
            **({"checks": checks, "decode_seconds_in_encoder": encoded.decode_seconds} if checks else {}),
            "final_losses": encoded.history[-1] if encoded.history else {},
            **({"predicted_bpp": encoded.predicted_bpp, "inr": encoded.header.inr.to_dict()}
               if encoded.predicted_bpp is not None else {}),
            **extra,
        },
    )


def _code_point(cfg: DictConfig, run_dir: Path, dataset: str, sequence: str) -> RunResult:
    """Encode the point afresh (``force`` drops the old settings' checkpoints); the W&B run always ends."""
    if cfg.force:
        shutil.rmtree(run_dir / WORK_NAME, ignore_errors=True)
    failed = True
    try:
        result = encode_point(cfg, run_dir, dataset, sequence)
        failed = False
    finally:
        finish_wandb(failed)
    return result


def _written(cfg: DictConfig, run_dir: Path, result: RunResult) -> None:
    """Once the result is on disk: drop the work folder of a success, print the summary if asked."""
    if result.status == "ok" and not cfg.keep_workdir:
        shutil.rmtree(run_dir / WORK_NAME, ignore_errors=True)
    if cfg.print_summary:
        print(summary_table([result]))


def run(cfg: DictConfig) -> RunResult | None:
    """Run (or skip) one point; print its folder as the last line of output.

    Args:
        cfg: the composed root config (schema :class:`experiments.schema.DivinrConfig`).

    Returns:
        The point's result (the stored one when skipped; ``status="failed"`` on an error),
        or None when the config cannot even name the point's folder or the folder holds a
        finished run with other settings.
    """
    try:
        run_dir = point_dir(cfg)
        dataset, sequence = point_name(cfg)
    except DivinrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    point: Point[None] = Point(
        run_dir,
        code=lambda _: _code_point(cfg, run_dir, dataset, sequence),
        rescore=lambda _, stored, metrics: _rescore_point(cfg, run_dir, stored, metrics),
        failed=lambda exc: failed_result(
            cfg, exc, codec=cfg.codec, label=cfg.label or default_label(cfg), dataset=dataset, sequence=sequence,
            rate_point=cfg.rate_point, backbone=cfg.backbone.preset,
        ),
        written=lambda result: _written(cfg, run_dir, result),
    )
    (result,) = run_points(
        cfg, [point], setup=lambda _: None, rename_hint="give this point its own rate_point or exp_name"
    )
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> RunResult | list[RunResult | None] | None:
    """Hydra entry point; a single (non-sweep) run that fails exits with a non-zero status.

    With ``anchor`` set, the job runs that reference codec's rate sweep (``experiments.anchors``).
    """
    outcome: RunResult | list[RunResult | None] | None
    if cfg.anchor is not None:
        outcome = run_anchor(cfg)
        status = exit_status(outcome)
    else:
        outcome = run(cfg)
        status = exit_status(None if outcome is None else [outcome])
    if HydraConfig.get().mode == RunMode.RUN and status:
        sys.exit(status)
    return outcome


if __name__ == "__main__":
    register_configs()  # the schema Hydra composes against: stored here, not on import
    main()

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
its decoded file instead of being skipped.

    python -m experiments.run +exp=demo
    python -m experiments.run +exp=uvg_sweep hydra/launcher=slurm_gpu hydra.launcher.partition=gpu
    python -m experiments.run +exp=anchors_uvg     (reference codecs: experiments/anchors.py)
"""

from __future__ import annotations

import dataclasses
import logging
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
from hydra.utils import to_absolute_path
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from divinr.anchors.base import VideoSource
from divinr.codec import DiVINRCodec, check_resolution, decompress
from divinr.data.datasets import dataset_key, get_dataset, sequence_source
from divinr.data.samples import SAMPLE_CLIPS, sample_clip_path
from divinr.data.video import Video, read_video, write_video
from divinr.errors import EXIT_USER_ERROR, DivinrError, PresetError, VideoFormatError, unknown_choice
from divinr.inference.sampler import SamplerConfig
from divinr.metrics.evaluate import evaluate_sequence
from divinr.metrics.perceptual import FID_STATS_NAME, save_fid_stats
from divinr.models.backbone import get_preset
from divinr.models.inr import inr_config
from divinr.models.nola import NOLAConfig
from divinr.reporting import plot_comparison
from divinr.results import (
    RESULTS_NAME,
    RunResult,
    git_commit,
    is_finished,
    read_result,
    write_result,
)
from divinr.rate import bits_per_pixel
from divinr.training.encoder import EncoderConfig
from divinr.training.losses import LossConfig
from divinr.training.stages import Phase, paper_phases
from experiments.callbacks import summary_table
from experiments.schema import library_kwargs, register_configs
from experiments.wandb_logging import OfflineNotice, finish_wandb, log_media, wandb_logger

log = logging.getLogger(__name__)

STREAM_NAME = "stream.dvr"
DECODED_NAME = "decoded.mp4"
COMPARE_NAME = "compare.png"  # original | decoded | error for three frames, for a person to look at
WORK_NAME = "train"  # checkpoints and the latent cache; removed after success unless keep_workdir
LOG_NAME = "logs"
LOGGERS = ("none", "csv", "wandb")
# Settings that may change between a finished point and a re-run without changing its result.
_ENVIRONMENT_KEYS = (
    "results_root", "force", "rescore", "keep_workdir", "verify_decode", "progress", "print_summary", "metrics", "logger", "label",
    "backbone.path", "backbone.gradient_checkpointing", "training.device", "data.root",
)


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
        nola=NOLAConfig(**OmegaConf.to_container(cfg.nola, resolve=True)),
        phases=training_phases(training),
        loss=LossConfig(**library_kwargs(LossConfig, training)),
        sampler=SamplerConfig(**OmegaConf.to_container(cfg.sampler, resolve=True)),
        gop_size=cfg.gop_size,
        mask_mode=cfg.mask_mode,
        quant_bits=training.bits,
        seed=training.seed,
        device=training.device,
        precision=training.precision,
        weight_decay=training.weight_decay,
    )


def point_name(cfg: DictConfig) -> tuple[str, str]:
    """(dataset key or ``"clip"``, sequence name) of the point; registry spellings where known."""
    data = cfg.data
    if data.source == "clip":
        if not data.clip:
            raise PresetError("data.clip is empty; name a sample clip (bikes) or give a video file path")
        return "clip", data.clip if data.clip in SAMPLE_CLIPS else Path(data.clip).stem
    if data.source != "dataset":
        raise unknown_choice("data source", data.source, ("clip", "dataset"))
    if not data.dataset or not data.sequence:
        raise PresetError(
            "data.source=dataset needs data.dataset and data.sequence, e.g. data=uvg data.sequence=Beauty"
        )
    try:
        return get_dataset(data.dataset).name, get_dataset(data.dataset).sequence(data.sequence).name
    except DivinrError:  # keep the given names so the failure is recorded in its own folder
        return dataset_key(data.dataset), data.sequence


def point_dir(cfg: DictConfig) -> Path:
    """``results_root/exp_name/<dataset|clip>/<sequence>/rate_point``, absolute (from the launch folder)."""
    dataset, sequence = point_name(cfg)
    return Path(to_absolute_path(cfg.results_root)) / cfg.exp_name / dataset / sequence / cfg.rate_point


def frames_source(cfg: DictConfig) -> VideoSource:
    """The file and reader arguments of the point's frames at coding resolution (clip file / sample
    clip, or dataset sequence): what a recorded anchor command re-reads."""
    data = cfg.data
    if data.source == "clip":
        path = sample_clip_path(data.clip) if data.clip in SAMPLE_CLIPS else Path(to_absolute_path(data.clip))
        check_resolution(data.width, data.height)
        return VideoSource(path, {"start": data.start, "max_frames": data.max_frames, "resize": (data.width, data.height)})
    if data.start:
        raise PresetError("data.start applies to clips only; dataset sequences are coded from their first frame")
    root = to_absolute_path(data.root) if data.root else None
    return VideoSource(*sequence_source(
        data.dataset, data.sequence, root, width=data.width, height=data.height, max_frames=data.max_frames
    ))


def load_frames(cfg: DictConfig) -> Video:
    """The point's frames, read exactly as :func:`frames_source` records them."""
    return frames_source(cfg).read()


def default_label(cfg: DictConfig) -> str:
    """Describes the curve (not the point): backbone, adapter size, schedule, mask."""
    t = cfg.training
    epochs = [p.epochs for p in t.phases] if t.phases else [t.dense_epochs, t.prune_epochs, t.quant_epochs]
    schedule = "/".join(str(e) for e in epochs)
    mask = ", M=1" if cfg.mask_mode == "ones" else ""
    return f"DiV-INR ({cfg.backbone.preset}, NOLA b={cfg.nola.num_bases}, {schedule} ep{mask})"


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


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring environment-only keys."""
    old, new = _flatten(stored.get("resolved", {})), _flatten(current)

    def relevant(key: str) -> bool:
        return not any(key == k or key.startswith(f"{k}.") for k in _ENVIRONMENT_KEYS)

    return sorted(k for k in set(old) | set(new) if relevant(k) and old.get(k) != new.get(k))


def score_fields(cfg: DictConfig, scores: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """RunResult fields and config entries of an evaluation.

    FID feature statistics go to ``fid_stats.npz`` beside ``results.json`` (named in the config)
    so Table 1 can pool them per dataset.
    """
    fields = {"metrics": {m: scores[m] for m in cfg.metrics}, "skipped_metrics": dict(scores["skipped"])}
    if scores["fid_stats"] is None:
        return fields, {}
    save_fid_stats(run_dir / FID_STATS_NAME, *scores["fid_stats"])
    return fields, {"fid_stats": FID_STATS_NAME}


def metrics_to_rescore(cfg: DictConfig, stored: RunResult) -> list[str]:
    """Requested metrics a finished point lacks: skipped for missing weights, or not asked for then."""
    return [m for m in cfg.metrics if stored.metrics.get(m) is None]


def rescore_result(
    stored: RunResult, run_dir: Path, reference: torch.Tensor, decoded: torch.Tensor, metrics: list[str]
) -> RunResult:
    """``stored`` with ``metrics`` computed now from the point's decoded frames; nothing else changes.

    Metrics whose weights are still missing stay skipped, with the new reason. The stream, the
    rate and every score already recorded are kept, so a sweep run before the metric weights
    were downloaded needs no re-encoding.
    """
    scores = evaluate_sequence(reference, decoded, metrics=metrics, skip_missing=True)
    done = [m for m in metrics if scores[m] is not None]
    skipped = {k: v for k, v in stored.skipped_metrics.items() if k not in done}
    skipped.update(scores["skipped"])
    config = dict(stored.config)
    if scores["fid_stats"] is not None:
        save_fid_stats(run_dir / FID_STATS_NAME, *scores["fid_stats"])
        config["fid_stats"] = FID_STATS_NAME
    config["rescored"] = [*config.get("rescored", []), {"metrics": done, "git_commit": git_commit()}]
    return dataclasses.replace(
        stored, metrics={**stored.metrics, **{m: scores[m] for m in metrics}}, skipped_metrics=skipped, config=config
    )


def store_rescored(stored: RunResult, rescored: RunResult, run_dir: Path, metrics: list[str]) -> RunResult:
    """Write a re-scored result if it gained a metric, print what was added; the result in effect."""
    added = [m for m in metrics if rescored.metrics.get(m) is not None]
    print(f"rescored {', '.join(added) or 'nothing'}")
    if not added:
        return stored
    write_result(rescored, run_dir)
    return rescored


def report_failure(exc: BaseException, where: Path) -> None:
    """One line for a user error, a logged traceback for anything else."""
    if isinstance(exc, DivinrError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        log.error("%s failed", where, exc_info=exc)


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
    encoded = DiVINRCodec(config, progress=cfg.progress).encode(
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
        peak_memory_bytes=dict(encoded.peak_memory_bytes),
        backbone=cfg.backbone.preset,
        bitstream=STREAM_NAME,
        decoded=DECODED_NAME,
        git_commit=git_commit(),
        config={
            "resolved": resolved,
            **({"checks": checks, "decode_seconds_in_encoder": encoded.decode_seconds} if checks else {}),
            "final_losses": encoded.history[-1] if encoded.history else {},
            **extra,
        },
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run(cfg: DictConfig) -> RunResult | None:
    """Run (or skip) one point; print its folder as the last line of output.

    Args:
        cfg: the composed root config (schema :class:`experiments.schema.DivinrConfig`).

    Returns:
        The point's result (the stored one when skipped; ``status="failed"`` on an error),
        or None when the config cannot even name the point's folder.
    """
    try:
        run_dir = point_dir(cfg)
        dataset, sequence = point_name(cfg)
    except DivinrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if is_finished(run_dir) and not cfg.force:
        stored = read_result(run_dir / RESULTS_NAME)
        changed = changed_settings(stored.config, OmegaConf.to_container(cfg, resolve=True))
        if changed:
            print(
                f"error: {run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                "give this point its own rate_point or exp_name, or pass force=true to overwrite it",
                file=sys.stderr,
            )
            print(run_dir)
            return None
        missing = metrics_to_rescore(cfg, stored) if cfg.rescore else []
        if missing:
            try:
                rescored = _rescore_point(cfg, run_dir, stored, missing)
            except Exception as exc:  # noqa: BLE001 - the stored result stays valid; the sweep goes on
                report_failure(exc, run_dir)
            else:
                stored = store_rescored(stored, rescored, run_dir, missing)
        else:
            print("skip")
        print(run_dir)
        return stored
    if cfg.force:
        shutil.rmtree(run_dir / WORK_NAME, ignore_errors=True)  # its checkpoints belong to the old settings
    run_dir.mkdir(parents=True, exist_ok=True)
    failed = True
    try:
        result = encode_point(cfg, run_dir, dataset, sequence)
        failed = False
    except Exception as exc:  # noqa: BLE001 - a failed point must not stop the sweep
        report_failure(exc, run_dir)
        result = RunResult(
            codec=cfg.codec, label=cfg.label or default_label(cfg), dataset=dataset, sequence=sequence,
            rate_point=cfg.rate_point, backbone=cfg.backbone.preset, git_commit=git_commit(),
            config={"resolved": OmegaConf.to_container(cfg, resolve=True), "user_error": isinstance(exc, DivinrError)},
            status="failed", error=_one_line(exc),
        )
    finally:
        finish_wandb(failed)
    write_result(result, run_dir)
    if not failed and not cfg.keep_workdir:
        shutil.rmtree(run_dir / WORK_NAME, ignore_errors=True)
    if cfg.print_summary:
        print(summary_table([result]))
    print(run_dir)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> RunResult | list[RunResult | None] | None:
    """Hydra entry point; a single (non-sweep) run that fails exits with a non-zero status.

    With ``anchor`` set, the job runs that reference codec's rate sweep (``experiments.anchors``).
    """
    if cfg.anchor is not None:
        from experiments.anchors import exit_status, run_anchor  # it imports this module

        results = run_anchor(cfg)
        status = exit_status(results)
        if HydraConfig.get().mode == RunMode.RUN and status:
            sys.exit(status)
        return results
    result = run(cfg)
    if HydraConfig.get().mode == RunMode.RUN and (result is None or result.status != "ok"):
        sys.exit(EXIT_USER_ERROR if result is None or result.config.get("user_error") else 1)
    return result


if __name__ == "__main__":
    register_configs()  # the schema Hydra composes against: stored here, not on import
    main()

"""The rate points of one job: skip, refuse, re-score or code each, and record what happened.

DiV-INR (``experiments.run``, one point a job) and the reference codecs (``experiments.anchors``,
a rate sweep a job) share this runner, so a point behaves the same whichever codec made it:

    for each Point, in order:
        finished, same settings  --> "skip" (or, with rescore=true and metrics missing, re-score later)
        finished, other settings --> refused: an error line, result None, nothing written
        not finished, or force   --> coded later
    then, if any point needs work: the job's shared setup runs once, on first need
        re-score --Point.rescore--> results.json rewritten only if it gained a metric
        code     --Point.code-----> results.json (atomic; ``status: failed`` with a one-line error
                                    on any exception, so the other points go on)

Each point's folder is printed when it is done. A setup error is reported once and fails every
point to code; the points being re-scored keep their stored results.

It also holds what both need to name a point and read its frames, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from divinr.anchors.base import VideoSource
from divinr.codec import coded_size
from divinr.data.datasets import dataset_key, get_dataset, sequence_source
from divinr.data.samples import SAMPLE_CLIPS, sample_clip_path
from divinr.errors import EXIT_USER_ERROR, DivinrError, PresetError, unknown_choice
from divinr.metrics.evaluate import evaluate_sequence
from divinr.metrics.perceptual import FID_STATS_NAME, save_fid_stats
from divinr.results import RESULTS_NAME, RunResult, git_commit, is_finished, read_result, write_result

log = logging.getLogger(__name__)

#: Settings that may change between a finished point and a re-run without changing its result.
ENVIRONMENT_KEYS = (
    "results_root", "force", "rescore", "keep_workdir", "verify_decode", "progress", "print_summary", "metrics", "logger", "label",
    "gop_jobs",
    "backbone.path", "backbone.gradient_checkpointing", "training.device", "data.root",
)

Shared = TypeVar("Shared")


# ---------------------------------------------------------------------------- naming and frames


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


def sequence_dir(cfg: DictConfig) -> Path:
    """``results_root/exp_name/<dataset|clip>/<sequence>``, absolute (from the launch folder): every
    codec's points of one sequence lie below it, so the RD report finds them together."""
    dataset, sequence = point_name(cfg)
    return Path(to_absolute_path(cfg.results_root)) / cfg.exp_name / dataset / sequence


def frames_source(cfg: DictConfig) -> VideoSource:
    """The file and reader arguments of the point's frames at coding resolution (clip file / sample
    clip, or dataset sequence): every codec scores against these frames, and a recorded anchor
    command re-reads them."""
    data = cfg.data
    if data.source == "clip":
        path = sample_clip_path(data.clip) if data.clip in SAMPLE_CLIPS else Path(to_absolute_path(data.clip))
        coded_size(data.width, data.height)  # refuses a non-positive size before any work
        return VideoSource(path, {"start": data.start, "max_frames": data.max_frames, "resize": (data.width, data.height)})
    if data.start:
        raise PresetError("data.start applies to clips only; dataset sequences are coded from their first frame")
    root = to_absolute_path(data.root) if data.root else None
    return VideoSource(*sequence_source(
        data.dataset, data.sequence, root, width=data.width, height=data.height, max_frames=data.max_frames
    ))


# ---------------------------------------------------------------------------- settings and scores


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring environment-only keys.

    A setting the stored config lacks is unchanged where the current one holds the schema's
    default: a point made before divinr gained that setting was made with its default behaviour.
    """
    old, new = _flatten(stored), _flatten(current)
    defaults = _schema_defaults()

    def relevant(key: str) -> bool:
        return not any(key == k or key.startswith(f"{k}.") for k in ENVIRONMENT_KEYS)

    def changed(key: str) -> bool:
        if key not in old and key in defaults:
            return new.get(key) != defaults[key]
        return old.get(key) != new.get(key)

    return sorted(k for k in set(old) | set(new) if relevant(k) and changed(k))


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    """The root schema's own defaults, flattened (interpolations left out: they have no value alone)."""
    from experiments.schema import DivinrConfig

    flat = _flatten(OmegaConf.to_container(OmegaConf.structured(DivinrConfig), resolve=False))
    return {k: v for k, v in flat.items() if not (isinstance(v, str) and "${" in v)}


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


# ---------------------------------------------------------------------------- failures


def report_failure(exc: BaseException, where: Path) -> None:
    """One line for a user error, a logged traceback for anything else."""
    if isinstance(exc, DivinrError):
        print(f"error: {exc}", file=sys.stderr)
    else:
        log.error("%s failed", where, exc_info=exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def failed_result(cfg: DictConfig, exc: BaseException, config: dict[str, Any] | None = None, **fields: Any) -> RunResult:
    """The record of a point that failed with ``exc``: its naming ``fields``, the resolved config plus
    ``config``, and whether it was the user's error (the exit status of a single run says so)."""
    return RunResult(
        **fields,
        git_commit=git_commit(),
        config={
            "resolved": OmegaConf.to_container(cfg, resolve=True), **(config or {}),
            "user_error": isinstance(exc, DivinrError),
        },
        status="failed",
        error=_one_line(exc),
    )


def exit_status(results: Sequence[RunResult | None] | None) -> int:
    """Exit status of a single (non-sweep) job: 0 all points ok, 2 a user error, else 1."""
    if results is None or any(r is None or (r.status != "ok" and r.config.get("user_error")) for r in results):
        return EXIT_USER_ERROR
    return 0 if all(r is not None and r.status == "ok" for r in results) else 1


# ---------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class Point(Generic[Shared]):
    """One rate point: its folder and what its codec does to code, re-score and fail it.

    Attributes:
        run_dir: the point's folder (holds ``results.json``).
        code: the job's shared setup -> the point's result (raises on failure).
        rescore: (shared setup, stored result, missing metrics) -> the result with them scored.
        failed: the exception -> the ``status="failed"`` result to record.
        written: runs once the coded point's result is on disk (cleanup that must not come earlier).
    """

    run_dir: Path
    code: Callable[[Shared], RunResult]
    rescore: Callable[[Shared, RunResult, list[str]], RunResult]
    failed: Callable[[BaseException], RunResult]
    written: Callable[[RunResult], None] | None = None


class _SetupFailed(Exception):
    """The shared setup failed (already reported): every point that needs it fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _OnFirstUse(Generic[Shared]):
    """The job's shared setup, run when the first point needs it and never again, even after an error."""

    def __init__(self, build: Callable[[], Shared]) -> None:
        self._build = build
        self._outcome: tuple[Shared] | Exception | None = None  # None until it has run

    def get(self, where: Path) -> Shared:
        """The setup's value; on the first call its error is reported against ``where``."""
        if self._outcome is None:
            try:
                self._outcome = (self._build(),)
            except Exception as exc:  # noqa: BLE001 - recorded on every point, like a failure inside one
                self._outcome = exc
                report_failure(exc, where)
        if isinstance(self._outcome, Exception):
            raise _SetupFailed(self._outcome)
        return self._outcome[0]


def run_points(
    cfg: DictConfig,
    points: Sequence[Point[Shared]],
    setup: Callable[[ExitStack], Shared],
    *,
    rename_hint: str,
    settings: Callable[[dict[str, Any]], dict[str, Any]] = lambda resolved: resolved,
) -> list[RunResult | None]:
    """Skip, refuse, re-score or code each point (see the module docstring); print each folder when done.

    Args:
        cfg: the composed root config (``force``, ``rescore``, ``metrics`` are read here).
        points: the job's rate points, in the order their lines are printed.
        setup: builds what the points to code or re-score share; its ``ExitStack`` closes after
            the last point (temporary files go there). Not run when no point needs work.
        rename_hint: how to keep a finished point with other settings, e.g. ``"use another exp_name"``.
        settings: the part of a resolved config a finished point depends on.

    Returns:
        One entry per point: its result (the stored one when skipped, ``status="failed"`` on an
        error), or None where a finished point holds other settings.
    """
    current = settings(OmegaConf.to_container(cfg, resolve=True))
    results: list[RunResult | None] = [None] * len(points)
    to_rescore: list[tuple[int, RunResult, list[str]]] = []
    to_code: list[int] = []
    for i, point in enumerate(points):
        if cfg.force or not is_finished(point.run_dir):
            to_code.append(i)
            continue
        stored = read_result(point.run_dir / RESULTS_NAME)
        changed = changed_settings(settings(stored.config.get("resolved", {})), current)
        if changed:
            print(
                f"error: {point.run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                f"{rename_hint}, or pass force=true to overwrite it",
                file=sys.stderr,
            )
        else:
            results[i] = stored
            missing = metrics_to_rescore(cfg, stored) if cfg.rescore else []
            if missing:
                to_rescore.append((i, stored, missing))
                continue
            print("skip")
        print(point.run_dir)
    if not (to_rescore or to_code):
        return results
    with ExitStack() as stack:
        shared = _OnFirstUse(lambda: setup(stack))
        for i, stored, missing in to_rescore:
            results[i] = _rescore(points[i], shared, stored, missing)
        for i in to_code:
            results[i] = _code(points[i], shared)
    return results


def _rescore(point: Point[Shared], shared: _OnFirstUse[Shared], stored: RunResult, missing: list[str]) -> RunResult:
    """The point's result with ``missing`` scored if that works; the stored one (still valid) if not."""
    try:
        rescored = point.rescore(shared.get(point.run_dir), stored, missing)
    except _SetupFailed:
        pass
    except Exception as exc:  # noqa: BLE001 - the stored result stays valid; the sweep goes on
        report_failure(exc, point.run_dir)
    else:
        stored = store_rescored(stored, rescored, point.run_dir, missing)
    print(point.run_dir)
    return stored


def _code(point: Point[Shared], shared: _OnFirstUse[Shared]) -> RunResult:
    """Code the point and write its result, a failed one on any error, so the sweep goes on."""
    point.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = point.code(shared.get(point.run_dir))
    except _SetupFailed as exc:
        result = point.failed(exc.error)
    except Exception as exc:  # noqa: BLE001 - a failed point must not stop the sweep
        report_failure(exc, point.run_dir)
        result = point.failed(exc)
    write_result(result, point.run_dir)
    if point.written is not None:
        point.written(result)
    print(point.run_dir)
    return result

"""Run a reference codec (anchor) over one sequence from a Hydra config, one folder per rate point.

    cfg.anchor --build_codec(name, **kwargs)--> ReferenceCodec, its sweep [{"qp": 51}, ...]
    cfg.data --experiments.run.frames_source--> Video (the frames DiV-INR codes)
        --write_raw_rgb--> input.rgb (once per job, deleted at the end; the recorded
                           commands start with the line that rebuilds it from the source)
        --codec.encode_decode(param)--> <codec>_<tag>.<stream>, decoded rgb24 --> metrics
        --> results.json per point (atomic, last)

One Hydra job is one (codec, sequence): the rate sweep of an anchor is a list in its
constructor arguments (``qps``; ``presets`` for HiNeRV) whose length differs between codecs,
which a Cartesian sweeper cannot express. Every rate point still gets its own folder,
``results_root/exp_name/<dataset|clip>/<sequence>/<codec>/<qp37 | preset>``, and behaves like a
DiV-INR point: a finished one is skipped, a failed one records ``status: failed`` and the sweep
goes on, a finished one whose settings differ is refused (``force=true`` overwrites). The rate
is the size of the raw elementary stream; metrics come from the decoded file, scored against
the same frames, loaded the same way, as DiV-INR's.

    python -m experiments.run +exp=anchors_uvg
    python -m experiments.run +exp=anchors_clip anchor=x265 anchor.kwargs.qps=[45,37]
"""

from __future__ import annotations

import inspect
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from divinr.anchors import CODECS, ReferenceCodec, build_codec, write_raw_rgb
from divinr.anchors.base import RawVideo, param_tag, read_raw_rgb_levels
from divinr.data.video import Video
from divinr.errors import EXIT_USER_ERROR, DivinrError, PresetError, unknown_choice
from divinr.metrics.evaluate import SequenceEvaluator
from divinr.results import RESULTS_NAME, RunResult, git_commit, is_finished, read_result, write_result
from experiments.callbacks import summary_table
from experiments.run import (
    _one_line,
    changed_settings,
    frames_source,
    metrics_to_rescore,
    point_name,
    report_failure,
    rescore_result,
    score_fields,
    store_rescored,
)

#: Constructor arguments that list a codec's rate points: changing them adds or drops points
#: but changes no finished one, so they are left out of the settings a re-run is checked against.
SWEEP_KWARGS = ("qps", "presets")


def anchor_codec(anchor: DictConfig) -> ReferenceCodec:
    """Build the reference codec an ``anchor`` group describes, checking names before anything runs.

    Args:
        anchor: ``cfg.anchor`` (:class:`experiments.schema.AnchorConf`).

    Returns:
        The codec (its tools are not checked here; ``codec.check()`` does that).

    Raises:
        PresetError: unknown codec, an argument the codec class does not take, a mandatory
            argument left unset (``???``, e.g. VTM's binaries) or an invalid value.
    """
    if anchor.name not in CODECS:
        raise unknown_choice("reference codec", anchor.name, tuple(CODECS))
    try:
        kwargs = OmegaConf.to_container(anchor.kwargs, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = f"anchor.kwargs.{exc.key}"
        raise PresetError(
            f"{key} is not set; the {anchor.name} anchor needs it: pass {key}=<value> "
            f"(see experiments/conf/anchor/{anchor.name}.yaml)"
        ) from None
    cls = CODECS[anchor.name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise PresetError(
            f"anchor.kwargs {unknown} are not arguments of {cls.__name__}; it takes {accepted}"
        )
    return build_codec(anchor.name, **kwargs)


def rate_point_name(param: dict[str, Any]) -> str:
    """The folder and ``rate_point`` of one sweep entry: ``{"qp": 37}`` -> ``"qp37"``, ``{"preset": "s"}`` -> ``"s"``.

    Args:
        param: one entry of ``codec.default_params()``.

    Returns:
        The name.
    """
    if set(param) == {"preset"}:
        return str(param["preset"])
    return param_tag(param)


def _settings(resolved: dict[str, Any]) -> dict[str, Any]:
    """What a finished anchor point depends on: the codec (minus its sweep list) and the frames."""
    anchor = dict(resolved.get("anchor") or {})
    anchor["kwargs"] = {k: v for k, v in (anchor.get("kwargs") or {}).items() if k not in SWEEP_KWARGS}
    return {"anchor": anchor, "data": resolved.get("data", {})}


def _label(cfg: DictConfig, codec: ReferenceCodec) -> str:
    if cfg.anchor.label:
        return cfg.anchor.label
    try:
        return codec.label()
    except (DivinrError, OSError):  # the label asks the tool for its version; a missing tool still needs a record
        return codec.name


def encode_anchor_point(
    cfg: DictConfig,
    codec: ReferenceCodec,
    param: dict[str, Any],
    video: Video,
    raw: RawVideo,
    evaluator: SequenceEvaluator,
    run_dir: Path,
    name: tuple[str, str],
) -> RunResult:
    """Encode and decode one rate point, score the decoded file; the result to be written.

    Args:
        cfg: the composed root config.
        codec: the anchor.
        param: its rate point, e.g. ``{"qp": 37}``.
        video: the reference frames (as DiV-INR loads them).
        raw: those frames as the shared rgb24 file the codec reads.
        evaluator: metrics, networks loaded once per job.
        run_dir: the point's folder (stream and, with ``keep_workdir``, the decoded file go there).
        name: (dataset, sequence).

    Returns:
        The point's :class:`RunResult`.
    """
    point = codec.encode_decode(raw, video.fps, param, run_dir, keep_decoded=False)
    decoded_path = Path(point.decoded_path)
    scores = evaluator(video.frames, read_raw_rgb_levels(decoded_path, video.num_frames, video.width, video.height))
    if not cfg.keep_workdir:
        decoded_path.unlink()  # rgb24 is ~1 GB per 600 frames; the stream reproduces it
    fields, extra = score_fields(cfg, scores, run_dir)
    return RunResult(
        codec=codec.name,
        label=_label(cfg, codec),
        dataset=name[0],
        sequence=name[1],
        rate_point=rate_point_name(param),
        bpp=point.bpp,
        bits={"total": point.bits},
        frames=video.num_frames,
        width=video.width,
        height=video.height,
        fps=float(video.fps),
        **fields,
        encode_seconds=point.encode_seconds,
        decode_seconds=point.decode_seconds,
        bitstream=Path(point.bitstream_path).name,
        decoded=decoded_path.name if cfg.keep_workdir else None,
        git_commit=git_commit(),
        config={
            "resolved": OmegaConf.to_container(cfg, resolve=True), "param": dict(param), "commands": point.commands,
            **extra,
        },
    )


def _failed(
    cfg: DictConfig, codec: ReferenceCodec, param: dict[str, Any], name: tuple[str, str], exc: BaseException
) -> RunResult:
    return RunResult(
        codec=codec.name, label=_label(cfg, codec), dataset=name[0], sequence=name[1],
        rate_point=rate_point_name(param), git_commit=git_commit(),
        config={
            "resolved": OmegaConf.to_container(cfg, resolve=True), "param": dict(param),
            "user_error": isinstance(exc, DivinrError),
        },
        status="failed", error=_one_line(exc),
    )


def run_anchor(cfg: DictConfig) -> list[RunResult | None] | None:
    """Run (or skip) every rate point of ``cfg.anchor`` on the sequence of ``cfg.data``.

    Prints each point's folder after it is done (preceded by ``skip`` when it was finished).

    Args:
        cfg: the composed root config with ``anchor`` set.

    Returns:
        One entry per rate point of the codec's sweep: its result (the stored one when skipped,
        ``status="failed"`` on an error) or None where a finished point holds other settings;
        None when the codec or the sequence cannot be named.
    """
    try:
        codec = anchor_codec(cfg.anchor)
        params = codec.default_params()
        name = point_name(cfg)
    except DivinrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    folder = Path(to_absolute_path(cfg.results_root)) / cfg.exp_name / name[0] / name[1] / codec.name
    current = _settings(OmegaConf.to_container(cfg, resolve=True))
    results: list[RunResult | None] = [None] * len(params)
    todo: list[int] = []
    rescore: list[int] = []
    for i, param in enumerate(params):
        run_dir = folder / rate_point_name(param)
        if not is_finished(run_dir) or cfg.force:
            todo.append(i)
            continue
        stored = read_result(run_dir / RESULTS_NAME)
        changed = changed_settings({"resolved": _settings(stored.config.get("resolved", {}))}, current)
        if changed:
            print(
                f"error: {run_dir} holds a finished run with other settings ({', '.join(changed)}); "
                "use another exp_name, or pass force=true to overwrite it",
                file=sys.stderr,
            )
        elif cfg.rescore and metrics_to_rescore(cfg, stored):
            results[i] = stored
            rescore.append(i)
            continue
        else:
            print("skip")
            results[i] = stored
        print(run_dir)
    if todo or rescore:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".input-", dir=folder) as tmp:
            _run_points(cfg, codec, [(params[i], i) for i in todo], [(params[i], i) for i in rescore],
                        folder, Path(tmp), name, results)
    if cfg.print_summary:
        print(summary_table([r for r in results if r is not None]))
    return results


def _rescore_anchor_point(codec: ReferenceCodec, raw: RawVideo, stored: RunResult, run_dir: Path,
                          reference: torch.Tensor, metrics: list[str], tmp: Path) -> RunResult:
    """Decode a finished point's stream again and compute the metrics it lacks."""
    decoded = tmp / "decoded.rgb"
    codec.decode(raw, run_dir / str(stored.bitstream), decoded)
    frames = read_raw_rgb_levels(decoded, raw.num_frames, raw.width, raw.height)
    decoded.unlink()
    return rescore_result(stored, run_dir, reference, frames, metrics)


def _run_points(
    cfg: DictConfig,
    codec: ReferenceCodec,
    todo: list[tuple[dict[str, Any], int]],
    rescore: list[tuple[dict[str, Any], int]],
    folder: Path,
    tmp: Path,
    name: tuple[str, str],
    results: list[RunResult | None],
) -> None:
    """Load the frames once, then code each point in ``todo`` and re-score each in ``rescore``.

    A problem before the first point fails every point to code (re-scored points keep their
    stored results).
    """
    try:
        codec.check()
        source = frames_source(cfg)
        video = source.read()
        evaluator = SequenceEvaluator(list(cfg.metrics), skip_missing=True)
        raw = write_raw_rgb(video.frames, tmp / "input.rgb", source=source)
        setup_error: Exception | None = None
    except Exception as exc:  # noqa: BLE001 - recorded on every point, like a failure inside one
        setup_error = exc
        report_failure(exc, folder)
    for param, i in rescore:
        run_dir = folder / rate_point_name(param)
        stored = results[i]
        if setup_error is None and stored is not None:
            missing = metrics_to_rescore(cfg, stored)
            try:
                rescored = _rescore_anchor_point(codec, raw, stored, run_dir, video.frames, missing, tmp)
            except Exception as exc:  # noqa: BLE001 - the stored result stays as it was
                report_failure(exc, run_dir)
            else:
                results[i] = store_rescored(stored, rescored, run_dir, missing)
        print(run_dir)
    for param, i in todo:
        run_dir = folder / rate_point_name(param)
        run_dir.mkdir(parents=True, exist_ok=True)
        if setup_error is not None:
            result = _failed(cfg, codec, param, name, setup_error)
        else:
            try:
                result = encode_anchor_point(cfg, codec, param, video, raw, evaluator, run_dir, name)
            except Exception as exc:  # noqa: BLE001 - a failed point must not stop the sweep
                report_failure(exc, run_dir)
                result = _failed(cfg, codec, param, name, exc)
        write_result(result, run_dir)
        results[i] = result
        print(run_dir)


def exit_status(results: list[RunResult | None] | None) -> int:
    """Exit status of a single (non-sweep) anchor run: 0 all points ok, 2 a user error, else 1."""
    if results is None or any(r is None or (r.status != "ok" and r.config.get("user_error")) for r in results):
        return EXIT_USER_ERROR
    return 0 if all(r.status == "ok" for r in results) else 1

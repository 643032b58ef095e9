"""Run a reference codec (anchor) over one sequence from a Hydra config, one folder per rate point.

    cfg.anchor --build_codec(name, **kwargs)--> ReferenceCodec, its sweep [{"qp": 51}, ...]
    cfg.data --experiments.points.frames_source--> Video (the frames DiV-INR codes)
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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from divinr.anchors import CODECS, ReferenceCodec, build_codec, write_raw_rgb
from divinr.anchors.base import RawVideo, param_tag, read_raw_rgb_levels
from divinr.data.video import Video
from divinr.errors import DivinrError, PresetError, unknown_choice
from divinr.metrics.evaluate import SequenceEvaluator
from divinr.results import RunResult, git_commit
from experiments.callbacks import summary_table
from experiments.points import (
    Point, failed_result, frames_source, point_name, rescore_result, run_points, score_fields, sequence_dir,
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


@dataclass(frozen=True)
class AnchorInputs:
    """What every point of the job reads, set up once: the reference frames, their rgb24 file
    (the codec's input), the metric networks, a scratch folder."""

    video: Video
    raw: RawVideo
    evaluator: SequenceEvaluator
    tmp: Path


def encode_anchor_point(
    cfg: DictConfig,
    codec: ReferenceCodec,
    param: dict[str, Any],
    inputs: AnchorInputs,
    run_dir: Path,
    name: tuple[str, str],
) -> RunResult:
    """Encode and decode one rate point, score the decoded file; the result to be written.

    Args:
        cfg: the composed root config.
        codec: the anchor.
        param: its rate point, e.g. ``{"qp": 37}``.
        inputs: the job's reference frames (as DiV-INR loads them), their rgb24 file and metrics.
        run_dir: the point's folder (stream and, with ``keep_workdir``, the decoded file go there).
        name: (dataset, sequence).

    Returns:
        The point's :class:`RunResult`.
    """
    video = inputs.video
    point = codec.encode_decode(inputs.raw, video.fps, param, run_dir, keep_decoded=False)
    decoded_path = Path(point.decoded_path)
    scores = inputs.evaluator(video.frames, read_raw_rgb_levels(decoded_path, video.num_frames, video.width, video.height))
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


def _inputs(cfg: DictConfig, codec: ReferenceCodec, folder: Path, stack: ExitStack) -> AnchorInputs:
    """Check the codec's tools, load the frames once and write them once as the shared input file."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".input-", dir=folder)))
    codec.check()
    source = frames_source(cfg)
    video = source.read()
    evaluator = SequenceEvaluator(list(cfg.metrics), skip_missing=True)
    return AnchorInputs(video, write_raw_rgb(video.frames, tmp / "input.rgb", source=source), evaluator, tmp)


def _rescore_anchor_point(
    codec: ReferenceCodec, inputs: AnchorInputs, stored: RunResult, run_dir: Path, metrics: list[str]
) -> RunResult:
    """Decode a finished point's stream again and compute the metrics it lacks."""
    raw, decoded = inputs.raw, inputs.tmp / "decoded.rgb"
    codec.decode(raw, run_dir / str(stored.bitstream), decoded)
    frames = read_raw_rgb_levels(decoded, raw.num_frames, raw.width, raw.height)
    decoded.unlink()
    return rescore_result(stored, run_dir, inputs.video.frames, frames, metrics)


def _point(
    cfg: DictConfig, codec: ReferenceCodec, param: dict[str, Any], folder: Path, name: tuple[str, str]
) -> Point[AnchorInputs]:
    """How the runner codes, re-scores and fails one rate point of the sweep."""
    run_dir = folder / rate_point_name(param)
    return Point(
        run_dir,
        code=lambda inputs: encode_anchor_point(cfg, codec, param, inputs, run_dir, name),
        rescore=lambda inputs, stored, metrics: _rescore_anchor_point(codec, inputs, stored, run_dir, metrics),
        failed=lambda exc: failed_result(
            cfg, exc, config={"param": dict(param)}, codec=codec.name, label=_label(cfg, codec), dataset=name[0],
            sequence=name[1], rate_point=rate_point_name(param),
        ),
    )


def run_anchor(cfg: DictConfig) -> list[RunResult | None] | None:
    """Run (or skip) every rate point of ``cfg.anchor`` on the sequence of ``cfg.data``.

    Prints each point's folder after it is done (preceded by ``skip`` when it was finished):
    skipped and refused points first, then re-scored ones, then coded ones. A problem before the
    first point to code (a missing tool, unreadable frames) fails every point to code.

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
        folder = sequence_dir(cfg) / codec.name
    except DivinrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    results = run_points(
        cfg,
        [_point(cfg, codec, param, folder, name) for param in params],
        setup=lambda stack: _inputs(cfg, codec, folder, stack),
        rename_hint="use another exp_name",
        settings=_settings,
    )
    if cfg.print_summary:
        print(summary_table([r for r in results if r is not None]))
    return results

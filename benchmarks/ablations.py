"""The paper's ablations (Sec. 4.3) on the ``mini`` backbone: one command, one results table.

Each curve is a Hydra experiment of ``experiments/conf/exp`` run unchanged except for what makes
it a small CPU run (the ``mini`` backbone, a short real clip, a shortened schedule), point by
point through ``experiments.run``, so finished points are skipped and an interrupted run
resumes. The INR curves are specified in bpp (``inr.target_bpp``: the rate model sizes each
INR), so every curve spans the same rates as the reference; the keyframe curve sweeps the JPEG
quality instead. Then, per clip, BD-PSNR and BD-MS-SSIM of each curve against the default
DiV-INR (positive: better than the default), and a Markdown table, a CSV of every point and
RD figures::

    OUT/runs/<exp>/clip/<clip>/<rate point>/results.json    every point (experiments.run)
    OUT/ablations.md, ablations.csv, ablations.json          the table and every finished point
    OUT/rd_<clip>.png                                        PSNR / MS-SSIM against bpp

Not a timed test: the default run codes about 50 points, an hour or more on 2 cores.

    python -m benchmarks.ablations --out benchmarks/results/ablations-mini
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmarks.quality import int_list
from divinr.atomic import atomic_write_text
from divinr.errors import EXIT_USER_ERROR, DivinrError
from divinr.metrics.bd import bd_metric
from divinr.metrics.names import REPORTED_METRICS
from divinr.reporting import plot_rd_curves, sequence_curves
from divinr.results import RESULTS_NAME, RunResult, read_result
from experiments.run import run
from experiments.schema import register_configs

CONF_DIR = Path(__file__).resolve().parent.parent / "experiments" / "conf"
REPO_RESULTS = Path(__file__).resolve().parent / "results" / "ablations-mini"
"""Where the committed run lives (its points' results and streams; decoded videos are not kept)."""
REFERENCE = "divinr"
BD_METRICS = ("psnr", "ms_ssim")


@dataclass(frozen=True)
class Ablation:
    """One RD curve: an experiment, the overrides that pick its variant, and its rate axis.

    ``axis`` is the override swept along the curve; ``values`` its values, the same on every
    clip or per clip (default, for ``inr.target_bpp``: the clip's targets).
    """

    codec: str
    title: str
    exp: str | None
    overrides: tuple[str, ...] = ()
    axis: str = "inr.target_bpp"
    values: tuple[float, ...] | Mapping[str, tuple[float, ...]] | None = None

    def values_on(self, clip: str) -> tuple[float, ...]:
        """The curve's values on ``clip``: its own, or the clip's INR targets."""
        if self.values is None:
            return CLIPS[clip][2]
        return self.values[clip] if isinstance(self.values, Mapping) else self.values


ABLATIONS = (
    Ablation(REFERENCE, "DiV-INR (default: learned M, NOLA b = 500, rank 64)", None, ("exp_name=ablation_reference",)),
    Ablation("divinr-mask1", "mask M fixed to 1", "ablation_mask"),
    Ablation("divinr-b0", "no adapters (b = 0)", "ablation_peft_size", ("nola.num_bases=0",)),
    Ablation("divinr-b100", "NOLA b = 100", "ablation_peft_size", ("nola.num_bases=100",)),
    # b = 1000's coefficients alone take about 0.13 bpp: its curve starts higher
    Ablation("divinr-b1000", "NOLA b = 1000", "ablation_peft_size", ("nola.num_bases=1000",), values={
        "bikes": (0.18, 0.25), "carphone": (0.21, 0.3)}),
    Ablation("divinr-r16", "NOLA rank 16 (b = 500)", "ablation_peft_rank", ("nola.rank=16",)),
    # ranks with the trained-parameter count nearest NOLA's 13,000 on mini (the experiment's notes)
    Ablation("divinr-lora", "peft LoRA rank 2 (12,672 parameters)", "ablation_adapter", ("adapter=lora", "lora.rank=2")),
    Ablation("divinr-vera", "peft VeRA rank 759 (13,003 parameters)", "ablation_adapter", ("adapter=vera", "vera.rank=759")),
    Ablation("divinr-jpeg", "JPEG keyframes instead of the INR", "ablation_keyframes", (), "keyframe_quality",
             {"bikes": (40.0, 75.0, 92.0, 98.0), "carphone": (75.0, 98.0)}),
)  # fmt: skip

# clip -> (width, height, target bpp of the INR curves). One 25-frame GoP; MS-SSIM needs 161+ px
# a side, so carphone (176x144, held out of mini's pretraining) is upscaled slightly. The lowest
# target is just above what NOLA b = 500, the header and the smallest INR take together (about
# 0.105 / 0.124 bpp; b = 1000: 0.171 / 0.2, so it has targets of its own); the JPEG qualities
# reach into the same range (a 25-frame GoP has one keyframe). carphone, the second clip, has two
# points a curve (the ends of bikes' range): its BDs are over straight lines.
CLIPS = {"bikes": (256, 176, (0.11, 0.16, 0.25)), "carphone": (216, 176, (0.13, 0.3))}


def small_run(out: Path, clip: str, frames: int, epochs: Sequence[int]) -> list[str]:
    """What turns a paper experiment into a small CPU run on ``mini``."""
    width, height, _ = CLIPS[clip]
    dense, prune, quant = epochs
    return [
        "backbone=mini", "data=clip", f"data.clip={clip}", f"data.width={width}", f"data.height={height}",
        f"data.max_frames={frames}", f"training.dense_epochs={dense}", f"training.prune_epochs={prune}",
        f"training.quant_epochs={quant}", "training.device=cpu", "logger=none", "progress=false",
        f"results_root={out / 'runs'}", f"metrics=[{','.join(REPORTED_METRICS)}]",
    ]  # fmt: skip


def point_config(ablation: Ablation, common: list[str], value: float) -> DictConfig:
    """The composed config of one point: the curve's experiment and variant, made small, at ``value``."""
    overrides = [*([f"+exp={ablation.exp}"] if ablation.exp else []), *ablation.overrides, *common,
                 f"{ablation.axis}={value:g}", f"codec={ablation.codec}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def run_curve(ablation: Ablation, clip: str, common: list[str]) -> None:
    """Code (or skip) every point of one curve on one clip; the results are read back from disk."""
    for value in ablation.values_on(clip):
        run(point_config(ablation, common, value))


def finished(out: Path, curves: Sequence[Ablation] = ABLATIONS) -> list[RunResult]:
    """Every successful point under ``out/runs`` of one of ``curves``, from earlier invocations too
    (``--only`` narrows what is coded, not what is reported)."""
    codecs = {a.codec for a in curves}
    results = (read_result(path) for path in sorted((out / "runs").glob(f"*/clip/*/*/{RESULTS_NAME}")))
    return [r for r in results if r.status == "ok" and r.codec in codecs]


def bd_rows(results: list[RunResult], reference: str = REFERENCE) -> dict[str, dict[str, dict[str, float | None]]]:
    """clip -> codec -> metric -> BD metric against the ``reference`` curve (None: no overlap or no values)."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric in BD_METRICS:
        curves = sequence_curves(results, metric)
        for (_, codec, clip), curve in curves.items():
            anchor = curves.get(("clip", reference, clip), [])
            if codec == reference:
                continue
            gap = math.nan
            if len(curve) >= 2 and len(anchor) >= 2:
                with warnings.catch_warnings():  # partial overlap is reported as is, not refused
                    warnings.simplefilter("ignore")
                    gap = bd_metric(*zip(*anchor), *zip(*curve), "pchip", min_overlap=0.0)
            table.setdefault(clip, {}).setdefault(codec, {})[metric] = None if math.isnan(gap) else round(gap, 3)
    return table


def skipped_metrics(results: list[RunResult]) -> dict[str, str]:
    """Metrics no point could compute, with the recorded reason (missing weights)."""
    reasons: dict[str, str] = {}
    for result in results:
        reasons.update(result.skipped_metrics)
    computed = {m for r in results for m, v in r.metrics.items() if v is not None}
    return {m: reason for m, reason in reasons.items() if m not in computed}


def markdown(report: dict[str, Any]) -> str:
    titles = {a.codec: a.title for a in ABLATIONS}
    skipped = report["skipped_metrics"]
    head = ["ablation", *(f"BD-{m.upper().replace('_', '-')} {c}" for c in report["clips"] for m in BD_METRICS)]
    head += [f"BD-{m.upper()}" for m in REPORTED_METRICS if m in skipped]
    lines = [
        "# Ablations on the `mini` backbone", "",
        f"`{report['command']}`", "",
        f"Each clip: {report['frames']} frames; schedule {'/'.join(map(str, report['epochs']))} epochs. "
        "BD against the default DiV-INR curve, positive = better than the default "
        "(pchip on log bpp, over the overlap of the two curves; — = no overlap).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]  # fmt: skip
    for codec in (a.codec for a in ABLATIONS if a.codec != REFERENCE):
        cells = [titles[codec]]
        for clip in report["clips"]:
            for metric in BD_METRICS:
                value = report["bd"].get(clip, {}).get(codec, {}).get(metric)
                cells.append("—" if value is None else f"{value:+.3f}")
        cells += ["skipped" for m in REPORTED_METRICS if m in skipped]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Skipped metrics: " + ("; ".join(f"{m}: {r}" for m, r in skipped.items()) or "none"), ""]
    lines += ["## Points", "", "| clip | ablation | rate point | bpp | INR / adapter / keyframe+header bits | PSNR | MS-SSIM |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in report["points"]:
        bits = p["bits"]
        adapter = bits.get("adapter", bits.get("nola", 0))  # results made before format v3 say "nola"
        other = bits["total"] - bits.get("inr", 0) - adapter
        lines.append(
            f"| {p['clip']} | {titles.get(p['codec'], p['codec'])} | {p['rate_point']} | {p['bpp']:.4f} | "
            f"{bits.get('inr', 0):,} / {adapter:,} / {other:,} | {number_cell(p['psnr'], 2)} | "
            f"{number_cell(p['ms_ssim'], 4)} |"
        )
    return "\n".join(lines) + "\n"


def number_cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def point_row(result: RunResult) -> dict[str, Any]:
    return {
        "clip": result.sequence, "codec": result.codec, "rate_point": result.rate_point, "bpp": result.bpp,
        "bits": result.bits, **{m: result.metrics.get(m) for m in REPORTED_METRICS},
        "encode_seconds": result.encode_seconds, "decode_seconds": result.decode_seconds,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablations", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_RESULTS)
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument(
        "--only", nargs="+", choices=[a.codec for a in ABLATIONS],
        help="code these curves (and the reference) only; the report still shows every finished point",
    )
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--epochs", type=int_list, default=[60, 24, 12])
    args = parser.parse_args(argv)
    register_configs()
    out = args.out.resolve()
    chosen = [a for a in ABLATIONS if args.only is None or a.codec in args.only or a.codec == REFERENCE]
    try:
        for clip in args.clips:
            common = small_run(out, clip, args.frames, args.epochs)
            for ablation in chosen:
                run_curve(ablation, clip, common)
    except DivinrError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    results = finished(out)
    clips = sorted({r.sequence for r in results})
    report = {
        "command": "python -m benchmarks.ablations " + " ".join(sys.argv[1:] if argv is None else argv),
        "clips": clips, "frames": args.frames, "epochs": args.epochs,
        "bd": bd_rows(results), "skipped_metrics": skipped_metrics(results), "points": [point_row(r) for r in results],
    }  # fmt: skip
    atomic_write_text(out / "ablations.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "ablations.md", markdown(report))
    table = io.StringIO()
    writer = csv.DictWriter(table, ["clip", "codec", "rate_point", "bpp", "bits", *REPORTED_METRICS,
                                    "encode_seconds", "decode_seconds"])  # fmt: skip
    writer.writeheader()
    writer.writerows({**p, "bits": json.dumps(p["bits"])} for p in report["points"])
    atomic_write_text(out / "ablations.csv", table.getvalue())
    for clip in clips:
        figures = plot_rd_curves([r for r in results if r.sequence == clip], out / f"rd_{clip}", BD_METRICS, ("png",),
                                 log_x=True, title=clip)  # fmt: skip
        print(*figures, sep="\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Granularity on the ``mini`` backbone: one INR + adapters per sequence, an INR per GoP with the
adapters shared by the sequence, or an INR and adapters per GoP (each GoP its own training).

Each curve is the root config with ``granularity`` / ``nola_scope`` set, made a small CPU run
(``mini``, two 25-frame GoPs of a real clip, a short schedule) and run point by point through
``experiments.run`` at the same target rates (``inr.target_bpp``), so finished points are
skipped and an interrupted run resumes. The per-GoP curve trains its GoPs through the local
submitit launcher with one worker; one more point is coded with two workers, for the encode
wall time. Reported: BD-PSNR / BD-MS-SSIM of each curve against the sequence one, every point's
bits split into INR / adapter / header, and the encode times::

    OUT/runs/<exp>/clip/<clip>/<rate point>/results.json    every point (experiments.run)
    OUT/granularity.md, granularity.json                     the tables
    OUT/rd_<clip>/rd_clip.png                                 PSNR / MS-SSIM against bpp

Not a timed test: 16 points of two GoPs, about 45 minutes on 2 cores. The encode times it
reports are only meaningful when nothing else runs: re-time by deleting the timed points'
folders (``bpp0.13`` of bikes in ``granularity_sequence``, ``granularity_gop`` and
``granularity_gop_2workers``) and running it again on an idle machine.

    python -m benchmarks.granularity --out benchmarks/results/granularity-mini
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.ablations import BD_METRICS, Ablation, bd_rows, finished, number_cell, point_row, run_curve, small_run
from benchmarks.quality import int_list
from divinr.atomic import atomic_write_text
from divinr.errors import EXIT_USER_ERROR, DivinrError
from divinr.reporting import plot_rd_curves
from divinr.results import RunResult
from experiments.schema import register_configs

REPO_RESULTS = Path(__file__).resolve().parent / "results" / "granularity-mini"
REFERENCE = "divinr-sequence"
TARGETS = {"bikes": (0.13, 0.18, 0.25), "carphone": (0.15, 0.3)}
"""Per clip, rates every curve reaches: above what two GoPs' adapters, the header and two of the
smallest INRs take (0.104 bpp on bikes, 0.124 on carphone, at 50 frames)."""
CURVES = (
    Ablation(REFERENCE, "sequence: one INR + NOLA", None, ("exp_name=granularity_sequence", "granularity=sequence"),
             values=TARGETS),
    Ablation("divinr-gop-shared", "gop, NOLA shared by the sequence", None,
             ("exp_name=granularity_gop_shared", "granularity=gop", "nola_scope=sequence"), values=TARGETS),
    Ablation("divinr-gop", "gop: INR + NOLA per GoP (local launcher, 1 worker)", None,
             ("exp_name=granularity_gop", "granularity=gop", "gop_jobs.kind=local", "gop_jobs.workers=1"),
             values=TARGETS),
)  # fmt: skip
TIMING = Ablation(
    "divinr-gop-2workers", "gop: INR + NOLA per GoP (local launcher, 2 workers)", None,
    ("exp_name=granularity_gop_2workers", "granularity=gop", "gop_jobs.kind=local", "gop_jobs.workers=2"),
    values={"bikes": (TARGETS["bikes"][0],)},
)  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    titles = {a.codec: a.title for a in (*CURVES, TIMING)}
    head = ["curve", *(f"BD-{m.upper().replace('_', '-')} {c}" for c in report["clips"] for m in BD_METRICS)]
    lines = [
        "# Granularity on the `mini` backbone", "", f"`{report['command']}`", "",
        f"Each clip: {report['frames']} frames (two 25-frame GoPs); schedule "
        f"{'/'.join(map(str, report['epochs']))} epochs per training. BD against the sequence curve, positive = "
        "better (pchip on log bpp over the overlap; — = no overlap).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]  # fmt: skip
    for curve in CURVES[1:]:
        cells = [titles[curve.codec]]
        for clip in report["clips"]:
            cells += [_signed(report["bd"].get(clip, {}).get(curve.codec, {}).get(m)) for m in BD_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "", "## Points", "",
        "| clip | curve | target | bpp (predicted) | INR / adapter / header bits | PSNR | MS-SSIM |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for p in report["points"]:
        bits = p["bits"]
        lines.append(
            f"| {p['clip']} | {titles[p['codec']]} | {p['rate_point']} | {p['bpp']:.4f} ({p['predicted_bpp']:.4f}) | "
            f"{bits['inr']:,} / {bits['adapter']:,} / {bits['header']:,} | {number_cell(p['psnr'], 2)} | "
            f"{number_cell(p['ms_ssim'], 4)} |"
        )
    lines += ["", "## Encode wall time (training and coding, not the decode; the three timed points were coded "
              "one after another with nothing else running)", "",
              "| clip | point | curve | encode s | same stream as 1 worker |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {row['clip']} | {row['rate_point']} | {titles[row['codec']]} | {row['encode_seconds']:.1f} | "
              f"{'—' if row['same_stream'] is None else row['same_stream']} |" for row in report["timing"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}"


def timing(results: list[RunResult], out: Path) -> list[dict[str, Any]]:
    """The timed point coded by one sequence model, and per GoP with 1 and with 2 local workers:
    wall time of the encode, and whether the two per-GoP streams are the same bytes (a local job
    gets cores / workers threads, and CPU training rounds differently with other thread counts)."""
    rows = []
    for codec, workers in ((REFERENCE, None), ("divinr-gop", 1), (TIMING.codec, 2)):
        for clip, targets in TIMING.values.items():  # type: ignore[union-attr]
            point = f"bpp{targets[0]:g}"
            match = [r for r in results if r.codec == codec and r.sequence == clip and r.rate_point == point]
            if match:
                rows.append({"codec": codec, "workers": workers, "clip": clip, "rate_point": point,
                             "encode_seconds": match[0].encode_seconds, "stream": _stream(out, match[0])})  # fmt: skip
    single = next((row["stream"] for row in rows if row["workers"] == 1), None)
    for row in rows:
        stream = row.pop("stream")
        row["same_stream"] = None if single is None or row["workers"] in (None, 1) else stream == single
    return rows


def _stream(out: Path, result: RunResult) -> bytes:
    exp = next(a for a in (*CURVES, TIMING) if a.codec == result.codec).overrides[0].split("=")[1]
    return (out / "runs" / exp / "clip" / result.sequence / result.rate_point / result.bitstream).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.granularity", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_RESULTS)
    parser.add_argument("--clips", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--epochs", type=int_list, default=[60, 24, 12])
    args = parser.parse_args(argv)
    register_configs()
    out = args.out.resolve()
    try:
        for clip in args.clips:
            common = small_run(out, clip, args.frames, args.epochs)
            for curve in (*CURVES, TIMING):
                if clip in curve.values:  # type: ignore[operator]
                    run_curve(curve, clip, common)
    except DivinrError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    results = finished(out, (*CURVES, TIMING))
    clips = sorted({r.sequence for r in results})
    report = {
        "command": "python -m benchmarks.granularity " + " ".join(sys.argv[1:] if argv is None else argv),
        "clips": clips, "frames": args.frames, "epochs": args.epochs,
        "bd": bd_rows([r for r in results if r.codec != TIMING.codec], REFERENCE),
        "points": [{**point_row(r), "predicted_bpp": r.config.get("predicted_bpp")} for r in results],
        "timing": timing(results, out),
    }  # fmt: skip
    atomic_write_text(out / "granularity.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "granularity.md", markdown(report))
    for clip in clips:
        curves = [r for r in results if r.sequence == clip and r.codec != TIMING.codec]
        print(*plot_rd_curves(curves, out / f"rd_{clip}", BD_METRICS, ("png",), log_x=True, title=clip), sep="\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

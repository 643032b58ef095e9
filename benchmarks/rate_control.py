"""Calibrate the rate model on real streams, then measure how close ``--target-bpp`` lands.

    calibrate   fit divinr/rate_model.json on DiV-INR streams (default: the quality benchmark's)
    validate    encode real clips at target rates with the shipped model (other streams than the
                calibration's, a shorter clip and schedule) and tabulate achieved vs target bpp

Every validation point is stored as it finishes (``OUT/points/<clip>-<target>.json`` and its
stream), so an interrupted run resumes; points made with other settings or another rate model
are recomputed. Not a timed test: the default validation encodes six points, about ten minutes
on 2 cores.

    python -m benchmarks.rate_control calibrate
    python -m benchmarks.rate_control validate --out benchmarks/results/rate-control
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.quality import CLIPS, cached, int_list
from divinr.atomic import atomic_write_text
from divinr.codec import DiVINRCodec, load_clip
from divinr.compression.bitstream import bits_breakdown, unpack
from divinr.data.samples import sample_clip_path
from divinr.errors import EXIT_USER_ERROR, DivinrError
from divinr.rate_control import RATE_MODEL_NAME, adapter_shapes, fit_rate_model, shipped_rate_model
from divinr.rate import bits_per_pixel
from divinr.training.encoder import EncoderConfig
from divinr.training.stages import paper_phases

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_STREAMS = sorted((REPO / "benchmarks/results/quality-mini/points").glob("*/divinr-*.dvr"))
# (clip, target bpp): three rates per clip at 25 frames, from below the smallest calibration
# stream's INR to between its presets.
TARGETS = (("bikes", 0.1), ("bikes", 0.2), ("bikes", 0.4), ("carphone", 0.2), ("carphone", 0.4), ("carphone", 0.8))
TOLERANCE = 0.15


def calibrate(args: argparse.Namespace) -> int:
    streams = {str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p): p.read_bytes() for p in args.streams}
    model = fit_rate_model(streams, prune_fraction=EncoderConfig().pruned_fraction())
    atomic_write_text(args.out, model.to_json())
    print(f"wrote {args.out}: INR {model.inr.per_value:.4f} bit/value + {model.inr.per_tensor:.1f} bit/tensor, "
          f"adapters {model.adapter.per_value:.4f} bit/value, from {len(streams)} streams")
    for name, data in streams.items():
        header = unpack(data).header
        predicted = model.predict(header, adapter_shapes(header)).total
        print(f"  {name}: {8 * len(data):,} bits, predicted {predicted:,.0f} ({predicted / (8 * len(data)) - 1:+.2%})")
    return 0


def validate(args: argparse.Namespace) -> int:
    model = shipped_rate_model()
    folder = args.out / "points"
    rows = []
    for clip, target in args.targets:
        width, height = CLIPS[clip]
        stream_path = folder / f"{clip}-{target:g}.dvr"

        def encode(clip: str = clip, target: float = target, stream_path: Path = stream_path) -> dict[str, Any]:
            video = load_clip(sample_clip_path(clip), width=width, height=height, max_frames=args.frames)
            config = EncoderConfig(backbone=args.backbone, target_bpp=target, phases=paper_phases(*args.epochs), device="cpu")
            encoded = DiVINRCodec(config, progress=False).encode(video, bitstream_path=stream_path)
            header = encoded.header
            return {
                "clip": clip, "geometry": f"{width}x{height}x{video.num_frames}", "target_bpp": target,
                "predicted_bpp": encoded.predicted_bpp, "bpp": encoded.bpp, "bits": encoded.bits,
                "inr": {"channels": header.inr.channels, "stage_channels": list(header.inr.stage_channels)},
            }

        settings = {"backbone": args.backbone, "epochs": list(args.epochs), "frames": args.frames, "model": model.to_json()}
        point = cached(folder / f"{clip}-{target:g}.json", encode, settings)
        data = stream_path.read_bytes()  # the rate is the file's, measured here again
        if bits_breakdown(data)["total"] != point["bits"]["total"]:
            raise DivinrError(f"{stream_path} is not the stream its point records; delete both and rerun")
        achieved = bits_per_pixel(len(data), _frames(point), *_size(point))
        rows.append({**point, "bpp": achieved, "error": achieved / target - 1})
    report = {
        "command": "python -m benchmarks.rate_control " + " ".join(sys.argv[1:]),
        "rate_model": json.loads(model.to_json()),
        "tolerance": TOLERANCE,
        "points": rows,
        "within_tolerance": sum(abs(r["error"]) <= TOLERANCE for r in rows),
    }
    atomic_write_text(args.out / "rate_control.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / "README.md", _markdown(report))
    print(_markdown(report))
    return 0


def _frames(point: dict[str, Any]) -> int:
    return int(point["geometry"].split("x")[2])


def _size(point: dict[str, Any]) -> tuple[int, int]:
    width, height, _ = point["geometry"].split("x")
    return int(width), int(height)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Rate control: achieved vs target bpp", "",
        f"`{report['command']}`", "",
        "| clip | target bpp | predicted bpp | achieved bpp | error | INR widths |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["points"]:
        widths = f"{r['inr']['channels']} / {r['inr']['stage_channels']}"
        lines.append(
            f"| {r['clip']} {r['geometry']} | {r['target_bpp']:g} | {r['predicted_bpp']:.4f} | {r['bpp']:.4f} | "
            f"{r['error']:+.1%} | {widths} |"
        )
    lines += ["", f"{report['within_tolerance']} of {len(report['points'])} within ±{report['tolerance']:.0%}.", ""]
    return "\n".join(lines)


def _target(text: str) -> tuple[str, float]:
    clip, _, rate = text.partition(":")
    if clip not in CLIPS or not rate:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CLIP:BPP with CLIP one of {', '.join(CLIPS)}")
    return clip, float(rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rate_control", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("calibrate", help="fit the rate model on real streams")
    fit.add_argument("--streams", nargs="+", type=Path, default=CALIBRATION_STREAMS)
    fit.add_argument("--out", type=Path, default=REPO / "divinr" / RATE_MODEL_NAME)
    check = commands.add_parser("validate", help="encode at target rates and tabulate the error")
    check.add_argument("--out", type=Path, default=REPO / "benchmarks/results/rate-control")
    check.add_argument("--targets", nargs="+", type=_target, default=list(TARGETS), metavar="CLIP:BPP")
    check.add_argument("--backbone", default="mini")
    check.add_argument("--frames", type=int, default=25)
    check.add_argument("--epochs", type=int_list, default=[60, 24, 12])
    args = parser.parse_args(argv)
    try:
        return calibrate(args) if args.command == "calibrate" else validate(args)
    except DivinrError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""Quality of DiV-INR on the ``mini`` backbone against its own parts and the anchors, on CPU.

For each clip (the demo clip and the clip held out of ``mini``'s pretraining):

    DiV-INR        INR sizes (default xxs, xs, s): train, code, decode the real stream
    INR only       the same stream's y decoded straight by the VAE (no diffusion, no NOLA)
    VAE ceiling    encode -> decode with the backbone's VAE (no rate: an upper bound for both above)
    DiT ceiling    the exact latents as y with M = 1, sampled by the unadapted DiT (a perfect INR)
    HiNeRV recipe  the pixel INR coded with our bitstream (divinr.anchors.hinerv)
    x265, VVenC    the reference codecs (divinr.anchors)

PSNR (RGB) and MS-SSIM of every point, BD-PSNR / BD-MS-SSIM of each curve against DiV-INR where
the curves overlap, a JSON report and an RD figure (PNG). Every point is stored as it finishes
(``OUT/points/<clip>/<name>.json``), so an interrupted run resumes. Not a timed test: a run
takes about an hour on 2 cores with the defaults.

    python -m benchmarks.quality --out benchmarks/results/quality-mini
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from divinr.anchors import build_codec
from divinr.anchors.base import param_tag
from divinr.atomic import atomic_path, atomic_write_text
from divinr.codec import DiVINRCodec, load_clip
from divinr.compression.bitstream import unpack
from divinr.training.encoder import EncoderConfig
from divinr.data.gop import split_gops
from divinr.data.samples import sample_clip_path
from divinr.data.video import Video
from divinr.errors import EXIT_USER_ERROR, DivinrError
from divinr.rate import bits_per_pixel
from divinr.inference.decoder import render_conditioning, sample_gop
from divinr.inference.sampler import SamplerConfig
from divinr.metrics.bd import bd_metric
from divinr.metrics.evaluate import evaluate_sequence
from divinr.models.backbone import MASK_CHANNELS, Backbone, backbone_fingerprint, load_backbone
from divinr.training.stages import paper_phases

# (clip, width, height): bikes as the demo codes it; carphone, held out of pretraining, natively.
CLIPS = {"bikes": (320, 176), "carphone": (176, 144)}
METRICS = ("psnr", "ms_ssim")


# Rateless reference lines of the RD figure: (legend, line style).
CEILINGS = {"vae_ceiling": ("VAE ceiling", ":"), "dit_ceiling": ("DiT ceiling (exact y, M = 1)", "--")}
MS_SSIM_MIN_SIDE = 161  # five scales of an 11-tap window


def _score(reference: torch.Tensor, decoded: torch.Tensor) -> dict[str, float | None]:
    """PSNR and MS-SSIM; MS-SSIM is None on frames too small for its five scales (carphone)."""
    metrics = [m for m in METRICS if m != "ms_ssim" or min(reference.shape[2:]) >= MS_SSIM_MIN_SIDE]
    scores = evaluate_sequence(reference, decoded, metrics=metrics, device="cpu", skip_missing=True)
    return {m: scores.get(m) if m in metrics else None for m in METRICS}


def cached(path: Path, compute: Callable[[], dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The point stored at ``path`` if it was made with ``settings``, else ``compute()`` written there
    atomically: changed weights, epochs or anchor options never reuse a stale point."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            return stored
        print(f"{path.parent.name}/{path.stem}: made with other settings, recomputing")
    started = time.perf_counter()
    point = compute()
    point["seconds"] = round(time.perf_counter() - started, 1)
    point["settings"] = settings
    atomic_write_text(path, json.dumps(point, indent=1) + "\n")
    print(f"{path.parent.name}/{path.stem}: " + ", ".join(f"{k}={v}" for k, v in point.items() if k in ("bpp", *METRICS)))
    return point


def codec_settings(codec: object) -> dict[str, str]:
    """An anchor's options (range, SEI, preset, ...) as the cache key of its points."""
    return {k: str(v) for k, v in sorted(vars(codec).items()) if not k.startswith("_")}


def divinr_points(
    video: Video, preset: str, args: argparse.Namespace, folder: Path, backbone: Backbone, weights: dict[str, Any]
) -> list[dict]:
    """One DiV-INR point and its "INR only" twin, from the same bitstream (``backbone``, the plain
    one, decodes the twin; the encode loads its own, which NOLA adapts)."""
    frames = video.frames
    stream_path = folder / f"divinr-{preset}.dvr"

    def encode() -> dict[str, Any]:
        config = EncoderConfig(
            backbone=args.backbone, inr=preset, phases=paper_phases(*args.epochs), device="cpu", seed=args.seed
        )
        result = DiVINRCodec(config, progress=False).encode(video, bitstream_path=stream_path, reconstruct=True)
        return {
            "codec": "divinr", "param": preset, "bpp": result.bpp, "bits": result.bits,
            **_score(frames, result.reconstruction.frames),
            "final_losses": result.history[-1] if result.history else {},
        }

    def inr_only() -> dict[str, Any]:
        data = stream_path.read_bytes()
        decoded = render_conditioning(backbone, unpack(data))
        bpp = bits_per_pixel(len(data), video.num_frames, video.width, video.height)
        return {"codec": "inr_only", "param": preset, "bpp": bpp, **_score(frames, decoded.frames)}

    settings = {**weights, "epochs": list(args.epochs), "seed": args.seed}
    return [cached(folder / f"divinr-{preset}.json", encode, settings),
            cached(folder / f"inr_only-{preset}.json", inr_only, settings)]


def vae_ceiling(frames: torch.Tensor, backbone: Backbone, folder: Path, weights: dict[str, Any]) -> dict[str, Any]:
    def compute() -> dict[str, Any]:
        with torch.no_grad():
            decoded = torch.cat([backbone.decode(backbone.encode(g.frames))[: g.num_real] for g in split_gops(frames)])
        return {"codec": "vae_ceiling", "param": None, "bpp": None, **_score(frames, decoded)}

    return cached(folder / "vae_ceiling.json", compute, weights)


def dit_ceiling(frames: torch.Tensor, backbone: Backbone, folder: Path, weights: dict[str, Any]) -> dict[str, Any]:
    """The diffusion stage's own ceiling: each GoP sampled (unadapted DiT, the codec's sampler and
    noise seeds) from its exact latents as ``y`` with ``M = 1``, what a perfect INR would give."""
    def compute() -> dict[str, Any]:
        config = SamplerConfig()
        decoded = []
        with torch.no_grad():
            for index, gop in enumerate(split_gops(frames)):
                y = backbone.encode(gop.frames)[None]
                m = torch.ones((1, MASK_CHANNELS, *y.shape[2:]))
                z0 = sample_gop(backbone, y, m, config, index)
                decoded.append(backbone.decode(z0[0])[: gop.num_real])
        return {"codec": "dit_ceiling", "param": None, "bpp": None, **_score(frames, torch.cat(decoded))}

    return cached(folder / "dit_ceiling.json", compute, weights)


def anchor_points(name: str, kwargs: dict, params: list[dict], frames: torch.Tensor, fps: float, folder: Path) -> list[dict]:
    codec = build_codec(name, **kwargs)
    points = []
    for param in params:
        def compute(param: dict = param) -> dict[str, Any]:
            point = codec.encode_decode(frames, fps, param, folder / "work" / name)
            Path(point.decoded_path).unlink(missing_ok=True)
            return {"codec": name, "param": param, "bpp": point.bpp, "label": point.label,
                    "commands": point.commands, **_score(frames, point.decoded)}

        try:
            points.append(cached(folder / f"{name}-{param_tag(param)}.json", compute, codec_settings(codec)))
        except DivinrError as err:
            warnings.warn(f"{name} {param} skipped: {err}")
    return points


def bd_table(points: list[dict]) -> dict[str, dict[str, float | None]]:
    """BD-metric (curve minus DiV-INR) per curve and metric; None where the curves do not overlap."""
    curves: dict[str, list[dict]] = {}
    for p in points:
        if p["bpp"] is not None:
            curves.setdefault(p["codec"], []).append(p)
    anchor = sorted(curves.get("divinr", []), key=lambda p: p["bpp"])
    table = {}
    for codec, curve in curves.items():
        if codec == "divinr" or len(anchor) < 2 or len(curve) < 2:
            continue
        curve = sorted(curve, key=lambda p: p["bpp"])
        row = {}
        for metric in METRICS:
            reference, values = [p[metric] for p in anchor], [p[metric] for p in curve]
            if None in reference or None in values:
                row[metric] = None
                continue
            with warnings.catch_warnings():  # partial overlap is reported as is, not refused
                warnings.simplefilter("ignore")
                gap = bd_metric([p["bpp"] for p in anchor], reference, [p["bpp"] for p in curve], values, "pchip",
                                min_overlap=0.0)
            row[metric] = None if math.isnan(gap) else round(gap, 3)
        table[codec] = row
    return table


def plot(results: dict[str, Any], path: Path) -> None:
    """One row per clip, PSNR and MS-SSIM against bpp (log), the VAE ceiling as a dotted line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    clips = list(results)
    fig = Figure(figsize=(11, 4 * len(clips)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(clips), 2, squeeze=False)
    for row, clip in zip(axes, clips):
        points = results[clip]["points"]
        for ax, metric in zip(row, METRICS):
            for codec in dict.fromkeys(p["codec"] for p in points):
                curve = sorted((p for p in points if p["codec"] == codec and p[metric] is not None),
                               key=lambda p: p["bpp"] or 0)
                if not curve:
                    continue
                if codec in CEILINGS:
                    ax.axhline(curve[0][metric], ls=CEILINGS[codec][1], color="grey", label=CEILINGS[codec][0])
                    continue
                ax.plot([p["bpp"] for p in curve], [p[metric] for p in curve], "o-", label=codec)
            ax.set_xscale("log")
            ax.set_xlabel("bpp")
            ax.set_ylabel(metric)
            ax.set_title(f"{clip} {results[clip]['geometry']}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    results: dict[str, Any] = {}
    backbone = load_backbone(args.backbone)  # plain: the ceilings and the INR-only decodes
    weights = {"backbone": args.backbone, "fingerprint": backbone_fingerprint(backbone).hex()}
    for clip in args.clips:
        width, height = CLIPS[clip]
        video = load_clip(sample_clip_path(clip), width=width, height=height, max_frames=args.frames)
        folder = out / "points" / clip
        folder.mkdir(parents=True, exist_ok=True)
        points = [vae_ceiling(video.frames, backbone, folder, weights),
                  dit_ceiling(video.frames, backbone, folder, weights)]
        for preset in args.inr:
            points += divinr_points(video, preset, args, folder, backbone, weights)
        if not args.skip_anchors:
            points += anchor_points("hinerv", {"epochs": tuple(args.hinerv_epochs), "device": "cpu"},
                                    [{"preset": p} for p in args.hinerv], video.frames, video.fps, folder)
            points += anchor_points("x265", {}, [{"qp": q} for q in args.x265_qps], video.frames, video.fps, folder)
            points += anchor_points("vvenc", {}, [{"qp": q} for q in args.vvenc_qps], video.frames, video.fps, folder)
        results[clip] = {
            "geometry": f"{width}x{height}x{video.num_frames}",
            "held_out_of_pretraining": clip == "carphone",
            "points": points,
            "bd_vs_divinr": bd_table(points),
        }
    report = {"command": "python -m benchmarks.quality " + " ".join(sys.argv[1:]), "backbone": args.backbone,
              "divinr_epochs": args.epochs, "hinerv_epochs": args.hinerv_epochs, "results": results}
    atomic_write_text(out / "quality.json", json.dumps(report, indent=1) + "\n")
    plot(results, out / "rd_quality.png")
    return report


def int_list(text: str) -> list[int]:
    """An argparse type for comma-separated integers, e.g. epochs ``150,60,30``."""
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality-mini"))
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--backbone", default="mini")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--inr", nargs="+", default=["xxs", "xs", "s"])
    parser.add_argument("--epochs", type=int_list, default=[150, 60, 30], help="DiV-INR dense,prune,quant epochs")
    parser.add_argument("--hinerv", nargs="+", default=["4xs", "3xs", "xxs"])
    parser.add_argument("--hinerv-epochs", type=int_list, default=[60, 20, 10])
    parser.add_argument("--x265-qps", type=int_list, default=[51, 47, 43, 39, 35])
    parser.add_argument("--vvenc-qps", type=int_list, default=[57, 52, 47, 42, 37])
    parser.add_argument("--skip-anchors", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except DivinrError as err:
        print(f"divinr: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    for clip, result in report["results"].items():
        print(clip, json.dumps(result["bd_vs_divinr"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

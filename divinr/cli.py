"""Command line: ``divinr encode | decode | info | weights`` (also ``python -m divinr``).

Problems a user can cause end with one line ``divinr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from divinr.atomic import check_writable
from divinr.data.video import WRITE_SUFFIXES
from divinr.errors import EXIT_USER_ERROR, DivinrError


def _epochs(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected DENSE,PRUNE,QUANT epoch counts like 300,120,60, got {text!r}")
    return values  # type: ignore[return-value]


def _resolution(text: str) -> tuple[int, int]:
    from divinr.data.video import parse_resolution

    try:
        return parse_resolution(text)
    except DivinrError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divinr", description="DiV-INR extreme low-bitrate video codec")
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="train INR + NOLA on a video and write the bitstream")
    enc.add_argument("input", help="video file: .yuv (give --input-size), .y4m, or any container PyAV reads")
    enc.add_argument("-o", "--output", required=True, help="bitstream to write (.dvr)")
    enc.add_argument(
        "--backbone", default="mini", help="backbone preset (mini, wan2.1-fun-1.3b-inp, wan2.1-t2v-1.3b; tiny for tests)"
    )
    enc.add_argument("--backbone-path", help="local diffusers-format weights of the backbone")
    enc.add_argument("--inr-size", default="xxs", help="INR size preset (xxs, xs, s, m, l, xl)")
    enc.add_argument("--epochs", type=_epochs, default=(300, 120, 60), help="DENSE,PRUNE,QUANT epochs (default 300,120,60)")
    enc.add_argument("--resolution", type=_resolution, default=(1024, 576), help="coding resolution WxH (default 1024x576)")
    enc.add_argument("--frames", type=int, help="code at most N frames")
    enc.add_argument("--start", type=int, default=0, help="first frame to code")
    enc.add_argument("--seed", type=int, default=0, help="training and noise seed")
    enc.add_argument("--steps", type=int, default=20, help="UniPC sampling steps at the decoder")
    enc.add_argument("--gop", type=int, default=25, help="GoP length (1+4k frames)")
    enc.add_argument("--nola-bases", type=int, default=500, help="NOLA bases per factor (0 disables adapters)")
    enc.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    enc.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute DiT activations in the backward pass (default: on for the 1.3B presets)",
    )
    enc.add_argument("--input-size", type=_resolution, help="WxH of a raw .yuv input")
    enc.add_argument("--bit-depth", type=int, default=8, help="bit depth of a raw .yuv input (8 or 10)")
    enc.add_argument("--fps", type=float, help="frame rate of a raw .yuv input")
    enc.add_argument("--workdir", help="checkpoints and latent cache (lets an interrupted encode resume)")
    enc.add_argument("--recon", help="also write the encoder's reconstruction (.y4m/.yuv/.mp4/.mkv)")

    dec = sub.add_parser("decode", help="decode a bitstream to a video file")
    dec.add_argument("input", help="bitstream (.dvr)")
    dec.add_argument("-o", "--output", required=True, help="video to write: .y4m, .yuv, .mp4 or .mkv")
    dec.add_argument("--backbone-path", help="local diffusers-format weights of the backbone named in the stream")
    dec.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")

    info = sub.add_parser("info", help="show a bitstream's header, bits by part and bpp")
    info.add_argument("input", help="bitstream (.dvr)")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    weights = sub.add_parser("weights", help="list or download the metric weights cache")
    weights.add_argument("args", nargs=argparse.REMAINDER, help="list | download [names] [--timeout S]")
    return parser


def check_output(path: str, suffixes: tuple[str, ...], what: str, inputs: tuple[str, ...] = ()) -> None:
    """Refuse an output that cannot be written, or that would replace an input, before any work."""
    if Path(path).suffix.lower() not in suffixes:
        raise DivinrError(f"{what} {path}: unsupported extension; use one of {', '.join(suffixes)}")
    target = Path(path).resolve()
    for source in inputs:
        if target == Path(source).resolve():
            raise DivinrError(f"{what} {path} is also an input of this command and would be overwritten; choose another file")
    check_writable(path)


def _read_stream(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DivinrError(f"cannot read bitstream {path}: {exc.strerror or exc}") from None


def cmd_encode(args: argparse.Namespace) -> int:
    from divinr.codec import EncoderConfig, compress, load_clip
    from divinr.data.video import write_video
    from divinr.inference.sampler import SamplerConfig
    from divinr.models.nola import NOLAConfig
    from divinr.training.stages import paper_phases

    width, height = args.resolution
    check_output(args.output, (".dvr",), "bitstream", inputs=(args.input,))
    if args.recon:
        check_output(args.recon, WRITE_SUFFIXES, "reconstruction", inputs=(args.input, args.output))
    read_kwargs: dict[str, Any] = {"bit_depth": args.bit_depth}
    if args.fps:
        read_kwargs["fps"] = args.fps
    video = load_clip(
        args.input, width=width, height=height, max_frames=args.frames, start=args.start,
        input_size=args.input_size, **read_kwargs,
    )
    config = EncoderConfig(
        backbone=args.backbone,
        backbone_path=args.backbone_path,
        inr=args.inr_size,
        nola=NOLAConfig(num_bases=args.nola_bases, seed=args.seed),
        phases=paper_phases(*args.epochs),
        sampler=SamplerConfig(steps=args.steps, noise_seed=args.seed),
        gop_size=args.gop,
        seed=args.seed,
        device=args.device,
        gradient_checkpointing=(
            args.backbone not in ("tiny", "mini") if args.gradient_checkpointing is None else args.gradient_checkpointing
        ),
    )
    result = compress(video, config, workdir=args.workdir, bitstream_path=args.output)
    if args.recon:
        write_video(args.recon, result.reconstruction.frames, video.fps)
    print(
        f"wrote {args.output}: {len(result.bitstream)} bytes, {result.bpp:.5f} bpp "
        f"(inr {result.bits['inr']} / nola {result.bits['nola']} / header {result.bits['header']} bits), "
        f"{video.num_frames} frames {video.width}x{video.height}, encode {result.encode_seconds:.1f} s"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from divinr.codec import decompress
    from divinr.data.video import write_video

    check_output(args.output, WRITE_SUFFIXES, "video", inputs=(args.input,))
    data = _read_stream(args.input)
    start = time.perf_counter()
    decoded = decompress(data, backbone_path=args.backbone_path, device=args.device)
    write_video(args.output, decoded.frames, decoded.fps)
    t, _, h, w = decoded.frames.shape
    print(f"wrote {args.output}: {t} frames {w}x{h} in {time.perf_counter() - start:.1f} s")
    return 0


def stream_info(data: bytes) -> dict[str, Any]:
    """Header fields, bits by part and bpp of a bitstream (what ``divinr info --json`` prints)."""
    from divinr.compression.bitstream import FORMAT_VERSION, bits_breakdown, unpack
    from divinr.data.gop import pixel_count

    header = unpack(data).header
    bits = bits_breakdown(data)
    return {
        "format_version": FORMAT_VERSION,
        "kind": header.kind.name.lower(),
        "bpp": bits["total"] / pixel_count(header.frames, header.width, header.height),
        "bytes": len(data),
        "bits": bits,
        "frames": header.frames,
        "width": header.width,
        "height": header.height,
        "fps": float(header.fps),
        "gop_size": header.gop_size,
        "backbone": header.backbone,
        "backbone_fingerprint": header.backbone_fingerprint.hex(),
        "inr": header.inr.to_dict(),
        "mask_mode": header.mask_mode.name.lower(),
        "quant_bits": header.quant_bits,
        "nola": {
            "layers": header.nola_layers,
            "rank": header.nola.rank,
            "num_bases": header.nola.num_bases,
            "basis_variance": header.nola.basis_variance,
            "scaling": header.nola.scaling,
            "seed": header.nola.seed,
        },
        "sampler": {
            "steps": header.sampler.steps,
            "flow_shift": header.sampler.flow_shift,
            "noise_seed": header.sampler.noise_seed,
            "solver_order": header.sampler.solver_order,
        },
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = stream_info(_read_stream(args.input))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    bits = info["bits"]
    print(f"{args.input}: divinr bitstream v{info['format_version']} ({info['kind']})")
    print(f"  video     {info['frames']} frames {info['width']}x{info['height']} @ {info['fps']:g} fps, GoP {info['gop_size']}")
    print(f"  backbone  {info['backbone'] or '-'} {info['backbone_fingerprint'][:16]}")
    print(f"  inr       {info['inr']}")
    print(f"  nola      {info['nola']}")
    print(f"  sampler   {info['sampler']}")
    for part in ("inr", "nola", "header"):
        print(f"  {part:9s} {bits[part]:>10d} bits  {100 * bits[part] / bits['total']:5.1f} %")
    print(f"  total     {bits['total']:>10d} bits  {info['bpp']:.6f} bpp")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from divinr.metrics.weights import main as weights_main

    return weights_main(args.args or ["list"])


COMMANDS = {"encode": cmd_encode, "decode": cmd_decode, "info": cmd_info, "weights": cmd_weights}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DivinrError as err:
        print(f"divinr: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("divinr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

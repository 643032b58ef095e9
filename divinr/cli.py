"""Command line: ``divinr encode | decode | info | weights | data`` (also ``python -m divinr``).

Problems a user can cause end with one line ``divinr: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from divinr.atomic import check_writable
from divinr.errors import EXIT_USER_ERROR, DivinrError


def _epochs(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or values[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected DENSE,PRUNE,QUANT epoch counts like 300,120,60 with DENSE >= 1 (an untrained stream "
            f"codes nothing), got {text!r}"
        )
    return values  # type: ignore[return-value]


def _resolution(text: str) -> tuple[int, int]:
    from divinr.data.video import parse_resolution

    try:
        return parse_resolution(text)
    except DivinrError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _frame_range(text: str) -> tuple[int, int]:
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        first, last = int(start), int(stop)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame range A:B (frames A..B-1, e.g. 250:300), got {text!r}") from None
    if not 0 <= first < last:
        raise argparse.ArgumentTypeError(f"expected 0 <= A < B in the frame range A:B, got {text!r}")
    return first, last


def _positive(what: str) -> Callable[[str], float]:
    """An argparse type for a positive finite number; ``what`` says what it counts, e.g. "GiB like 8"."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number of {what}, got {text!r}")
        return value

    return parse


class LibraryDefaultsParser(argparse.ArgumentParser):
    """A subcommand parser whose defaults are read from the library when that subcommand runs.

    The library's dataclasses declare the defaults; reading them imports torch, which
    ``divinr info`` must not pay for, so each subcommand fetches its own only when chosen.
    """

    def __init__(self, *args: Any, library_defaults: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.library_defaults = library_defaults

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        if self.library_defaults is not None:
            self.set_defaults(**self.library_defaults())  # before parsing, so --help shows them too
        return super().parse_known_args(args, namespace)


#: The encoder's backbone when none is named: the shipped, pretrained one; the library's own
#: default (``EncoderConfig.backbone``) is the random ``tiny`` of the tests.
CLI_BACKBONE = "mini"


def encode_defaults() -> dict[str, Any]:
    """``divinr encode`` flag defaults (by ``dest``), each read from the library setting it feeds."""
    from divinr.codec import load_clip
    from divinr.data.datasets import CODING_SIZE
    from divinr.data.video import read_video
    from divinr.inference.sampler import SamplerConfig
    from divinr.models.nola import NOLAConfig
    from divinr.training.encoder import EncoderConfig
    from divinr.training.gop_jobs import GoPLauncher
    from divinr.training.stages import paper_phases

    phases = inspect.signature(paper_phases).parameters
    return {
        "backbone_path": EncoderConfig.backbone_path,
        "inr_size": EncoderConfig.inr,
        "target_bpp": EncoderConfig.target_bpp,
        # as the flags are typed (argparse parses string defaults with the flag's type), so --help
        # shows 300,120,60 and 1024x576
        "epochs": ",".join(str(phases[n].default) for n in ("dense_epochs", "prune_epochs", "quant_epochs")),
        "resolution": "{}x{}".format(*CODING_SIZE),
        "frames": inspect.signature(load_clip).parameters["max_frames"].default,
        "start": inspect.signature(load_clip).parameters["start"].default,
        "seed": EncoderConfig.seed,
        "steps": SamplerConfig.steps,
        "gop": EncoderConfig.gop_size,
        "nola_bases": NOLAConfig.num_bases,
        "adapter": EncoderConfig.adapter,
        "conditioning": EncoderConfig.conditioning,
        "keyframe_quality": EncoderConfig.keyframe_quality,
        "granularity": EncoderConfig.granularity,
        "nola_scope": EncoderConfig.nola_scope,
        "gop_workers": GoPLauncher.workers,
        "device": EncoderConfig.device,
        "bit_depth": inspect.signature(read_video).parameters["bit_depth"].default,
    }


def decode_defaults() -> dict[str, Any]:
    """``divinr decode`` flag defaults, from the decoder's memory budget."""
    from divinr.inference.decoder import DEFAULT_MEMORY_BUDGET

    return {"max_memory": DEFAULT_MEMORY_BUDGET / 2**30}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divinr", description="DiV-INR extreme low-bitrate video codec")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LibraryDefaultsParser)

    enc = sub.add_parser(
        "encode", help="train INR + adapters on a video and write the bitstream", library_defaults=encode_defaults
    )
    enc.add_argument("input", help="video file: .yuv (give --input-size), .y4m, or any container PyAV reads")
    enc.add_argument("-o", "--output", required=True, help="bitstream to write (.dvr)")
    enc.add_argument(
        "--backbone", default=CLI_BACKBONE,
        help="backbone preset (mini, wan2.1-fun-1.3b-inp, wan2.1-t2v-1.3b; tiny for tests; default %(default)s)",
    )
    enc.add_argument(
        "--backbone-path",
        help="the backbone's weights: a local diffusers folder, an original Wan / VideoX-Fun folder, or a Hub id",
    )
    size = enc.add_mutually_exclusive_group()
    size.add_argument("--inr-size", help="INR size preset (xxs, xs, s, m, l, xl; default %(default)s)")
    size.add_argument(
        "--target-bpp", type=_positive("bits per pixel like 0.05"),
        help="size the INR for this rate before training (a preset or a width between presets) instead of --inr-size",
    )
    enc.add_argument("--epochs", type=_epochs, help="DENSE,PRUNE,QUANT epochs (default %(default)s)")
    enc.add_argument("--resolution", type=_resolution, help="coding resolution WxH (default %(default)s)")
    enc.add_argument("--frames", type=int, help="code at most N frames")
    enc.add_argument("--start", type=int, help="first frame to code (default %(default)s)")
    enc.add_argument("--seed", type=int, help="training and noise seed (default %(default)s)")
    enc.add_argument("--steps", type=int, help="UniPC sampling steps at the decoder (default %(default)s)")
    enc.add_argument("--gop", type=int, help="GoP length (1+4k frames; default %(default)s)")
    enc.add_argument("--nola-bases", type=int, help="NOLA bases per factor (0 disables adapters; default %(default)s)")
    enc.add_argument("--adapter", help="adapter family: nola (the paper's), or peft's lora or vera (default %(default)s)")
    enc.add_argument("--adapter-rank", type=int, help="rank of the chosen adapter (default: the family's own)")
    enc.add_argument(
        "--conditioning",
        help="inr (the paper's codec) or jpeg (ablation: each GoP's first frame JPEG-coded instead of an INR; "
        "default %(default)s)",
    )
    enc.add_argument(
        "--keyframe-quality", type=int, metavar="Q", help="JPEG quality 1..100 of --conditioning jpeg (default %(default)s)"
    )
    enc.add_argument(
        "--granularity",
        help="sequence (one INR + adapters for the whole video) or gop (each GoP its own INR and, unless "
        "--nola-scope sequence, its own adapters: GoPs train independently; default %(default)s)",
    )
    enc.add_argument("--nola-scope", help="adapters per gop or per sequence (default: the granularity)")
    enc.add_argument(
        "--gop-workers", type=int,
        help="with per-GoP adapters, train the GoPs in this many local processes (default %(default)s: in turn, here)",
    )
    enc.add_argument("--device", help="cpu, cuda, cuda:N or auto (default %(default)s)")
    enc.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute DiT activations in the backward pass (default: on for the 1.3B presets)",
    )
    enc.add_argument("--input-size", type=_resolution, help="WxH of a raw .yuv input")
    enc.add_argument("--bit-depth", type=int, help="bit depth of a raw .yuv input (8 or 10; default %(default)s)")
    enc.add_argument("--fps", type=float, help="frame rate of a raw .yuv input")
    enc.add_argument("--workdir", help="checkpoints and latent cache (lets an interrupted encode resume)")
    enc.add_argument("--recon", help="also write the encoder's reconstruction (.y4m/.yuv/.mp4/.mkv)")

    dec = sub.add_parser("decode", help="decode a bitstream to a video file", library_defaults=decode_defaults)
    dec.add_argument("input", help="bitstream (.dvr)")
    dec.add_argument("-o", "--output", required=True, help="video to write: .y4m, .yuv, .mp4 or .mkv")
    dec.add_argument(
        "--backbone-path",
        help="weights of the backbone named in the stream (diffusers folder, original Wan folder or Hub id)",
    )
    dec.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    dec.add_argument(
        "--frames", type=_frame_range, metavar="A:B",
        help="decode only frames A..B-1 (samples only the GoPs that cover them; default: all)",
    )
    dec.add_argument(
        "--max-memory",
        type=_positive("GiB like 8 or 0.5"),
        metavar="GIB",
        help="refuse streams whose decoded video needs more memory than this (default %(default)g GiB)",
    )

    info = sub.add_parser("info", help="show a bitstream's header, bits by part and bpp")
    info.add_argument("input", help="bitstream (.dvr)")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    weights = sub.add_parser("weights", help="list or download the metric weights cache")
    weights.add_argument("args", nargs=argparse.REMAINDER, help="list | download [names] [--timeout S]")

    data = sub.add_parser("data", help="download a benchmark dataset (UVG) or show how to obtain it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("download", help="fetch, extract and check a dataset's raw files")
    fetch.add_argument("dataset", help="uvg (downloaded), mcl_jcv or jvetb (instructions only)")
    fetch.add_argument("--root", help="data root holding one folder per dataset (default $DIVINR_DATA_ROOT)")
    fetch.add_argument("--base-url", help="mirror of the archives' folder (default: the dataset's site)")
    fetch.add_argument("--keep-archives", action="store_true", help="keep the 7z files after extraction")
    return parser


def check_output(path: str, suffixes: tuple[str, ...], what: str, inputs: tuple[str, ...] = ()) -> None:
    """Refuse an output that cannot be written, or that would replace an input, before any work.

    Missing parent folders are created (as writing would), so the caller removes them again
    if the command fails (:func:`_missing_folders`).
    """
    if Path(path).suffix.lower() not in suffixes:
        raise DivinrError(f"{what} {path}: unsupported extension; use one of {', '.join(suffixes)}")
    if Path(path).is_dir():
        raise DivinrError(f"{what} {path} is a folder; give a file name inside it, e.g. {Path(path) / ('out' + suffixes[0])}")
    blocker = _not_a_folder(Path(path).absolute().parents)
    if blocker is not None:
        raise DivinrError(f"{what} {path}: {blocker} is a file, not a folder; choose another location")
    target = Path(path).resolve()
    for source in inputs:
        if target == Path(source).resolve():
            raise DivinrError(f"{what} {path} is also an input of this command and would be overwritten; choose another file")
    check_writable(path)


def _not_a_folder(folders: Iterable[Path]) -> Path | None:
    """The first of ``folders`` that exists but is not a folder (so nothing can be created in it)."""
    return next((folder for folder in folders if folder.exists() and not folder.is_dir()), None)


def _missing_folders(paths: list[Path]) -> list[Path]:
    """The folders that do not exist yet among ``paths`` and their parents, deepest first."""
    missing = {folder for path in paths for folder in (path, *path.absolute().parents) if not folder.exists()}
    return sorted(missing, key=lambda folder: len(folder.absolute().parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are still empty; a failed command leaves no empty folders."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            pass


def _check_encode_flags(args: argparse.Namespace) -> None:
    """Check the encode flags' values up front, so an error names the flag rather than the API argument behind it."""
    from divinr.compression.bitstream import MAX_SAMPLER_STEPS, Conditioning, Granularity
    from divinr.compression.jpeg import MAX_QUALITY, MIN_QUALITY
    from divinr.models.adapters import ADAPTERS, MAX_LORA_RANK, MAX_VERA_RANK
    from divinr.models.nola import MAX_NUM_BASES, MAX_RANK

    if args.adapter not in ADAPTERS:
        raise DivinrError(f"--adapter {args.adapter}: expected one of {', '.join(ADAPTERS)}")
    max_rank = {"nola": MAX_RANK, "lora": MAX_LORA_RANK, "vera": MAX_VERA_RANK}[args.adapter]
    fps_ok = args.fps is None or (math.isfinite(args.fps) and args.fps > 0)
    kinds = [kind.name.lower() for kind in Conditioning]
    granularities = [g.name.lower() for g in Granularity]
    checks = (
        ("--frames", args.frames, args.frames is None or args.frames >= 1, "a number of frames >= 1"),
        ("--start", args.start, args.start >= 0, "a frame index >= 0"),
        ("--seed", args.seed, 0 <= args.seed < 2**32, "an integer in 0..4294967295"),
        ("--steps", args.steps, 1 <= args.steps <= MAX_SAMPLER_STEPS, f"a step count in 1..{MAX_SAMPLER_STEPS}"),
        ("--gop", args.gop, args.gop >= 1 and args.gop % 4 == 1, "1 + 4k frames, e.g. 17, 25 or 33"),
        ("--nola-bases", args.nola_bases, 0 <= args.nola_bases <= MAX_NUM_BASES, f"0..{MAX_NUM_BASES} (0 disables NOLA)"),
        ("--adapter-rank", args.adapter_rank, args.adapter_rank is None or 1 <= args.adapter_rank <= max_rank,
         f"a {args.adapter} rank in 1..{max_rank}"),
        ("--conditioning", args.conditioning, args.conditioning in kinds, " or ".join(kinds)),
        (
            "--keyframe-quality", args.keyframe_quality, MIN_QUALITY <= args.keyframe_quality <= MAX_QUALITY,
            f"a JPEG quality in {MIN_QUALITY}..{MAX_QUALITY}",
        ),
        ("--granularity", args.granularity, args.granularity in granularities, " or ".join(granularities)),
        ("--nola-scope", args.nola_scope, args.nola_scope in (None, *granularities), " or ".join(granularities)),
        ("--gop-workers", args.gop_workers, args.gop_workers >= 1, "a number of processes >= 1"),
        ("--bit-depth", args.bit_depth, args.bit_depth in (8, 10), "8 or 10"),
        ("--fps", args.fps, fps_ok, "a positive frame rate"),
    )
    for flag, value, ok, expected in checks:
        if not ok:
            raise DivinrError(f"{flag} {value}: expected {expected}")
    if args.gop_workers > 1 and (args.nola_scope or args.granularity) != "gop":
        raise DivinrError(
            f"--gop-workers {args.gop_workers}: only GoPs with their own adapters train apart; add --granularity gop "
            "(and leave --nola-scope at gop)"
        )
    if args.workdir is not None:
        blocker = _not_a_folder([Path(args.workdir), *Path(args.workdir).absolute().parents])
        if blocker is not None:
            raise DivinrError(f"--workdir {args.workdir}: {blocker} is a file, not a folder; choose another work folder")


def _read_stream(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DivinrError(f"cannot read bitstream {path}: {exc.strerror or exc}") from None


def cmd_encode(args: argparse.Namespace) -> int:
    _check_encode_flags(args)
    outputs = [Path(args.output).parent, *([Path(args.recon).parent] if args.recon else [])]
    created = _missing_folders([*outputs, *([Path(args.workdir)] if args.workdir else [])])
    try:
        return _encode(args)
    except BaseException:
        _remove_if_empty(created)
        raise


def _encode(args: argparse.Namespace) -> int:
    """``cmd_encode`` once the flags are checked: every output is checked before the clip is read and trained on."""
    from divinr.codec import DiVINRCodec, load_clip
    from divinr.data.video import WRITE_SUFFIXES, write_video
    from divinr.inference.sampler import SamplerConfig
    from divinr.models.adapters import LoRAConfig, VeRAConfig
    from divinr.models.nola import NOLAConfig
    from divinr.training.encoder import EncoderConfig
    from divinr.training.gop_jobs import GoPLauncher
    from divinr.training.stages import paper_phases

    width, height = args.resolution
    check_output(args.output, (".dvr",), "bitstream", inputs=(args.input,))
    if args.recon:
        check_output(args.recon, WRITE_SUFFIXES, "reconstruction", inputs=(args.input, args.output))
    if args.workdir:
        check_writable(Path(args.workdir) / "checkpoints")
    read_kwargs: dict[str, Any] = {"bit_depth": args.bit_depth}
    if args.fps:
        read_kwargs["fps"] = args.fps
    video = load_clip(
        args.input, width=width, height=height, max_frames=args.frames, start=args.start,
        input_size=args.input_size, **read_kwargs,
    )
    # --adapter-rank sets the chosen family's rank; the others keep their defaults (unused anyway).
    def rank(family: str) -> dict[str, int]:
        return {"rank": args.adapter_rank} if family == args.adapter and args.adapter_rank is not None else {}

    config = EncoderConfig(
        backbone=args.backbone,
        backbone_path=args.backbone_path,
        inr=args.inr_size,
        target_bpp=args.target_bpp,
        adapter=args.adapter,
        nola=NOLAConfig(num_bases=args.nola_bases, seed=args.seed, **rank("nola")),
        lora=LoRAConfig(**rank("lora")),
        vera=VeRAConfig(seed=args.seed, **rank("vera")),
        phases=paper_phases(*args.epochs),
        sampler=SamplerConfig(steps=args.steps, noise_seed=args.seed),
        gop_size=args.gop,
        conditioning=args.conditioning,
        keyframe_quality=args.keyframe_quality,
        granularity=args.granularity,
        nola_scope=args.nola_scope,
        seed=args.seed,
        device=args.device,
        gradient_checkpointing=(
            args.backbone not in ("tiny", "mini") if args.gradient_checkpointing is None else args.gradient_checkpointing
        ),
    )
    launcher = GoPLauncher("local", args.gop_workers) if args.gop_workers > 1 else None
    result = DiVINRCodec(config, launcher=launcher).encode(
        video, workdir=args.workdir, bitstream_path=args.output, reconstruct=bool(args.recon)
    )
    if result.reconstruction is not None:
        write_video(args.recon, result.reconstruction.frames, video.fps)
    target = "" if result.predicted_bpp is None else f" (target {args.target_bpp:g}, predicted {result.predicted_bpp:.5f})"
    condition = "keyframes" if result.bits["keyframes"] else "inr"
    print(
        f"wrote {args.output}: {len(result.data)} bytes, {result.bpp:.5f} bpp{target} "
        f"({condition} {result.bits[condition]} / {args.adapter} {result.bits['adapter']} / header {result.bits['header']} bits), "
        f"{video.num_frames} frames {video.width}x{video.height}, encode {result.encode_seconds:.1f} s"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode GoP by GoP straight into the output file: memory holds one GoP, not the video."""
    from divinr.codec import decoder_for
    from divinr.compression.bitstream import read_header
    from divinr.data.video import WRITE_SUFFIXES, write_video
    from divinr.inference.decoder import memory_budget

    check_output(args.output, WRITE_SUFFIXES, "video", inputs=(args.input,))
    data = _read_stream(args.input)
    start = time.perf_counter()
    header = read_header(data)
    written: list[tuple[int, ...]] = []

    def counted(chunks: Iterator[Any]) -> Iterator[Any]:
        for chunk in chunks:
            written.append(tuple(chunk.shape))
            yield chunk

    codec = decoder_for(data, backbone_path=args.backbone_path, device=args.device)
    with memory_budget(int(args.max_memory * 2**30)):  # checked before the backbone is loaded
        write_video(args.output, counted(codec.iter_frames(data, args.frames)), header["fps_num"] / header["fps_den"])
    frames, (_, _, h, w) = sum(shape[0] for shape in written), written[0]
    print(f"wrote {args.output}: {frames} frames {w}x{h} in {time.perf_counter() - start:.1f} s")
    return 0


def stream_info(data: bytes) -> dict[str, Any]:
    """Header fields, bits by part and bpp of a bitstream (what ``divinr info --json`` prints).

    Reads the header without torch or diffusers, so it takes milliseconds, not seconds.
    A DiV-INR stream shows the settings of its adapter family only (under the family's name), a
    JPEG-conditioned one no INR or mask entries (its header's are not read); a pixel-INR stream
    has no backbone, GoP, mask, adapter or sampler entries.
    """
    from divinr.compression.bitstream import CodecKind, Conditioning, Granularity, bits_breakdown, read_header_schema
    from divinr.rate import bits_per_pixel

    schema, v = read_header_schema(data)
    view = schema.view(v)
    bits = bits_breakdown(data)
    # The decoded (display) size; streams without a conformance window display their coded size.
    display = v.get("display_width", v["width"]), v.get("display_height", v["height"])
    info = {
        "format_version": schema.version,
        "kind": CodecKind(schema.kind).name.lower(),
        "bpp": bits_per_pixel(len(data), v["frames"], display[0], display[1]),
        "bytes": len(data),
        "bits": bits,
        "frames": v["frames"],
        "width": v["width"],
        "height": v["height"],
        "display_width": display[0],
        "display_height": display[1],
        "fps": v["fps_num"] / v["fps_den"],
        "inr": view["inr"],
        "quant_bits": v["quant_bits"],
    }
    if schema.kind == CodecKind.DIVINR:
        adapter = view.get("adapter", "nola")  # v1 and v2 streams: NOLA
        settings = {k: value for k, value in view[adapter].items() if k != "target_modules"}
        conditioning = view.get("conditioning", Conditioning.INR)  # v1 and v2 streams: always the INR
        info.update(
            gop_size=v["gop_size"],
            backbone=v["backbone"],
            backbone_fingerprint=v["backbone_fingerprint"].hex(),
            conditioning=conditioning.name.lower(),
            mask_mode=view["mask_mode"].name.lower(),
            adapter=adapter,
            sampler=view["sampler"],
            # streams before v4: one INR and one adapter set for the sequence
            granularity=view.get("granularity", Granularity.SEQUENCE).name.lower(),
            nola_scope=view.get("nola_scope", Granularity.SEQUENCE).name.lower(),
        )
        info[adapter] = {"layers": v["nola_layers"], **settings}
        if conditioning == Conditioning.JPEG:
            del info["inr"], info["mask_mode"]
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = stream_info(_read_stream(args.input))
    if args.json:
        print(json.dumps(info, indent=2, allow_nan=False))
        return 0
    bits = info["bits"]
    print(f"{args.input}: divinr bitstream v{info['format_version']} ({info['kind']})")
    gop = f", GoP {info['gop_size']}" if "gop_size" in info else ""
    if info.get("granularity") == "gop":
        gop += f" (an INR{' and adapters' if info['nola_scope'] == 'gop' else ''} per GoP)"
    shown, coded = (info["display_width"], info["display_height"]), (info["width"], info["height"])
    padded = f" (coded {coded[0]}x{coded[1]})" if shown != coded else ""
    print(f"  video     {info['frames']} frames {shown[0]}x{shown[1]}{padded} @ {info['fps']:g} fps{gop}")
    if "backbone" in info:
        print(f"  backbone  {info['backbone']} {info['backbone_fingerprint'][:16]}")
    conditioning = "inr" if "inr" in info else "keyframes"
    if "inr" in info:
        print(f"  inr       {info['inr']}")
    else:
        print("  keyframes one JPEG file per GoP (its first frame)")
    for part in (info.get("adapter"), "sampler"):
        if part in info:
            print(f"  {part:9s} {info[part]}")
    for part in (conditioning, "adapter", "header"):
        print(f"  {part:9s} {bits[part]:>10d} bits  {100 * bits[part] / bits['total']:5.1f} %")
    print(f"  total     {bits['total']:>10d} bits  {info['bpp']:.6f} bpp")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from divinr.metrics.weights import main as weights_main

    return weights_main(args.args or ["list"])


def cmd_data(args: argparse.Namespace) -> int:
    from divinr.data.datasets import get_dataset
    from divinr.data.download import UVG_BASE_URL, download_dataset

    info = get_dataset(args.dataset)
    if not info.downloadable:
        print(f"{info.title} has no public direct download; obtain it this way: {info.download}")
        print(f"then place {', '.join(s.filename for s in info.sequences[:2])}, ... in <root>/{info.name}/")
        return 0
    paths = download_dataset(info, args.root, base_url=args.base_url or UVG_BASE_URL, keep_archives=args.keep_archives)
    print(f"{info.title}: {len(paths)} raw files complete in {paths[0].parent}")
    return 0


# 128 + SIGPIPE, the status of a Unix tool whose output pipe was closed.
EXIT_BROKEN_PIPE = 141
COMMANDS = {"encode": cmd_encode, "decode": cmd_decode, "info": cmd_info, "weights": cmd_weights, "data": cmd_data}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail on a closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured output): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()
        return status
    except DivinrError as err:
        print(f"divinr: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (`divinr info x.dvr | head -1`): stop quietly, as Unix tools do.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("divinr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""HiNeRV baseline: divinr's INR with an RGB head, trained in pixel space with HiNeRV's recipe.

A real baseline, not imported numbers: :class:`divinr.codec.pixel.PixelINRCodec` (the same INR
family, stage callback, quantiser, range coder and container as DiV-INR, no backbone, no NOLA)
behind the reference-codec interface. Encoding and decoding run as separate processes
(``python -m divinr.anchors.hinerv encode|decode``), so the decoder sees nothing but the
bitstream, exactly like the external anchors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, ClassVar

from divinr.anchors.base import RawVideo, ReferenceCodec, read_raw_rgb, write_raw_rgb
from divinr.codec.pixel import HINERV_EPOCHS, PixelINRCodec
from divinr.data.video import Video
from divinr.errors import EXIT_USER_ERROR, DivinrError, unknown_choice
from divinr.models.pixel_inr import HINERV_PRESETS, SEQUENCE_PRESETS


def encode_file(
    raw: RawVideo,
    fps: float,
    preset: str,
    out: Path,
    *,
    epochs: tuple[int, int, int],
    device: str,
    seed: int,
    workdir: Path | None = None,
) -> None:
    """Train the pixel INR on an rgb24 file and write its bitstream.

    With ``workdir`` training checkpoints every epoch there and resumes from it when run
    again with the same settings after an interruption; the checkpoints are removed once the
    bitstream is written (other files in the folder are left alone).
    """
    from divinr.training.resume import clear_workdir

    frames = read_raw_rgb(raw.path, raw.num_frames, raw.width, raw.height)
    codec = PixelINRCodec(preset, epochs, seed=seed, device=device, progress=False)
    codec.encode(Video(frames, fps), workdir=workdir, bitstream_path=out)
    if workdir is not None:
        clear_workdir(workdir)


def decode_file(bitstream: Path, out: Path) -> None:
    """Decode a pixel-INR bitstream to an rgb24 file, on the CPU: a re-decode (e.g. to re-score a
    point) then gives the very frames its stored scores were computed from."""
    decoded = PixelINRCodec.for_decoding(backbone_path=None, device="cpu", progress=False).decompress(
        bitstream.read_bytes()
    )
    write_raw_rgb(decoded.frames, out)


def training_dir(bitstream: Path) -> Path:
    """Where a point's training checkpoints live until its bitstream is written."""
    return bitstream.parent / f"{bitstream.stem}_training"


class HiNeRVCodec(ReferenceCodec):
    """The HiNeRV-recipe pixel INR as a reference codec; the rate parameter is the size preset."""

    name: ClassVar[str] = "hinerv"
    bitstream_suffix: ClassVar[str] = ".dvr"

    def __init__(
        self,
        presets: tuple[str, ...] = SEQUENCE_PRESETS,
        epochs: tuple[int, int, int] = HINERV_EPOCHS,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.presets = tuple(presets)
        self.epochs = tuple(epochs)
        self.device = device
        self.seed = seed
        for preset in self.presets:
            self.validate_param({"preset": preset})

    def label(self) -> str:
        d, p, q = self.epochs
        return f"HiNeRV recipe (divinr RGB INR, L1+MS-SSIM, {d}+{p}+{q} epochs, 15% prune, 6-bit Quant-Noise)"

    def default_params(self) -> list[dict[str, Any]]:
        return [{"preset": p} for p in self.presets]

    def check(self) -> None:
        """Runs in-process with divinr itself: nothing external to find."""

    def validate_param(self, param: dict[str, Any]) -> None:
        if set(param) != {"preset"} or param["preset"] not in HINERV_PRESETS:
            raise unknown_choice("HiNeRV preset", str(param.get("preset")), tuple(HINERV_PRESETS))

    def _encode(self, raw: RawVideo, fps: float, param: dict[str, Any], bitstream: Path) -> list[list[str]]:
        return [[
            sys.executable, "-m", "divinr.anchors.hinerv", "encode", str(raw.path),
            f"{raw.width}x{raw.height}", str(raw.num_frames), repr(float(fps)), param["preset"], str(bitstream),
            "--epochs", ",".join(map(str, self.epochs)), "--device", self.device, "--seed", str(self.seed),
            "--workdir", str(training_dir(bitstream)),
        ]]  # fmt: skip

    def _decode(self, raw: RawVideo, bitstream: Path, decoded: Path) -> list[list[str]]:
        return [[sys.executable, "-m", "divinr.anchors.hinerv", "decode", str(bitstream), str(decoded)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m divinr.anchors.hinerv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode")
    enc.add_argument("raw", type=Path, help="rgb24 input file")
    enc.add_argument("size", help="WxH")
    enc.add_argument("frames", type=int)
    enc.add_argument("fps", type=float)
    enc.add_argument("preset", choices=sorted(HINERV_PRESETS))
    enc.add_argument("out", type=Path)
    enc.add_argument("--epochs", default=",".join(map(str, HINERV_EPOCHS)))
    enc.add_argument("--device", default="auto")
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--workdir", type=Path, default=None, help="checkpoint here and resume from it; the checkpoints are removed when done")
    dec = sub.add_parser("decode")
    dec.add_argument("bitstream", type=Path)
    dec.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "encode":
            width, height = (int(v) for v in args.size.split("x"))
            raw = RawVideo(args.raw, args.frames, width, height)
            epochs = tuple(int(v) for v in args.epochs.split(","))
            encode_file(raw, args.fps, args.preset, args.out, epochs=epochs, device=args.device, seed=args.seed, workdir=args.workdir)  # type: ignore[arg-type]
        else:
            decode_file(args.bitstream, args.out)
    except DivinrError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

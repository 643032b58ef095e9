"""Speed and memory of DiV-INR training and decoding on one GoP: ``python -m benchmarks.speed``.

The backbone is the preset's full architecture with random weights (no download; timings do
not depend on weight values), built on the target device in the target dtype (bf16 DiT on GPU,
float32 on CPU; the VAE is float32 as in :func:`~divinr.models.backbone.load_backbone`)::

    train   f --INR--> (y, M) --DiT with NOLA unmerged--> dual loss --backward--> AdamW step
            bf16 autocast on GPU, with and without gradient checkpointing; peak GPU memory
    decode  f --INR--> (y, M) --`steps` UniPC steps, adapters merged--> z0 --VAE--> frames
            frames per second, peak GPU memory, seconds of each stage
    nola    basis memory and generation time, building the A/B factors of all adapters
            (forward, and forward + backward as in training), one DiT forward with the
            adapters unmerged vs merged

``--baseline`` measures the straightforward variant in the same run (text cross-attention
computed on a 512-token zero embedding as for a real text prompt, adapters unmerged, eager) and
reports speed-ups of the optimised one (cross-attention skipped, adapters merged, optionally
``torch.compile``d). Every figure is the median of ``--repeats`` runs after ``--warmup``
warm-ups, with min and max (basis generation, a one-time cost, is timed once). GPU work is
timed with CUDA events and peak memory is ``torch.cuda.max_memory_allocated`` over the timed
runs (weights included); on CPU peak memory is not measured (null). Results go to one JSON
file (written atomically) and a printed table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch

from divinr.atomic import atomic_write_text
from divinr.codec import coded_size
from divinr.training.encoder import EncoderConfig
from divinr.data.datasets import CODING_SIZE
from divinr.data.gop import latent_frame_count
from divinr.errors import PresetError, unknown_choice
from divinr.inference.sampler import SamplerConfig, initial_noise, sample
from divinr.models.backbone import (
    BACKBONE_PRESETS,
    LATENT_CHANNELS,
    Backbone,
    build_random_backbone,
    set_cross_attention,
)
from divinr.models.inr import INR_PRESETS, count_parameters, build_inr, inr_config
from divinr.models.nola import (
    NOLAConfig,
    count_nola_coefficients,
    merge_nola,
    nola_basis_bytes,
    nola_layers,
    release_nola_bases,
)
from divinr.training.module import DiVINRModule
from divinr.training.stages import paper_phases

PARTS = ("train", "decode", "nola")
NOLA_TIMINGS = ("basis_generation", "factors_forward", "factors_forward_backward", "forward_unmerged", "forward_merged")
TEXT_TOKENS = 512  # length of Wan's T5 prompt embedding, for the cross-attention baseline
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Lambda of the dual loss during the timed iterations; any value costs the same.
TRAIN_LAMBDA = 0.5
# Standard deviation of the random beta coefficients: with A ~ LoRA's scale it makes the adapter
# update about a tenth of the base weights, so merged and unmerged paths differ measurably if wrong.
BETA_STD = 1e-3
GB = 1e9


@dataclass(frozen=True)
class Target:
    """A goal of the performance issue, checked only where the run matches its conditions."""

    name: str
    label: str
    path: tuple[str, ...]
    op: str
    limit: float
    unit_scale: float = 1.0
    needs_paper_geometry: bool = True
    needs_paper_steps: bool = False


TARGETS = (
    Target("decode_fps", "decode FPS", ("decode", "optimised", "fps", "median"), ">=", 5.0, needs_paper_steps=True),
    Target("train_s_per_iter", "training s/iter", ("train", "checkpointing", "seconds", "median"), "<=", 0.9),
    Target(
        "train_peak_gb_checkpointing", "training peak GB (checkpointing)",
        ("train", "checkpointing", "peak_memory_bytes"), "<=", 21.0, unit_scale=1 / GB,
    ),
    Target(
        "decode_peak_gb", "decode peak GB", ("decode", "optimised", "peak_memory_bytes"), "<=", 12.0, unit_scale=1 / GB
    ),
    Target(
        "nola_basis_gb", "NOLA bases GB", ("nola", "basis_bytes"), "<=", 1.5, unit_scale=1 / GB,
        needs_paper_geometry=False,
    ),
)
# The geometry the targets are stated for: the library's defaults, which are the paper's.
PAPER_RESOLUTION = CODING_SIZE
PAPER_GOP = EncoderConfig.gop_size
PAPER_STEPS = SamplerConfig.steps


class Stopwatch:
    """Stage times of one run, taken with CUDA events on GPU (host clocks would only see launches).

    ``begin()`` opens a run, ``stage(name)`` starts a named stage (ending the previous one) and
    ``stop()`` ends the run; :meth:`durations` synchronises once and returns seconds.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0 if self.cuda else end - start

    def begin(self) -> None:
        self._marks = [("", self._now())]

    def stage(self, name: str) -> None:
        self._marks.append((name, self._now()))

    def stop(self) -> None:
        self._marks.append(("", self._now()))

    def durations(self) -> dict[str, float]:
        """``{"total": s, <stage>: s, ...}`` of the last run."""
        if self.cuda:
            self._marks[-1][1].synchronize()
        seconds = {"total": self._elapsed(self._marks[0][1], self._marks[-1][1])}
        for (name, start), (_, end) in zip(self._marks[1:], self._marks[2:]):
            seconds[name] = seconds.get(name, 0.0) + self._elapsed(start, end)
        return seconds


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(run: Callable[[Stopwatch], object], device: torch.device, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Time ``run`` ``repeats`` times after ``warmup`` untimed calls.

    Args:
        run: one unit of work; it may split itself into stages with ``watch.stage(name)``.
        device: where the work runs (CUDA: event timing and peak memory).
        repeats: timed runs (>= 1).
        warmup: untimed runs before them (compilation, cuDNN autotuning, allocator warm-up).

    Returns:
        ``{"seconds": summary, "stages": {name: summary}, "peak_memory_bytes": int | None}``;
        the peak covers the timed runs and everything resident meanwhile (weights included).
    """
    watch = Stopwatch(device)
    for _ in range(warmup):
        watch.begin()
        run(watch)
        watch.stop()
        watch.durations()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        watch.begin()
        run(watch)
        watch.stop()
        for name, seconds in watch.durations().items():
            samples.setdefault(name, []).append(seconds)
    total = samples.pop("total")
    return {
        "seconds": summary(total),
        "stages": {name: summary(values) for name, values in samples.items()},
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
    }


def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a GPU out-of-memory is a result (``{"error": ...}``), not a crash."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        print(f"{name}: out of GPU memory ({str(err).splitlines()[0]})", file=sys.stderr)
        return {"error": "out of memory"}


@dataclass
class Setup:
    """Everything the measurements share: one sequence of one GoP with random data.

    Attributes:
        module: the training module (random INR, NOLA injected into the backbone's DiT).
        z0: normalised latents of the GoP (1, 16, T', h, w).
        f: INR coordinates of its latent frames (T',).
        noise: the decoder's initial noise z_1, float32, like ``reconstruct`` draws it.
        sampler: UniPC settings.
        text: a zero text embedding (1, 512, text_dim) for the cross-attention baseline.
    """

    module: DiVINRModule
    z0: torch.Tensor
    f: torch.Tensor
    noise: torch.Tensor
    sampler: SamplerConfig
    text: torch.Tensor

    @property
    def backbone(self) -> Backbone:
        return self.module.backbone

    @property
    def device(self) -> torch.device:
        return self.z0.device

    @property
    def frames(self) -> int:
        """Video frames of the GoP (1 + 4 (T' - 1))."""
        return 1 + 4 * (self.z0.shape[2] - 1)


def build_setup(
    backbone: Backbone, inr_size: str, resolution: tuple[int, int], gop: int, steps: int, seed: int = 0
) -> Setup:
    """Build the INR and the training module around ``backbone`` and draw the GoP's data.

    Adapters get random non-zero ``beta`` (training starts at zero), so merging changes weights.

    Args:
        backbone: a frozen backbone, e.g. from ``build_random_backbone``.
        inr_size: INR preset, at its absolute grid sizes (a 150-latent-frame sequence).
        resolution: (width, height) in pixels; timed at its coded size (:func:`~divinr.codec.coded_size`).
        gop: frames per GoP, 1 + 4k.
        steps: UniPC steps of the decoder.
        seed: seed of the INR initialisation and of the random data.

    Returns:
        The shared set-up on the backbone's device.
    """
    width, height = coded_size(*resolution)
    if gop < 1 or (gop - 1) % 4:
        raise PresetError(f"gop {gop} is not 1 + 4k as the Wan VAE needs; use e.g. 5, 17 or 25")
    device = next(backbone.transformer.parameters()).device
    latent = (1, LATENT_CHANNELS, latent_frame_count(gop), height // 8, width // 8)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inr = build_inr(inr_config(inr_size), latent[3:])
    backbone.adapt(NOLAConfig())
    module = DiVINRModule(backbone, inr.to(device), paper_phases())
    with torch.no_grad():
        for layer in nola_layers(module.transformer).values():
            layer.nola_beta.copy_(torch.randn(layer.nola_beta.shape, generator=generator) * BETA_STD)
    sampler = SamplerConfig(steps=steps)
    text_shape = (1, TEXT_TOKENS, backbone.transformer.config.text_dim)
    text = torch.zeros(text_shape, device=device, dtype=backbone.model_dtype)
    return Setup(
        module=module,
        z0=torch.randn(latent, generator=generator).to(device),
        f=torch.linspace(0.0, 1.0, latent[2]).to(device),
        noise=initial_noise(latent, sampler, 0).to(device),
        sampler=sampler,
        text=text,
    )


def training_loss(setup: Setup, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of ``DiVINRModule.training_step`` at a fixed lambda (no Lightning logging)."""
    return setup.module.compute_loss(setup.z0, setup.f, TRAIN_LAMBDA, encoder_hidden_states)[0]


def measure_training(
    setup: Setup, *, checkpointing: bool, cross_attention: bool, repeats: int, warmup: int
) -> dict[str, Any]:
    """Seconds and peak memory of one training iteration on the GoP.

    Mirrors Lightning's ``bf16-mixed`` on GPU (autocast around the forward) and ``32-true`` on
    CPU, with the module's own AdamW groups.
    """
    module, device = setup.module, setup.device
    transformer = module.transformer
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()
    set_cross_attention(transformer, cross_attention)
    text = setup.text if cross_attention else None
    optimizer = module.configure_optimizers()
    module.train()

    def iteration(watch: Stopwatch) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = training_loss(setup, text)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        return measure(iteration, device, repeats=repeats, warmup=warmup)
    finally:
        optimizer.zero_grad(set_to_none=True)
        transformer.disable_gradient_checkpointing()
        set_cross_attention(transformer, False)
        module.eval()


@torch.no_grad()
def decode_gop(setup: Setup, watch: Stopwatch | None = None, *, cross_attention: bool = False) -> torch.Tensor:
    """Decode the GoP as ``divinr.inference.decoder.reconstruct`` does; returns the sampled z0.

    Args:
        setup: the shared set-up; adapters are used as they are (merged or not).
        watch: optional stopwatch, given the stages ``inr``, ``sampling`` and ``vae_decode``.
        cross_attention: condition on the 512-token zero text embedding (baseline); the caller
            switches the processors with ``set_cross_attention``.

    Returns:
        The sampled latents (1, 16, T', h, w), float32.
    """
    backbone = setup.backbone
    text = setup.text if cross_attention else None
    if watch is not None:
        watch.stage("inr")
    y, m = setup.module.condition(setup.f)
    if watch is not None:
        watch.stage("sampling")
    z0 = sample(
        lambda x, t: backbone.predict(x, y.to(x.dtype), m.to(x.dtype), t, text),
        setup.noise,
        setup.sampler,
        model_dtype=backbone.model_dtype,
    )
    if watch is not None:
        watch.stage("vae_decode")
    backbone.decode(z0[0]).cpu()
    return z0


def measure_decoding(setup: Setup, *, cross_attention: bool, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds, frames per second, stage split and peak memory of decoding one GoP."""
    set_cross_attention(setup.module.transformer, cross_attention)
    try:
        result = measure(
            lambda watch: decode_gop(setup, watch, cross_attention=cross_attention),
            setup.device, repeats=repeats, warmup=warmup,
        )
    finally:
        set_cross_attention(setup.module.transformer, False)
    result["frames"] = setup.frames
    result["fps"] = {k: setup.frames / v for k, v in result["seconds"].items()}
    # The slowest run gives the lowest frame rate.
    result["fps"]["min"], result["fps"]["max"] = result["fps"]["max"], result["fps"]["min"]
    return result


def measure_factors(setup: Setup, *, backward: bool, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds to build the A/B factors of every adapter, as one unmerged DiT forward does.

    With ``backward`` also their backward into the coefficients (what each training step adds).
    """
    layers = list(nola_layers(setup.module.transformer).values())

    def build(watch: Stopwatch) -> None:
        with torch.set_grad_enabled(backward):
            factors = [factor for layer in layers for factor in layer.factors()]
            if backward:
                torch.autograd.backward(factors, [torch.ones_like(factor) for factor in factors])
        for layer in layers:
            layer.nola_alpha.grad = layer.nola_beta.grad = None

    return measure(build, setup.device, repeats=repeats, warmup=warmup)


@torch.no_grad()
def measure_forward(setup: Setup, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds of one DiT forward on the GoP at mid noise, adapters as they are."""
    module = setup.module
    y, m = module.condition(setup.f)
    t = torch.full((1,), 500.0, device=setup.device)
    x = setup.noise.to(module.backbone.model_dtype)
    return measure(lambda watch: module.backbone.predict(x, y, m, t), setup.device, repeats=repeats, warmup=warmup)


def measure_basis_generation(setup: Setup, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds to (re)generate every basis bank from its seed, as the first forward or merge does."""
    layers = list(nola_layers(setup.module.transformer).values())

    def generate(watch: Stopwatch) -> None:
        release_nola_bases(setup.module.transformer)
        for layer in layers:
            layer.bases()

    return measure(generate, setup.device, repeats=repeats, warmup=warmup)


def ratio(baseline: dict[str, Any] | None, optimised: dict[str, Any] | None) -> float | None:
    """Median-time speed-up of ``optimised`` over ``baseline`` (None if either is missing or failed)."""
    if not baseline or not optimised or "seconds" not in baseline or "seconds" not in optimised:
        return None
    return baseline["seconds"]["median"] / optimised["seconds"]["median"]


def lookup(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the figures with the issue's targets; only GPU runs at the paper's geometry count."""
    width, height = report["resolution"]
    rows = []
    for target in TARGETS:
        raw = lookup(report, target.path)
        value = raw * target.unit_scale if raw is not None else None
        if value is None:
            status = "not measured"
        elif report["device"]["type"] != "cuda":
            status = "n/a on CPU"
        elif target.needs_paper_geometry and ((width, height) != PAPER_RESOLUTION or report["gop"] != PAPER_GOP):
            status = f"n/a: target is for {PAPER_RESOLUTION[0]}x{PAPER_RESOLUTION[1]}, GoP {PAPER_GOP}"
        elif target.needs_paper_steps and report["steps"] != PAPER_STEPS:
            status = f"n/a: target is for {PAPER_STEPS} steps"
        elif report["backbone"]["preset"] == "tiny":
            status = "n/a: tiny backbone"
        else:
            ok = value >= target.limit if target.op == ">=" else value <= target.limit
            status = "PASS" if ok else "FAIL"
        rows.append(
            {"name": target.name, "label": target.label, "value": value, "op": target.op, "limit": target.limit,
             "status": status}
        )
    return rows


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}"}
    return {"type": device.type, "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def _fmt(value: Any, scale: float = 1.0, digits: int = 4) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}"


def table(report: dict[str, Any]) -> str:
    """A plain-text table of the timings, memory, speed-ups and targets."""
    lines = [f"{'measurement':44} {'median':>10} {'min':>10} {'max':>10} {'peak GB':>8}"]

    def row(label: str, result: dict[str, Any] | None, key: str = "seconds") -> None:
        if not result:
            return
        if "error" in result:
            lines.append(f"{label:44} {result['error']}")
            return
        stats = result[key]
        peak = result.get("peak_memory_bytes")
        lines.append(
            f"{label:44} {_fmt(stats['median']):>10} {_fmt(stats['min']):>10} {_fmt(stats['max']):>10} "
            f"{_fmt(peak, 1 / GB, 3):>8}"
        )
        for stage, split in result.get("stages", {}).items() if key == "seconds" else ():
            lines.append(f"  {stage:42} {_fmt(split['median']):>10} {_fmt(split['min']):>10} {_fmt(split['max']):>10}")

    for name, result in report.get("train", {}).items():
        row(f"train s/iter ({name})", result)
    for name, result in report.get("decode", {}).items():
        row(f"decode s/GoP ({name})", result)
        if "fps" in result:
            row(f"decode FPS ({name})", result, "fps")
    nola = report.get("nola", {})
    for key in NOLA_TIMINGS:
        row(f"nola {key.replace('_', ' ')} s", nola.get(key))
    if "basis_bytes" in nola:
        lines.append(f"{'nola bases GB (' + nola['basis_dtype'] + ')':44} {_fmt(nola['basis_bytes'], 1 / GB):>10}")
    for name, value in report.get("speedups", {}).items():
        lines.append(f"{'speed-up ' + name:44} {_fmt(value):>10}")
    lines.append("")
    for target in report["targets"]:
        value = _fmt(target["value"])
        lines.append(f"target {target['label']:37} {value:>10} {target['op']} {target['limit']:<6g} {target['status']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="wan2.1-fun-1.3b-inp", choices=sorted(BACKBONE_PRESETS))
    parser.add_argument(
        "--resolution", default="x".join(map(str, PAPER_RESOLUTION)), help="WIDTHxHEIGHT (timed at the next multiples of 16)"
    )
    parser.add_argument("--gop", type=int, default=PAPER_GOP, help="frames per GoP, 1 + 4k")
    parser.add_argument("--inr-size", default="s", choices=sorted(INR_PRESETS))
    parser.add_argument("--steps", type=int, default=PAPER_STEPS, help="UniPC steps of the decoder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--baseline", action="store_true", help="also time the straightforward variant")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT for the optimised decode")
    parser.add_argument(
        "--compile-mode", default="default",
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (autotunes for minutes on a 1.3B model)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/speed-<device>.json)"
    )
    args = parser.parse_args(argv)
    try:
        width, height = (int(side) for side in args.resolution.lower().split("x"))
    except ValueError:
        parser.error(f"--resolution {args.resolution!r} is not WIDTHxHEIGHT, e.g. 1024x576")
    args.size = (width, height)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    for part in args.parts:
        if part not in PARTS:
            raise unknown_choice("benchmark part", part, PARTS)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    args.device = torch.device(args.device)
    if args.out is None:
        args.out = RESULTS_DIR / f"speed-{args.device.type}.json"
    return args


def backbone_weight_bytes(backbone: Backbone) -> int:
    """Memory of the frozen backbone weights in their storage dtypes (adapter coefficients excluded).

    Works on the meta device, so the full-size footprint (the Fun-InP image embedding included)
    can be checked without the weights.
    """
    modules = (backbone.transformer, backbone.vae)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if not p.requires_grad)


def describe_run(args: argparse.Namespace, argv: Sequence[str], setup: Setup) -> dict[str, Any]:
    """What was measured, on what: the part of the report that is not a measurement."""
    backbone, transformer, inr = setup.backbone, setup.module.transformer, setup.module.inr
    return {
        "command": shlex.join(["python", "-m", "benchmarks.speed", *argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(setup.device),
        "versions": {
            "torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "backbone": {
            "preset": args.backbone, "weights": "random", "dtype": _dtype_name(backbone.model_dtype),
            "vae_dtype": _dtype_name(next(backbone.vae.parameters()).dtype),
            "transformer_params": count_parameters(transformer) - count_nola_coefficients(transformer),
            "vae_params": count_parameters(backbone.vae),
            "weights_bytes": backbone_weight_bytes(backbone),
        },
        "resolution": list(args.size),
        "gop": args.gop,
        "latent_shape": list(setup.z0.shape[1:]),
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "inr": {"preset": args.inr_size, "params": inr.num_parameters, "config": inr.config.to_dict()},
        "nola_coefficients": count_nola_coefficients(transformer),
        "nola_layers": len(nola_layers(transformer)),
        "compile": args.compile,
        "parts": args.parts,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write the JSON.

    Parts run in an order that needs no unmerge (inexact in bf16): everything with unmerged
    adapters (training, NOLA overhead, baseline decode) first, then merge, then the rest.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The report that was written.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    timing = {"repeats": args.repeats, "warmup": args.warmup}

    watch = Stopwatch(device)
    watch.begin()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone = build_random_backbone(args.backbone, device=device, dtype=dtype, seed=args.seed)
    setup = build_setup(backbone, args.inr_size, args.size, args.gop, args.steps, args.seed)
    watch.stop()
    transformer = setup.module.transformer
    report = describe_run(args, argv, setup)
    report["setup_seconds"] = watch.durations()["total"]

    if "train" in args.parts:
        train = report["train"] = {}
        for name, checkpointing in (("checkpointing", True), ("no_checkpointing", False)):
            train[name] = guarded(name, lambda: measure_training(
                setup, checkpointing=checkpointing, cross_attention=False, **timing))
        if args.baseline:
            train["baseline_checkpointing"] = guarded("baseline", lambda: measure_training(
                setup, checkpointing=True, cross_attention=True, **timing))
    if "nola" in args.parts:
        nola = report["nola"] = {
            "basis_dtype": _dtype_name(backbone.model_dtype),
            "basis_bytes": nola_basis_bytes(transformer),
            "basis_bytes_bf16": nola_basis_bytes(transformer, torch.bfloat16),
            # A one-time, host-bound cost of tens of seconds at full size: timed once.
            "basis_generation": measure_basis_generation(setup, repeats=1, warmup=0),
            "materialised_bytes": nola_basis_bytes(next(iter(nola_layers(transformer).values())).bank),
            "factors_forward": measure_factors(setup, backward=False, **timing),
            "factors_forward_backward": measure_factors(setup, backward=True, **timing),
            "forward_unmerged": guarded("forward", lambda: measure_forward(setup, **timing)),
        }
    decode: dict[str, Any] = {}
    if "decode" in args.parts and args.baseline:
        decode["baseline"] = guarded("decode", lambda: measure_decoding(setup, cross_attention=True, **timing))

    watch.begin()
    merge_nola(transformer)
    watch.stop()
    report["merge_seconds"] = watch.durations()["total"]
    # As divinr.inference.decoder.install_adapters does: merged adapters need no bases.
    report["released_basis_bytes"] = release_nola_bases(transformer)

    if "nola" in args.parts:
        nola["forward_merged"] = guarded("forward", lambda: measure_forward(setup, **timing))
        speedup = ratio(nola["forward_unmerged"], nola["forward_merged"])
        nola["unmerged_overhead"] = None if speedup is None else speedup - 1.0
    if "decode" in args.parts:
        if args.compile:
            transformer.compile(mode=args.compile_mode)
            report["compile_mode"] = args.compile_mode
            watch.begin()
            decode_gop(setup)  # compilation happens here, outside the timed runs
            watch.stop()
            report["compile_warmup_seconds"] = watch.durations()["total"]
        decode["optimised"] = guarded("decode", lambda: measure_decoding(setup, cross_attention=False, **timing))
        report["decode"] = decode

    if args.baseline:
        speedups = {
            "decode": ratio(decode.get("baseline"), decode.get("optimised")),
            "train": ratio(
                lookup(report, ("train", "baseline_checkpointing")), lookup(report, ("train", "checkpointing"))
            ),
        }
        report["speedups"] = {k: v for k, v in speedups.items() if v is not None}
    report["targets"] = check_targets(report)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()

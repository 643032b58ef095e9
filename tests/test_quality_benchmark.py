"""The CPU quality benchmark's bookkeeping: resumable points and BD against DiV-INR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.quality import bd_table, cached, codec_settings, dit_ceiling, vae_ceiling
from divinr.codec import load_clip
from divinr.data.samples import sample_clip_path
from divinr.metrics.bd import bd_metric
from divinr.models.backbone import load_backbone


def _curve(codec: str, rates: list[float], offset: float) -> list[dict]:
    return [{"codec": codec, "bpp": r, "psnr": 20 + 3 * np.log10(r) + offset, "ms_ssim": None} for r in rates]


def test_bd_table_is_curve_minus_divinr_and_skips_rateless_points() -> None:
    points = [
        *_curve("divinr", [0.01, 0.02, 0.04], 0.0),
        *_curve("x265", [0.01, 0.02, 0.04, 0.08], 2.5),
        {"codec": "vae_ceiling", "bpp": None, "psnr": 30.0, "ms_ssim": 0.9},
        *_curve("lonely", [0.02], 1.0),
    ]
    table = bd_table(points)
    assert set(table) == {"x265"}  # no rate: no curve; one point: no curve
    assert table["x265"]["psnr"] == pytest.approx(2.5, abs=1e-3)
    assert table["x265"]["ms_ssim"] is None
    div, x265 = points[:3], points[3:7]
    reference = bd_metric([p["bpp"] for p in div], [p["psnr"] for p in div],
                          [p["bpp"] for p in x265], [p["psnr"] for p in x265], "pchip", min_overlap=0.0)
    assert table["x265"]["psnr"] == pytest.approx(round(reference, 3))


def test_cached_points_are_computed_once_per_settings(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"codec": "x", "bpp": 0.1, "psnr": 20.0 + len(calls)}

    first = cached(tmp_path / "p.json", compute, {"fingerprint": "aa"})
    second = cached(tmp_path / "p.json", compute, {"fingerprint": "aa"})
    assert len(calls) == 1 and first == second == json.loads((tmp_path / "p.json").read_text())
    assert "seconds" in first and first["settings"] == {"fingerprint": "aa"}
    changed = cached(tmp_path / "p.json", compute, {"fingerprint": "bb"})  # e.g. retrained weights
    assert len(calls) == 2 and changed["psnr"] == 22.0
    assert json.loads((tmp_path / "p.json").read_text())["settings"] == {"fingerprint": "bb"}


def test_anchor_settings_tell_range_and_sei_apart() -> None:
    from divinr.anchors import build_codec

    keys = {json.dumps(codec_settings(build_codec("x265", **kw))) for kw in
            ({}, {"strip_sei": True}, {"yuv_range": "limited"})}
    assert len(keys) == 3


def test_dit_ceiling_with_an_exact_flow_reproduces_the_vae_ceiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DiT that reads y perfectly (flow (z_t - y) / t) samples y back: both ceilings then agree,
    which checks that the exact latents, the mask and the sampler are wired as the decoder's."""
    backbone = load_backbone("mini")  # a trained VAE, so that a ceiling is well above noise
    seen_masks = []

    def exact_flow(z_t: torch.Tensor, y: torch.Tensor, m: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        seen_masks.append(m)
        return (z_t - y) / (timestep.view(-1, 1, 1, 1, 1) / 1000)

    monkeypatch.setattr(backbone, "predict", exact_flow)
    frames = load_clip(sample_clip_path("bikes"), width=64, height=48, max_frames=9).frames
    vae = vae_ceiling(frames, backbone, tmp_path, {})
    dit = dit_ceiling(frames, backbone, tmp_path, {})
    assert dit["codec"] == "dit_ceiling" and dit["bpp"] is None
    assert dit["psnr"] == pytest.approx(vae["psnr"], abs=0.05)
    assert seen_masks and all(bool(m.eq(1).all()) for m in seen_masks)
    monkeypatch.setattr(backbone, "predict", lambda z_t, y, m, t: torch.zeros_like(z_t))  # a DiT that ignores y
    blind = dit_ceiling(frames, backbone, tmp_path / "blind", {})
    assert blind["psnr"] < vae["psnr"] - 3

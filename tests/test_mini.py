"""The shipped, pretrained ``mini`` backbone and the script that makes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import nn

from divinr.data.samples import sample_clip_path
from divinr.data.video import read_video
from divinr.metrics.functional import psnr_rgb
from divinr.models.backbone import (
    MASK_CHANNELS,
    MODEL_IN_CHANNELS,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    Backbone,
    backbone_fingerprint,
    get_preset,
    load_backbone,
)
from divinr.models.nola import NOLAConfig, count_nola_coefficients, inject_nola
from divinr.pretraining.conditioning import KINDS, ConditioningMixture, _random_boxes, degrade, draw_conditioning
from divinr.pretraining.mini import PretrainConfig, latent_statistics, random_clip_batch, train_loop

BUNDLED = get_preset("mini").bundled_path()


@pytest.fixture(scope="module")
def mini() -> Backbone:
    return load_backbone("mini")


# ---------------------------------------------------------------------------- the shipped weights


def test_mini_ships_as_a_diffusers_folder_within_the_size_budget() -> None:
    assert BUNDLED is not None
    files = sorted(p.relative_to(BUNDLED).as_posix() for p in BUNDLED.rglob("*") if p.is_file())
    for part in ("transformer", "vae"):
        assert f"{part}/config.json" in files and f"{part}/diffusion_pytorch_model.safetensors" in files
    assert sum((BUNDLED / f).stat().st_size for f in files) <= 8 * 1024 * 1024
    report = json.loads((BUNDLED / "report.json").read_text())
    assert {"vae", "dit", "data"} <= set(report)


def test_mini_loads_through_the_diffusers_folder_path(mini: Backbone) -> None:
    direct = load_backbone("mini", path=BUNDLED)  # the path a user's own checkpoint takes
    assert backbone_fingerprint(direct) == backbone_fingerprint(mini)
    assert isinstance(mini.transformer, WanTransformer3DModel) and isinstance(mini.vae, AutoencoderKLWan)
    assert mini.transformer.config.in_channels == MODEL_IN_CHANNELS
    dit = sum(p.numel() for p in mini.transformer.parameters())
    vae = sum(p.numel() for p in mini.vae.parameters())
    assert 0.5e6 <= dit <= 2e6 and 1e6 <= vae <= 3e6
    # Wan's compression: 4x temporal, 8x spatial, 16 channels.
    assert mini.encode(torch.rand(5, 3, 32, 48)).shape == (16, 2, 4, 6)
    # The latent statistics were measured on mini's own latents, not inherited from Wan2.1's VAE.
    assert mini.vae.config.latents_mean != list(WAN21_LATENTS_MEAN)
    assert mini.vae.config.latents_std != list(WAN21_LATENTS_STD)


def test_mini_fingerprint_is_identical_in_another_process(mini: Backbone) -> None:
    code = "from divinr.models.backbone import *; print(backbone_fingerprint(load_backbone('mini')).hex())"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == backbone_fingerprint(mini).hex()


def test_nola_adapts_the_paper_targets_of_mini(mini: Backbone) -> None:
    transformer = load_backbone("mini").transformer
    names = inject_nola(transformer, NOLAConfig(num_bases=8, rank=4))
    layers = mini.transformer.config.num_layers
    expected = {f"blocks.{i}.{t}" for i in range(layers) for t in ("attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")}
    assert set(names) == expected | {"proj_out"}
    assert count_nola_coefficients(transformer) == 2 * 8 * (3 * layers + 1)


def test_mini_vae_reconstructs_real_footage(mini: Backbone) -> None:
    """A random VAE scores ~10 dB; the pretrained one must really invert its encoder."""
    frames = read_video(sample_clip_path("bikes"), max_frames=5, resize=(160, 64)).frames
    with torch.no_grad():
        decoded = mini.decode(mini.encode(frames))
    assert float(psnr_rgb(frames, decoded).mean()) > 22.0


def test_missing_bundled_weights_name_the_rebuild_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from divinr.errors import MissingWeightsError
    from divinr.models import backbone as module

    empty = replace(get_preset("mini"), bundled=str(tmp_path))
    monkeypatch.setitem(module.BACKBONE_PRESETS, "mini", empty)
    with pytest.raises(MissingWeightsError, match="python -m divinr.pretraining.mini --install"):
        load_backbone("mini")


# ---------------------------------------------------------------------------- conditioning mixture


def _only(kind: str) -> ConditioningMixture:
    return ConditioningMixture(**{k: float(k == kind) for k in KINDS})


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_zero_exactly_where_y_is_unknown(kind: str) -> None:
    z0 = torch.randn(3, 16, 7, 6, 8) + 3.0  # no exact zeros in z0
    y, m, kinds = draw_conditioning(z0, replace(_only(kind), confidence=0.0), torch.Generator().manual_seed(0))
    assert kinds == [kind] * 3 and y.shape == z0.shape and m.shape == (3, MASK_CHANNELS, 7, 6, 8)
    assert set(m.unique().tolist()) <= {0.0, 1.0} and torch.equal(m, m[:, :1].expand_as(m))
    known = m[:, :1].bool().expand_as(y)
    assert torch.equal(y[~known], torch.zeros_like(y[~known]))
    if kind == "first":
        assert m[:, :, 0].eq(1).all() and m[:, :, 1:].eq(0).all() and torch.equal(y[:, :, 0], z0[:, :, 0])
    elif kind == "blocks":
        assert torch.equal(y[known], z0[known]) and 0 < m.mean() < 1
    elif kind == "degraded":
        assert m.eq(1).all()
    else:
        assert m.eq(0).all()


def test_confidence_masks_are_the_wiener_weight_of_the_degraded_y() -> None:
    z0 = torch.randn(64, 16, 3, 4, 4, dtype=torch.float64)
    mixture = replace(_only("degraded"), confidence=1.0, clean=0.0)
    y, m, _ = draw_conditioning(z0, mixture, torch.Generator().manual_seed(2))
    err = (y - z0).numpy().reshape(64, -1)
    expected = 1.0 / (1.0 + np.mean(err**2, axis=1))
    assert np.allclose(m.flatten(1).numpy(), expected[:, None])
    assert (m < 1).all() and (m > 0).all()
    exact = draw_conditioning(z0[:4], replace(mixture, clean=1.0), torch.Generator().manual_seed(2))[1]
    assert exact.eq(1).all()  # an exact y is fully trusted
    halves = draw_conditioning(z0, replace(mixture, confidence=0.5), torch.Generator().manual_seed(3))[1]
    share = halves.flatten(1)[:, 0].eq(1).float().mean()
    assert 0.25 < share < 0.75  # about half keep M = 1


def test_confidence_off_draws_what_binary_masks_always_drew() -> None:
    """With confidence off the mixture replays the random stream of the binary-mask recipe."""
    z0 = torch.randn(16, 16, 3, 4, 4)
    mixture = replace(ConditioningMixture(), confidence=0.0)
    y, m, kinds = draw_conditioning(z0, mixture, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    picks = torch.multinomial(mixture.probabilities(), 16, replacement=True, generator=generator)
    assert kinds == [KINDS[i] for i in picks.tolist()]
    for i, kind in enumerate(kinds):  # the draws the mixture made before confidence masks existed
        if kind == "degraded":
            assert torch.equal(y[i : i + 1], degrade(z0[i : i + 1], mixture, generator)) and m[i].eq(1).all()
        elif kind == "blocks":
            assert torch.equal(m[i, 0], _random_boxes((3, 4, 4), generator))


def test_degradations_change_y_and_are_reproducible() -> None:
    z0 = torch.randn(1, 16, 7, 8, 8)
    mixture = replace(ConditioningMixture(), clean=0.0)
    draws = [degrade(z0, mixture, torch.Generator().manual_seed(s)) for s in range(8)]
    assert all(not torch.equal(d, z0) for d in draws)
    assert torch.equal(draws[3], degrade(z0, mixture, torch.Generator().manual_seed(3)))
    exact = degrade(z0, replace(mixture, clean=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(exact, z0)


def test_mixture_frequencies_follow_the_weights() -> None:
    z0 = torch.zeros(400, 1, 1, 2, 2)
    _, _, kinds = draw_conditioning(z0, ConditioningMixture(), torch.Generator().manual_seed(1))
    share = kinds.count("degraded") / len(kinds)
    assert abs(share - 0.6) < 0.08
    with pytest.raises(ValueError, match="non-negative"):
        ConditioningMixture(first=-1.0).probabilities()


# ---------------------------------------------------------------------------- the pretraining script


def test_clip_batches_are_cropped_windows_in_range() -> None:
    clip = torch.randint(0, 256, (12, 3, 20, 30), dtype=torch.uint8)
    batch = random_clip_batch([clip], 3, 5, (8, 16), torch.Generator().manual_seed(0))
    assert batch.shape == (3, 3, 5, 8, 16) and batch.min() >= -1 and batch.max() <= 1


def test_latent_statistics_match_numpy() -> None:
    windows = [torch.randn(16, 2, 3, 4) * 3 + 1, torch.randn(16, 1, 3, 4)]
    mean, std = latent_statistics(windows)
    flat = torch.cat([w.flatten(1) for w in windows], 1).double().numpy()
    assert mean == pytest.approx(flat.mean(1).round(6).tolist(), abs=1e-6)
    assert std == pytest.approx(flat.std(1, ddof=1).round(6).tolist(), abs=1e-6)


class _Interrupt(Exception):
    pass


def _run(tmp: Path, fail_at: int | None = None) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    target = torch.randn(64, 1)
    calls = {"n": 0}

    def loss_fn(generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        if fail_at is not None and calls["n"] > fail_at:
            raise _Interrupt
        idx = torch.randint(64, (8,), generator=generator)
        x = torch.randn(8, 4) + idx[:, None].float() / 64  # the global RNG is part of the state too
        loss = (model(x) - target[idx]).square().mean()
        return loss, {"loss": float(loss.detach())}

    config = PretrainConfig(checkpoint_every=3, warmup=2)
    log, segments = train_loop("test", model, loss_fn, steps=9, lr=1e-2, config=config, checkpoint=tmp / "ckpt")
    assert segments == [[0, 9]]
    return model, log


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path: Path) -> None:
    straight, straight_log = _run(tmp_path / "a")
    with pytest.raises(_Interrupt):
        _run(tmp_path / "b", fail_at=7)  # stops after the step-6 checkpoint
    resumed, resumed_log = _run(tmp_path / "b")
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    assert straight_log == resumed_log and [row["step"] for row in straight_log] == [3, 6, 9]

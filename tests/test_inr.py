"""Tests for the HiNeRV-like latent INR (divinr.models.inr)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from divinr.errors import PresetError
from divinr.models.inr import (
    INR_HEADS,
    INR_PRESETS,
    REFERENCE_LATENT_FRAMES,
    INRConfig,
    INROutput,
    LatentINR,
    build_inr,
    count_parameters,
    inr_config,
    lerp_grid,
)

TINY = INRConfig(
    channels=16, stage_channels=(16, 12, 8), strides=(2, 2, 2), blocks=(1, 1, 1),
    grid_frames=6, grid_channels=8, local_grid_frames=3, local_grid_channels=4,
)


def _meta_count(config: INRConfig, size: tuple[int, int]) -> int:
    with torch.device("meta"):
        return count_parameters(LatentINR(config, size))


@pytest.mark.parametrize("size", [(8, 8), (9, 16)])
@pytest.mark.parametrize("preset", sorted(INR_PRESETS))
def test_latent_output_shapes_and_initial_ranges(preset: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    inr = build_inr(preset, size)
    with torch.no_grad():
        out = inr(torch.tensor([0.0, 0.37, 1.0]))
    assert isinstance(out, INROutput)
    assert out.y.shape == (3, 16, *size)
    assert out.m.shape == (3, 4, *size)
    assert torch.isfinite(out.y).all()
    assert ((out.m >= 0) & (out.m <= 1)).all()
    # Starts near the normalised latent mean and an undecided mask.
    assert out.y.abs().mean() < 0.3
    assert (out.m - 0.5).abs().max() < 0.15


@pytest.mark.parametrize("size", [(32, 48), (30, 50)])
def test_rgb_head_outputs_pixels(size: tuple[int, int]) -> None:
    inr = build_inr(dataclasses.replace(TINY, head="rgb"), size)
    with torch.no_grad():
        out = inr(torch.tensor([0.1, 0.9]))
    assert out.m is None
    assert out.y.shape == (2, 3, *size)
    assert ((out.y >= 0) & (out.y <= 1)).all()
    assert (out.y - 0.5).abs().max() < 0.15


def test_heads_registry_matches_config_choices() -> None:
    assert set(INR_HEADS) == {"latent", "rgb"}
    with pytest.raises(PresetError, match="unknown INR head"):
        dataclasses.replace(TINY, head="depth")


def test_preset_parameter_counts_span_paper_range() -> None:
    configs = [inr_config(name, num_latent_frames=REFERENCE_LATENT_FRAMES) for name in INR_PRESETS]
    counts = [_meta_count(config, (72, 128)) for config in configs]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert 50_000 <= counts[0] <= 150_000
    assert 2_000_000 <= counts[-1] <= 3_000_000
    assert len(counts) >= 5


def test_parameter_count_matches_architecture_formula() -> None:
    """Independent count from the documented architecture at a non-multiple output size."""
    c = TINY
    h0, w0 = math.ceil(9 / 8), math.ceil(16 / 8)
    level_frames = sum(max(2, math.ceil(c.grid_frames / 2**level)) for level in range(c.grid_levels))
    grid = level_frames * c.grid_channels * h0 * w0
    stem = 9 * c.grid_channels * c.channels + c.channels
    stages = 0
    widths = (c.channels, *c.stage_channels)
    for cin, cout, s, nb in zip(widths, widths[1:], c.strides, c.blocks):
        local = c.local_grid_frames * c.local_grid_channels * s * s + c.local_grid_channels * cout + cout
        block = 9 * cout + cout + 2 * cout + 2 * c.expansion * cout * cout + c.expansion * cout + cout
        stages += cin * cout + cout + local + nb * block
    head = (widths[-1] + 1) * (c.out_channels + c.mask_channels)
    assert count_parameters(LatentINR(c, (9, 16))) == grid + stem + stages + head


def test_inr_config_scales_grids_with_sequence_length() -> None:
    base = INR_PRESETS["m"]
    assert inr_config("m") == base
    assert inr_config("m", num_latent_frames=REFERENCE_LATENT_FRAMES) == base
    double = inr_config("m", num_latent_frames=2 * REFERENCE_LATENT_FRAMES)
    assert double.grid_frames == 2 * base.grid_frames
    assert double.local_grid_frames == 2 * base.local_grid_frames
    short = inr_config("m", num_latent_frames=7)
    assert short.grid_frames == max(2, round(base.grid_frames * 7 / 150))
    assert short.local_grid_frames == 2
    assert inr_config("m", num_latent_frames=7, grid_frames=5).grid_frames == 5


def test_lerp_grid_matches_numpy_interp() -> None:
    torch.manual_seed(0)
    grid = torch.randn(5, 3, 2)
    f = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.77, 0.999, 1.0])
    got = lerp_grid(grid, f).numpy()
    knots = np.linspace(0.0, 1.0, 5)
    flat = grid.reshape(5, -1).numpy()
    want = np.stack([np.interp(f.numpy(), knots, flat[:, k]) for k in range(flat.shape[1])], axis=1)
    np.testing.assert_allclose(got.reshape(len(f), -1), want, rtol=1e-5, atol=1e-6)


def test_output_is_continuous_in_time_and_varies() -> None:
    torch.manual_seed(0)
    inr = build_inr(TINY, (8, 8))
    with torch.no_grad():
        for p in inr.parameters():  # leave the near-constant head init behind
            p.add_(0.1 * torch.randn_like(p))
        near = inr(torch.tensor([0.4, 0.4 + 1e-4]))
        far = inr(torch.tensor([0.2, 0.8]))
    near_gap = (near.y[0] - near.y[1]).abs().max()
    far_gap = (far.y[0] - far.y[1]).abs().max()
    assert far_gap > 1e-2
    assert near_gap < 1e-2 * far_gap


def test_batch_items_are_independent() -> None:
    torch.manual_seed(0)
    inr = build_inr(TINY, (9, 16))
    f = torch.tensor([0.0, 0.3, 0.95])
    with torch.no_grad():
        batch = inr(f)
        single = [inr(f[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(batch.y, torch.cat([s.y for s in single]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch.m, torch.cat([s.m for s in single]), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    inr = build_inr(TINY, (9, 16))
    out = inr(torch.linspace(0.0, 1.0, 7))
    (out.y.square().mean() + out.m.mean()).backward()
    for name, parameter in inr.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_config_dict_round_trip_rebuilds_identical_model() -> None:
    config = inr_config("s", num_latent_frames=40)
    values = config.to_dict()
    for value in values.values():
        plain_tuple = isinstance(value, tuple) and all(isinstance(v, int) for v in value)
        assert isinstance(value, (int, str)) or plain_tuple
    restored = INRConfig.from_dict(json.loads(json.dumps(values)))
    assert restored == config
    torch.manual_seed(0)
    first = build_inr(config, (9, 16))
    second = build_inr(restored, (9, 16))
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    assert shapes == {k: v.shape for k, v in second.state_dict().items()}
    second.load_state_dict(first.state_dict())
    f = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        a, b = first(f), second(f)
    assert torch.equal(a.y, b.y) and torch.equal(a.m, b.m)


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    values = TINY.to_dict()
    with pytest.raises(PresetError, match="unknown INR config fields"):
        INRConfig.from_dict({**values, "width": 3})
    del values["strides"]
    with pytest.raises(PresetError, match="incomplete INR config"):
        INRConfig.from_dict(values)


def test_decoder_parameters_are_exactly_conv_and_linear_weights() -> None:
    inr = build_inr(TINY, (8, 8))
    decoder = dict(inr.decoder_parameters())
    # Independent selection: every matrix/kernel-shaped parameter that is not a feature grid.
    expected = {n for n, p in inr.named_parameters() if p.dim() >= 2 and ".levels." not in n}
    assert set(decoder) == expected
    params = dict(inr.named_parameters())
    assert all(decoder[name] is params[name] for name in decoder)
    # stem + per stage (projection, local projection, 3 per block) + 2 head convs
    assert len(decoder) == 1 + sum(2 + 3 * nb for nb in TINY.blocks) + 2
    assert not any(name.endswith("bias") or "norm" in name for name in decoder)


def test_overfits_random_target() -> None:
    torch.manual_seed(0)
    inr = build_inr("s", (8, 8))
    f = torch.tensor([0.0, 0.5, 1.0])
    target_y = torch.randn(3, 16, 8, 8)
    target_m = torch.rand(3, 4, 8, 8)
    optimizer = torch.optim.Adam(inr.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        out = inr(f)
        loss = nn.functional.mse_loss(out.y, target_y) + nn.functional.mse_loss(out.m, target_m)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_unknown_preset_error() -> None:
    with pytest.raises(PresetError, match="unknown INR preset 'huge'; choose one of"):
        inr_config("huge")
    with pytest.raises(PresetError, match="unknown INR preset"):
        build_inr("huge", (8, 8))
    with pytest.raises(PresetError, match="unknown INR config fields"):
        inr_config("s", chanels=3)


@pytest.mark.parametrize(
    "size", [(8, 4), (4, 16), (0, 8), (8, -1), (8,), (8.0, 8)],
)
def test_impossible_output_sizes(size: tuple[int, int]) -> None:
    with pytest.raises(PresetError, match="INR"):
        build_inr(TINY, size)


@pytest.mark.parametrize(
    "overrides",
    [
        {"strides": (2, 2)},
        {"strides": (2, 0, 2)},
        {"channels": 0},
        {"grid_frames": 1},
        {"blocks": (1, -1, 1)},
        {"stage_channels": [16, 12, 8]},
        {"expansion": 2.0},
    ],
)
def test_invalid_config_values(overrides: dict) -> None:
    with pytest.raises(PresetError) as info:
        dataclasses.replace(TINY, **overrides)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
def test_largest_preset_runs_at_full_latent_size_on_gpu() -> None:
    inr = build_inr("xl", (72, 128)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = inr(torch.linspace(0.0, 1.0, 7, device="cuda"))
        loss = out.y.float().square().mean() + out.m.float().mean()
    loss.backward()
    assert out.y.shape == (7, 16, 72, 128) and out.m.shape == (7, 4, 72, 128)
    assert all(p.grad is not None for p in inr.parameters())


def test_every_parameter_gets_a_gradient_under_quant_noise() -> None:
    """Quant-Noise parametrises every tensor; none may be cut off from the loss (grid levels included)."""
    from divinr.compression.quant import enable_quant_noise

    inr = build_inr("xxs", (8, 8))
    handle = enable_quant_noise(
        [(m, n) for m in inr.modules() for n, _ in m.named_parameters(recurse=False)], bits=6, rho=0.9
    )
    out = inr(torch.tensor([0.1, 0.6]))
    (out.y.square().mean() + out.m.mean()).backward()
    originals = {name: p for name, p in inr.named_parameters()}
    missing = [name for name, p in originals.items() if p.grad is None or not torch.any(p.grad != 0)]
    handle.remove()
    assert not missing, missing

"""Tests for adaptive magnitude pruning and persistent masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from divinr.compression.prune import PruningMasks, adaptive_prune_masks, apply_masks
from divinr.compression.quant import enable_quant_noise
from divinr.errors import PresetError


def _numpy_threshold(arrays: list[np.ndarray], fraction: float) -> tuple[float, int]:
    """Global threshold on |w|/sqrt(P), computed independently with numpy."""
    scores = np.concatenate([np.abs(a.astype(np.float64)).ravel() / np.sqrt(a.size) for a in arrays])
    k = round(fraction * scores.size)
    return float(np.sort(scores)[k - 1]), k


@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.01])
def test_exact_count_and_global_threshold(fraction: float) -> None:
    gen = torch.Generator().manual_seed(1)
    named = [
        ("a", torch.randn(64, 32, generator=gen)),
        ("b", torch.randn(7, generator=gen)),
        ("c", torch.randn(300, 3, 3, generator=gen)),
    ]
    masks = adaptive_prune_masks(named, fraction)
    threshold, k = _numpy_threshold([t.numpy() for _, t in named], fraction)
    assert sum(int((~m).sum()) for m in masks.values()) == k
    for name, t in named:
        score = t.abs().double().numpy() / np.sqrt(t.numel())
        m = masks[name].numpy()
        assert m.shape == tuple(t.shape) and m.dtype == bool
        assert np.all(score[~m] <= threshold) and np.all(score[m] >= threshold)


def test_exact_count_with_ties_is_deterministic() -> None:
    named = [("x", torch.ones(40)), ("y", torch.ones(40) * 2.0), ("z", torch.zeros(13))]  # scores tie within tensors
    masks = adaptive_prune_masks(named, 0.15)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.15 * 93)  # 14: all 13 zeros + 1 tie
    assert int((~masks["z"]).sum()) == 13
    assert int((~masks["x"]).sum()) == 1 and not masks["x"][0]  # first of the tied entries
    again = adaptive_prune_masks(named, 0.15)
    assert all(torch.equal(masks[n], again[n]) for n in masks)


def test_narrow_layer_protection() -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(100, generator=gen) + 0.5
    big = torch.cat([small] * 100)  # same magnitude distribution, 100x more parameters
    masks = adaptive_prune_masks([("small", small), ("big", big)], 0.15)
    frac_small = (~masks["small"]).float().mean().item()
    frac_big = (~masks["big"]).float().mean().item()
    assert frac_small < frac_big
    threshold, _ = _numpy_threshold([small.numpy(), big.numpy()], 0.15)
    expected_small = np.mean(small.double().numpy() / np.sqrt(100) <= threshold)
    assert frac_small == pytest.approx(expected_small)


def test_invalid_fraction() -> None:
    with pytest.raises(PresetError):
        adaptive_prune_masks([("a", torch.ones(3))], 1.5)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    x, y = torch.randn(32, 16), torch.randn(32, 8)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_masks_survive_adamw_with_momentum_and_weight_decay() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _train(model, optimizer, 5)  # dense phase: Adam moments are non-zero everywhere
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    masks = PruningMasks.prune(weights, 0.15)
    total = sum(p.numel() for _, p in weights)
    assert masks.sparsity() == round(0.15 * total) / total
    handle = masks.attach(optimizer)
    _train(model, optimizer, 10)
    for name, p in weights:
        keep = masks.state_dict()[name]
        assert torch.all(p[~keep] == 0.0)
        assert torch.all(p.grad[~keep] == 0.0)
    assert masks.sparsity() == sum(int((p == 0).sum()) for _, p in weights) / total

    handle.remove()
    _train(model, optimizer, 3)  # without hooks, Adam's stale moments move pruned weights
    assert any(torch.any(p[~masks.state_dict()[n]] != 0.0) for n, p in weights)


def test_masks_compose_with_quant_noise() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    masks = PruningMasks.prune(weights, 0.3)
    handle = masks.attach(optimizer)
    qn = enable_quant_noise([(model[0], "weight"), (model[2], "weight")], bits=6, rho=0.9)
    _train(model, optimizer, 5)
    model.eval()
    for (name, _), module in zip(weights, (model[0], model[2])):
        keep = masks.state_dict()[name]
        assert torch.all(module.weight[~keep] == 0.0)  # quantised view keeps exact zeros
    qn.remove()
    handle.remove()


def test_state_dict_round_trip_and_mismatch() -> None:
    model = _model()
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    masks = PruningMasks.prune(weights, 0.15)
    saved = masks.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded_state = torch.load(buffer, weights_only=True)

    fresh = _model()  # dense weights again
    fresh_weights = [(n, p) for n, p in fresh.named_parameters() if n.endswith("weight")]
    restored = PruningMasks(fresh_weights)  # keep-all until the checkpoint's masks arrive
    assert restored.sparsity() == 0.0
    restored.load_state_dict(loaded_state)
    for name, p in fresh_weights:
        assert torch.equal(restored.state_dict()[name], saved[name])
        assert torch.all(p[~saved[name]] == 0.0)
    assert restored.sparsity() == masks.sparsity()

    with pytest.raises(PresetError):
        restored.load_state_dict({"0.weight": saved["0.weight"]})
    with pytest.raises(PresetError):
        restored.load_state_dict({n: m.T for n, m in saved.items()})


def test_apply_masks_function() -> None:
    t = torch.arange(1.0, 7.0)
    apply_masks([("t", t)], {"t": torch.tensor([True, False, True, False, True, False])})
    assert t.tolist() == [1.0, 0.0, 3.0, 0.0, 5.0, 0.0]

"""Tests for the shared quantiser and Quant-Noise training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from divinr.compression.quant import (
    QuantNoiseParametrization,
    dequantize,
    enable_quant_noise,
    fake_quantize,
    quant_noise,
    quant_params,
    quantize,
)
from divinr.errors import PresetError


def _numpy_reference(w: np.ndarray, bits: int) -> np.ndarray:
    """Independent fake quantisation in float64 numpy with the same range convention."""
    levels = 2**bits - 1
    lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
    scale = (hi - lo) / levels
    zero_point = np.round(-lo / scale)
    codes = np.clip(np.round(w / scale) + zero_point, 0, levels)
    return (codes - zero_point) * scale


@pytest.mark.parametrize("bits", [2, 6, 8])
@pytest.mark.parametrize("offset", [-3.0, 0.0, 5.0])
def test_round_trip_error_and_code_range(bits: int, offset: float) -> None:
    w = torch.randn(4096, generator=torch.Generator().manual_seed(bits)) + offset
    params = quant_params(w, bits)
    codes = quantize(w, params)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert 0 <= params.zero_point <= 2**bits - 1 and params.scale > 0
    assert np.float32(params.scale) == params.scale
    err = (dequantize(codes, params) - w).abs().max().item()
    assert err <= params.scale * (0.5 + 1e-4)
    ref = _numpy_reference(w.double().numpy(), bits)
    assert np.abs(dequantize(codes, params).double().numpy() - ref).max() <= params.scale * 1e-3 + 1e-6


def test_zero_is_exact_and_range_includes_zero() -> None:
    w = torch.tensor([0.3, 0.7, 0.0, 1.3])  # all >= 0: range must still include 0
    params = quant_params(w, 6)
    out = dequantize(quantize(w, params), params)
    assert out[2].item() == 0.0
    w = torch.randn(1000) * 0.1
    w[::7] = 0.0
    fq = fake_quantize(w)
    assert torch.all(fq[::7] == 0.0)


@pytest.mark.parametrize("w", [torch.zeros(10), torch.full((3, 3), 2.5), torch.full((5,), -1e-3), torch.zeros(0)])
def test_degenerate_tensors(w: torch.Tensor) -> None:
    params = quant_params(w, 6)
    assert params.scale > 0
    out = dequantize(quantize(w, params), params)
    assert out.shape == w.shape
    if w.numel():
        assert (out - w).abs().max().item() <= params.scale / 2 + 1e-7


def test_fake_quantize_matches_codec_and_passes_gradient_straight_through() -> None:
    w = torch.randn(50, requires_grad=True)
    fq = fake_quantize(w, 6)
    params = quant_params(w, 6)
    assert torch.equal(fq.detach(), dequantize(quantize(w, params), params))  # bit-exact, no STE rounding
    upstream = torch.randn(50)
    (fq * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


@pytest.mark.parametrize("bits", [1, 2, 6, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_device_side_fake_quantize_is_bit_exact_with_the_bitstream_path(bits: int, dtype: torch.dtype) -> None:
    """The sync-free training quantiser must reproduce the host-side codec exactly, edge cases included."""
    gen = torch.Generator().manual_seed(bits)
    cases = [
        torch.randn(300, generator=gen) * 0.05,
        torch.rand(64, generator=gen) + 0.5,  # all positive: zero point 0
        -torch.rand(64, generator=gen) * 1e-30,  # all negative, tiny: scale near float32 tiny
        torch.full((7,), 3.0),
        torch.zeros(9),
        torch.tensor([-1.0, 0.0, 1.0, 0.5 / 31]),  # values on rounding boundaries
        torch.tensor([-1e-37, 0.0, -3e-38]),  # range / levels below float32 tiny: the clamp
        torch.tensor([1e-44, 0.0]),  # a denormal range
    ]
    for w in cases:
        w = w.to(dtype)
        params = quant_params(w, bits)
        expected = dequantize(quantize(w, params), params).to(dtype)
        got = fake_quantize(w, bits)
        assert got.dtype == dtype and torch.equal(got, expected), (w[:4], bits)


@pytest.mark.gpu
def test_fake_quantize_never_synchronises_with_the_host() -> None:
    w = torch.randn(4096, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = quant_noise(w, 6, 0.9)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    params = quant_params(w, 6)
    assert torch.equal(fake_quantize(w, 6).cpu(), dequantize(quantize(w.cpu(), params), params))


def test_quant_noise_rho_extremes_and_fraction() -> None:
    w = torch.randn(20000, requires_grad=True)
    assert torch.equal(quant_noise(w, 6, 0.0), w)
    assert torch.equal(quant_noise(w, 6, 1.0), fake_quantize(w, 6))
    noisy = quant_noise(w, 6, 0.3, generator=torch.Generator().manual_seed(0))
    quantised = fake_quantize(w, 6)
    differs = w != quantised  # only entries whose quantised value differs can reveal the mask
    frac = (noisy[differs] == quantised[differs]).float().mean().item()
    assert abs(frac - 0.3) < 0.03
    assert torch.all((noisy == w) | (noisy == quantised))
    noisy.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_quant_noise_generator_reproducible() -> None:
    w = torch.randn(500)
    a = quant_noise(w, 4, 0.5, generator=torch.Generator().manual_seed(3))
    b = quant_noise(w, 4, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_invalid_settings_raise_preset_error() -> None:
    with pytest.raises(PresetError):
        quant_params(torch.ones(3), bits=0)
    with pytest.raises(PresetError):
        quant_noise(torch.ones(3), 6, 1.5)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_enable_quant_noise_train_eval_remove_and_state_dict() -> None:
    net = _net()
    x = torch.randn(5, 8)
    weight = net[0].weight
    keys_before = sorted(net.state_dict())
    with torch.no_grad():
        weight[0, :4] = 0.0  # e.g. pruned
    handle = enable_quant_noise([(net[0], "weight"), (net[2], "weight")], bits=6, rho=0.9)
    assert isinstance(net[0].parametrizations.weight[0], QuantNoiseParametrization)
    assert sorted(net.state_dict()) == keys_before  # plain keys while enabled
    assert net[0].parametrizations.weight.original is weight  # optimizer/pruning references stay valid

    net.train()
    assert torch.all(net[0].weight[0, :4] == 0.0)
    out = net(x)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.shape == weight.shape

    net.eval()  # eval: exact quantisation, what the decoder reconstructs
    assert torch.equal(net[0].weight, fake_quantize(weight.detach(), 6))
    assert torch.equal(net[2].weight, fake_quantize(net[2].parametrizations.weight.original.detach(), 6))

    state = net.state_dict()
    other = _net()
    other_handle = enable_quant_noise([(other[0], "weight"), (other[2], "weight")], bits=6, rho=0.9)
    other.load_state_dict(state)  # strict load with plain keys into a parametrized model
    other_handle.remove()
    assert torch.equal(other[0].weight, weight.detach())

    handle.remove()
    assert net[0].weight is weight and isinstance(net[0].weight, nn.Parameter)
    assert sorted(net.state_dict()) == keys_before
    _net().load_state_dict(net.state_dict())


def test_enable_quant_noise_rejects_double_registration() -> None:
    net = _net()
    handle = enable_quant_noise([(net[0], "weight")])
    with pytest.raises(ValueError):
        enable_quant_noise([(net[2], "weight"), (net[0], "weight")])
    assert not hasattr(net[2], "parametrizations")  # partial registration rolled back
    handle.remove()

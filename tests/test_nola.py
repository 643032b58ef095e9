"""NOLA adapters on Wan: layer selection and counts at full size (meta), numerics on a tiny model."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from torch import nn

from divinr.errors import BitstreamError, PresetError
from divinr.models.adapters import load_adapter_state_dict
from divinr.models.nola import (
    BasisBank,
    NOLAConfig,
    NOLAConv3d,
    NOLALinear,
    basis_seed,
    count_nola_coefficients,
    inject_nola,
    merge_nola,
    nola_basis_bytes,
    nola_layers,
    nola_parameters,
    nola_state_dict,
    unmerge_nola,
)

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32,
)
SMALL_NOLA = NOLAConfig(rank=4, num_bases=8, seed=3)
PATCH_SLICE = {"patch_embedding": {"in_channel_slice": (16, 36)}}


def full_wan_on_meta() -> WanTransformer3DModel:
    with torch.device("meta"):
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=36,
            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )


def tiny_wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**TINY).eval()


def tiny_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 36, 2, 8, 8, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 4, 32, generator=g),
    }


def run(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, return_dict=False)[0]


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 7) -> None:
    """Give every coefficient a non-trivial value so the update is non-zero."""
    g = torch.Generator().manual_seed(seed)
    for p in nola_parameters(model):
        p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---- full-size Wan2.1 1.3B on the meta device --------------------------------------------------

def test_full_wan_layers_coefficients_and_basis_memory() -> None:
    model = full_wan_on_meta()
    names = inject_nola(model, NOLAConfig())
    leaves = ("attn1.to_out.0", "ffn.net.0.proj", "ffn.net.2")
    expected = [f"blocks.{n}.{leaf}" for n in range(30) for leaf in leaves]
    assert names == expected + ["proj_out"]
    assert count_nola_coefficients(model) == 91_000
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 182 and all(n.endswith(("nola_alpha", "nola_beta")) for n in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 91_000

    # Distinct basis shapes: A (64,1536) for to_out/ffn.0/proj_out, A (64,8960), B (1536,64),
    # B (8960,64), B (64,64); b = 500 each.
    floats = 500 * (64 * 1536 + 64 * 8960 + 1536 * 64 + 8960 * 64 + 64 * 64)
    bf16_bytes = nola_basis_bytes(model, dtype=torch.bfloat16)
    assert bf16_bytes == 2 * floats
    assert bf16_bytes <= 1.5e9
    assert abs(bf16_bytes / 2 - 674e6) / 674e6 < 0.01  # REFERENCE: ~674M floats

    # Meta layers never allocate bases, even when the update is assembled.
    layer = nola_layers(model)["blocks.0.ffn.net.0.proj"]
    assert layer.delta_weight().shape == (8960, 1536)
    merge_nola(model)
    assert nola_basis_bytes(layer.bank) == 0


def test_full_wan_with_patch_embedding_slice() -> None:
    model = full_wan_on_meta()
    names = inject_nola(model, NOLAConfig(), extra_targets=PATCH_SLICE)
    assert len(names) == 92 and names[-1] == "proj_out" and "patch_embedding" in names
    assert count_nola_coefficients(model) == 92_000
    patch = nola_layers(model)["patch_embedding"]
    assert isinstance(patch, NOLAConv3d)
    assert patch.a_shape == (64, 20 * 1 * 2 * 2) and patch.b_shape == (1536, 64)


# ---- tiny Wan: numerics --------------------------------------------------------------------------

def test_injection_keeps_output_and_trains_only_beta_at_first() -> None:
    model, inputs = tiny_wan(), tiny_inputs()
    reference = run(model, inputs)
    inject_nola(model, SMALL_NOLA, extra_targets=PATCH_SLICE)
    out = run(model, inputs)
    assert torch.equal(out, reference)

    out.square().mean().backward()
    for name, layer in nola_layers(model).items():
        assert layer.nola_beta.grad is not None and layer.nola_beta.grad.abs().max() > 0, name
        # B = 0 at the start, so alpha sees no gradient until beta moves (LoRA-style start).
        assert torch.count_nonzero(layer.nola_alpha.grad) == 0, name
        assert layer.nola_alpha.abs().min() > 0, name
    for name, p in model.named_parameters():
        if not name.endswith(("nola_alpha", "nola_beta")):
            assert not p.requires_grad and p.grad is None, name


def test_merge_matches_unmerged_and_unmerge_restores() -> None:
    model, inputs = tiny_wan(), tiny_inputs()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_out = run(model, inputs)
    inject_nola(model, SMALL_NOLA, extra_targets=PATCH_SLICE)
    perturb(model)
    with torch.no_grad():
        unmerged = run(model, inputs)
        assert (unmerged - base_out).abs().max() > 1e-3  # the update is not negligible
        merge_nola(model)
        assert all(layer.merged for layer in nola_layers(model).values())
        merged = run(model, inputs)
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)

        # A merged layer runs the base alone: changing coefficients no longer matters.
        layer = nola_layers(model)["proj_out"]
        saved = layer.nola_beta.clone()
        layer.nola_beta.add_(1.0)
        assert torch.equal(run(model, inputs), merged)
        layer.nola_beta.copy_(saved)

        unmerge_nola(model)
    restored = {n.replace(".base.", "."): p for n, p in model.named_parameters() if "nola_" not in n}
    assert restored.keys() == originals.keys()
    for name, p in restored.items():
        torch.testing.assert_close(p, originals[name], atol=1e-6, rtol=0)


def test_delta_weight_matches_explicit_sum_over_bases() -> None:
    config = NOLAConfig(rank=3, num_bases=5, basis_variance=0.25, scaling=0.7, seed=11)
    layer = NOLALinear(nn.Linear(6, 4), BasisBank.from_config(config), rank=3, scaling=0.7)
    with torch.no_grad():
        layer.nola_beta.copy_(torch.linspace(-1, 1, 5))
    alpha = layer.nola_alpha.detach().double().numpy()
    beta = layer.nola_beta.detach().double().numpy()

    def drawn(shape: tuple[int, int], i: int) -> np.ndarray:
        g = torch.Generator().manual_seed(basis_seed(11, shape, i))
        return (torch.randn(shape, generator=g, dtype=torch.float32) * 0.5).double().numpy()

    a = np.zeros((3, 6))
    b = np.zeros((4, 3))
    for i in range(5):
        a += alpha[i] * drawn((3, 6), i)
        b += beta[i] * drawn((4, 3), i)
    expected = 0.7 * b @ a
    np.testing.assert_allclose(layer.delta_weight().detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)

    # And the forward applies exactly that update.
    x = torch.randn(2, 6)
    manual = x.double() @ (layer.base.weight.double() + torch.from_numpy(expected)).T + layer.base.bias.double()
    torch.testing.assert_close(layer(x).double(), manual, atol=1e-5, rtol=1e-5)


def test_bases_have_variance_s_and_are_shared_by_same_shaped_layers() -> None:
    bank = BasisBank(num_bases=100, variance=0.25, seed=0)
    values = bank.get((32, 32), device="cpu", dtype=torch.float32)
    assert abs(values.mean().item()) < 0.01
    assert abs(values.var().item() - 0.25) < 0.01  # s is the variance: std 0.5

    model = tiny_wan()
    inject_nola(model, SMALL_NOLA)
    layers = nola_layers(model)
    # to_out (32->32), ffn.0 (32->64) and proj_out (32->64) share A of shape (4, 32);
    # to_out and ffn.2 (64->32) share B of shape (32, 4).
    a_to_out, b_to_out = layers["blocks.0.attn1.to_out.0"].bases()
    assert layers["blocks.1.attn1.to_out.0"].bases()[0] is a_to_out
    assert layers["blocks.0.ffn.net.0.proj"].bases()[0] is a_to_out
    assert layers["proj_out"].bases()[0] is a_to_out
    assert layers["blocks.1.ffn.net.2"].bases()[1] is b_to_out
    assert layers["blocks.0.ffn.net.2"].bases()[0] is not a_to_out
    # Bases are a cache: not parameters, not buffers, not in the state dict.
    assert not any("bank" in k or "bases" in k for k in model.state_dict())
    # Held memory equals the model's requirement: shapes (4,32), (4,64), (32,4), (64,4).
    assert nola_basis_bytes(layers["proj_out"].bank) == 8 * 4 * (32 + 64 + 32 + 64) * 4
    assert nola_basis_bytes(model) == nola_basis_bytes(layers["proj_out"].bank)


BANK_DIGEST = """
import hashlib, torch
from divinr.models.nola import BasisBank
bank = BasisBank(num_bases=6, variance=0.25, seed=5)
data = b"".join(bank.get(s, device="cpu", dtype=torch.float32).numpy().tobytes() for s in ((4, 40), (24, 4)))
print(hashlib.sha256(data).hexdigest())
"""


def test_bases_identical_across_banks_and_processes() -> None:
    first = BasisBank(num_bases=6, variance=0.25, seed=5).get((4, 40), device="cpu", dtype=torch.float32)
    second = BasisBank(num_bases=6, variance=0.25, seed=5).get((4, 40), device="cpu", dtype=torch.float32)
    other = BasisBank(num_bases=6, variance=0.25, seed=6).get((4, 40), device="cpu", dtype=torch.float32)
    assert torch.equal(first, second) and not torch.equal(first, other)
    child = subprocess.run(
        [sys.executable, "-c", BANK_DIGEST], capture_output=True, text=True, check=True, timeout=120
    )
    second_shape = BasisBank(num_bases=6, variance=0.25, seed=5).get((24, 4), device="cpu", dtype=torch.float32)
    here = hashlib.sha256(first.numpy().tobytes() + second_shape.numpy().tobytes()).hexdigest()
    assert child.stdout.strip() == here


def test_state_dict_round_trip_and_strictness() -> None:
    inputs = tiny_inputs()
    source = tiny_wan()
    inject_nola(source, SMALL_NOLA, extra_targets=PATCH_SLICE)
    perturb(source, seed=1)
    target = tiny_wan()
    names = inject_nola(target, SMALL_NOLA, extra_targets=PATCH_SLICE)
    state = {k: v.clone() for k, v in nola_state_dict(source).items()}
    assert list(state) == [f"{n}.{c}" for n in names for c in ("nola_alpha", "nola_beta")]
    assert set(state) == {k for k, p in source.named_parameters() if p.requires_grad}
    assert sum(v.numel() for v in state.values()) == count_nola_coefficients(source) == (2 * 3 + 2) * 2 * 8

    with torch.no_grad():
        assert not torch.equal(run(target, inputs), run(source, inputs))
        load_adapter_state_dict(target, state)
        assert torch.equal(run(target, inputs), run(source, inputs))

    with pytest.raises(BitstreamError):
        load_adapter_state_dict(target, {k: v for k, v in state.items() if k != "proj_out.nola_beta"})
    with pytest.raises(BitstreamError):
        load_adapter_state_dict(target, {**state, "blocks.9.ffn.net.2.nola_alpha": torch.zeros(8)})
    with pytest.raises(BitstreamError):
        load_adapter_state_dict(target, {**state, "proj_out.nola_beta": torch.zeros(9)})
    merge_nola(target)
    with pytest.raises(PresetError):
        load_adapter_state_dict(target, state)


def test_patch_embedding_slice_changes_only_sliced_channels() -> None:
    model, inputs = tiny_wan(), tiny_inputs()
    original = model.patch_embedding.weight.detach().clone()
    inject_nola(model, SMALL_NOLA, extra_targets=PATCH_SLICE)
    perturb(model, seed=2)
    patch = nola_layers(model)["patch_embedding"]
    with torch.no_grad():
        unmerged = run(model, inputs)
        patch.merge()
        changed = patch.base.weight - original
        assert torch.count_nonzero(changed[:, :16]) == 0
        assert (changed[:, 16:].abs() > 0).float().mean() > 0.99
        torch.testing.assert_close(run(model, inputs), unmerged, atol=1e-5, rtol=0)


def test_conv3d_low_rank_forward_equals_conv_with_delta() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, kernel_size=(1, 2, 2), stride=(1, 2, 2), padding=(0, 1, 1))
    layer = NOLAConv3d(conv, BasisBank(4, 0.25, 0), rank=3, scaling=0.5, in_channel_slice=(2, 5))
    with torch.no_grad():
        layer.nola_beta.normal_()
    x = torch.randn(2, 6, 3, 6, 6)
    expected = nn.functional.conv3d(x, conv.weight + layer.delta_weight(), conv.bias, conv.stride, conv.padding)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_num_bases_zero_injects_nothing() -> None:
    model, inputs = tiny_wan(), tiny_inputs()
    reference = run(model, inputs)
    assert inject_nola(model, NOLAConfig(num_bases=0), extra_targets=PATCH_SLICE) == []
    assert nola_layers(model) == {} and count_nola_coefficients(model) == 0
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(run(model, inputs), reference)


def test_user_errors_are_preset_errors() -> None:
    with pytest.raises(PresetError):
        NOLAConfig(rank=0)
    with pytest.raises(PresetError):
        NOLAConfig(target_modules=("blocks.(",))
    with pytest.raises(PresetError):
        inject_nola(tiny_wan(), NOLAConfig(target_modules=("no_such_layer",)))
    with pytest.raises(PresetError):
        inject_nola(tiny_wan(), SMALL_NOLA, extra_targets={"missing": {}})
    with pytest.raises(PresetError):
        inject_nola(tiny_wan(), SMALL_NOLA, extra_targets={"patch_embedding": {"in_channel_slice": (16, 40)}})
    with pytest.raises(PresetError):
        inject_nola(tiny_wan(), SMALL_NOLA, extra_targets={"proj_out": {"in_channel_slice": (0, 4)}})
    model = tiny_wan()
    inject_nola(model, SMALL_NOLA)
    with pytest.raises(PresetError):
        inject_nola(model, SMALL_NOLA)

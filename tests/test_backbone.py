"""Tests of the frozen Wan2.1 backbone wrapper, on tiny random models and the meta device."""

from __future__ import annotations

import copy
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from divinr.errors import MissingWeightsError, PresetError, VideoFormatError
from divinr.models.backbone import (
    BACKBONE_PRESETS,
    MASK_CHANNELS,
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    Backbone,
    backbone_fingerprint,
    build_backbone_on_meta,
    cross_attention_enabled,
    load_backbone,
    model_input,
    set_cross_attention,
    widen_patch_embedding,
)

LATENT = (7, 8, 8)  # one 25-frame GoP of 64x64 frames


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(batch, 16, *LATENT, generator=g)
    y = torch.randn(batch, 16, *LATENT, generator=g)
    m = torch.rand(batch, MASK_CHANNELS, *LATENT, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    return z_t, y, m, t


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _wan_param_count(cfg: dict) -> int:
    """Parameters of a Wan2.1 DiT counted by hand from its config (independent of diffusers)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    pt = math.prod(cfg["patch_size"])
    ffn, out = cfg["ffn_dim"], cfg["out_channels"]
    linear = lambda i, o: i * o + o  # noqa: E731
    n = cfg["in_channels"] * d * pt + d  # patch embedding
    n += linear(cfg["freq_dim"], d) + linear(d, d) + linear(d, 6 * d)  # time embedding and projection
    n += linear(cfg["text_dim"], d) + linear(d, d)  # text projection
    attention = 4 * linear(d, d) + 2 * d  # q, k, v, out and q/k RMS norms
    norm2 = 2 * d if cfg["cross_attn_norm"] else 0
    block = 2 * attention + norm2 + linear(d, ffn) + linear(ffn, d) + 6 * d
    n += cfg["num_layers"] * block
    n += linear(d, out * pt) + 2 * d  # output projection and its modulation table
    if cfg["image_dim"] is not None:  # I2V-type: CLIP image projection, image key/value per block
        image, kv = cfg["image_dim"], cfg["added_kv_proj_dim"]
        n += 2 * image + linear(image, image) + linear(image, d) + 2 * d
        n += cfg["num_layers"] * (2 * linear(kv, d) + d)
    return n


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory: pytest.TempPathFactory) -> tuple[WanTransformer3DModel, Path]:
    """A tiny 16-input-channel (T2V-like) transformer and a diffusers folder holding it."""
    preset = BACKBONE_PRESETS["tiny"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer = WanTransformer3DModel(**{**preset.transformer_config, "in_channels": 16}).eval()
        vae = AutoencoderKLWan(**copy.deepcopy(preset.vae_config))
    folder = tmp_path_factory.mktemp("tiny16")
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    return transformer, folder


def test_tiny_is_bit_identical_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = load_backbone("tiny")
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)
    second = load_backbone("tiny")
    assert _state_dicts_equal(first.transformer, second.transformer)
    assert _state_dicts_equal(first.vae, second.vae)
    assert backbone_fingerprint(first) == backbone_fingerprint(second)


def test_fingerprint_is_identical_in_another_process(tiny: Backbone) -> None:
    code = (
        "from divinr.models.backbone import load_backbone, backbone_fingerprint;"
        "print(backbone_fingerprint(load_backbone('tiny')).hex())"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == backbone_fingerprint(tiny).hex()


def test_fingerprint_sees_weights_and_ignores_storage_dtype(tiny: Backbone) -> None:
    fingerprint = backbone_fingerprint(tiny)
    assert len(fingerprint) == 16
    assert backbone_fingerprint(load_backbone("tiny", dtype=torch.bfloat16)) == fingerprint
    changed = load_backbone("tiny")
    with torch.no_grad():
        changed.transformer.proj_out.bias[0] += 0.5
    assert backbone_fingerprint(changed) != fingerprint


def test_everything_frozen_and_in_eval_mode(tiny: Backbone) -> None:
    for module in (tiny.transformer, tiny.vae):
        assert all(not p.requires_grad for p in module.parameters())
        assert not any(m.training for m in module.modules())
    tiny.transformer.train()
    assert tiny.eval() is tiny
    assert not any(m.training for m in tiny.transformer.modules())
    assert tiny.transformer.config.in_channels == 36 and tiny.widened_channels is None
    assert tiny.nola_extra_targets() == {}
    assert not cross_attention_enabled(tiny.transformer)


def test_latent_statistics_are_the_diffusers_defaults(tiny: Backbone) -> None:
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(WAN21_LATENTS_MEAN) == defaults["latents_mean"].default
    assert list(WAN21_LATENTS_STD) == defaults["latents_std"].default
    for preset in BACKBONE_PRESETS.values():
        assert preset.vae_config["latents_mean"] == defaults["latents_mean"].default
        assert preset.vae_config["latents_std"] == defaults["latents_std"].default
    full_vae = BACKBONE_PRESETS["wan2.1-t2v-1.3b"].vae_config
    for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample"):
        assert full_vae[key] == defaults[key].default, key
    assert tiny.latents_mean.shape == tiny.latents_std.shape == (1, 16, 1, 1, 1)
    assert tiny.latent_channels == 16


def test_encode_matches_diffusers_posterior_mean_normalised(tiny: Backbone) -> None:
    frames = torch.rand(25, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = tiny.encode(frames)
        assert latents.shape == (16, *LATENT)
        assert torch.equal(latents, tiny.encode(frames))  # deterministic: no posterior sampling
        mu = tiny.vae.encode(frames.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mean
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(latents, ((mu - mean) / std)[0])


def test_decode_shape_range_and_unnormalisation(tiny: Backbone) -> None:
    latents = torch.randn(16, *LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        frames = tiny.decode(latents)
        raw = tiny.vae.decode(latents[None] * tiny.latents_std + tiny.latents_mean).sample
    assert frames.shape == (25, 3, 64, 64)
    assert frames.min() >= 0 and frames.max() <= 1
    torch.testing.assert_close(frames, ((raw[0].permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1))


def test_encode_rejects_frames_it_would_silently_crop(tiny: Backbone) -> None:
    with pytest.raises(VideoFormatError, match="1 \\+ 4k"):
        tiny.encode(torch.rand(24, 3, 64, 64))
    with pytest.raises(VideoFormatError):
        tiny.encode(torch.rand(25, 3, 60, 64))
    with pytest.raises(VideoFormatError):
        tiny.encode(torch.rand(25, 64, 64))


def test_model_input_layout_is_latents_mask_condition() -> None:
    z_t, y, m, _ = _inputs()
    x = model_input(z_t, y, m)
    assert x.shape == (2, 36, *LATENT)
    assert torch.equal(x[:, :16], z_t) and torch.equal(x[:, 16:20], m) and torch.equal(x[:, 20:], y)
    with pytest.raises(ValueError):
        model_input(z_t, y, m[:, :3])
    with pytest.raises(ValueError):
        model_input(z_t, y[:, :, :6], m)


def test_predict_shape_and_gradient_to_conditioning(tiny: Backbone) -> None:
    z_t, y, m, t = _inputs()
    y.requires_grad_(True)
    m.requires_grad_(True)
    out = tiny.predict(z_t, y, m, t)
    assert out.shape == z_t.shape and out.dtype == z_t.dtype
    out.square().mean().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert m.grad is not None and m.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.transformer.parameters())
    with pytest.raises(ValueError, match="patch size"):
        tiny.predict(z_t[..., :7], y[..., :7], m[..., :7], t)


def test_gradient_checkpointing_gives_the_same_gradients(tiny: Backbone) -> None:
    checkpointed = load_backbone("tiny", gradient_checkpointing=True)
    assert checkpointed.transformer.is_gradient_checkpointing
    grads = []
    for backbone in (tiny, checkpointed):
        z_t, y, m, t = _inputs()
        y.requires_grad_(True)
        backbone.predict(z_t, y, m, t).square().mean().backward()
        grads.append(y.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_disabled_cross_attention_equals_a_zeroed_attn2_in_plain_diffusers(tiny: Backbone) -> None:
    reference = copy.deepcopy(tiny.transformer)
    set_cross_attention(reference, enabled=True)  # diffusers' own processors
    with torch.no_grad():
        for block in reference.blocks:
            block.attn2.to_out[0].weight.zero_()
            block.attn2.to_out[0].bias.zero_()
        z_t, y, m, t = _inputs()
        text = torch.randn(2, 5, reference.config.text_dim)
        expected = reference(torch.cat([z_t, m, y], dim=1), t, text, return_dict=False)[0]
        assert torch.equal(tiny.predict(z_t, y, m, t), expected)


def test_output_ignores_text_only_while_cross_attention_is_disabled() -> None:
    backbone = load_backbone("tiny")
    z_t, y, m, t = _inputs()
    text = torch.randn(2, 5, backbone.transformer.config.text_dim)
    with torch.no_grad():
        assert torch.equal(backbone.predict(z_t, y, m, t), backbone.predict(z_t, y, m, t, text))
        set_cross_attention(backbone.transformer, enabled=True)
        set_cross_attention(backbone.transformer, enabled=True)
        assert cross_attention_enabled(backbone.transformer)
        assert not torch.allclose(backbone.predict(z_t, y, m, t), backbone.predict(z_t, y, m, t, text))
        set_cross_attention(backbone.transformer, enabled=False)
        assert torch.equal(backbone.predict(z_t, y, m, t), backbone.predict(z_t, y, m, t, text))


def test_full_size_parameter_counts_on_meta() -> None:
    inp = build_backbone_on_meta("wan2.1-fun-1.3b-inp")
    t2v = build_backbone_on_meta("wan2.1-t2v-1.3b")
    with torch.device("meta"):
        t2v_checkpoint = WanTransformer3DModel(**BACKBONE_PRESETS["wan2.1-t2v-1.3b"].transformer_config)

    def count(module: torch.nn.Module) -> int:
        assert all(p.is_meta for p in module.parameters())
        return sum(p.numel() for p in module.parameters())

    n36, n16 = count(inp.transformer), count(t2v_checkpoint)
    assert n36 == _wan_param_count(BACKBONE_PRESETS["wan2.1-fun-1.3b-inp"].transformer_config)
    assert n16 == _wan_param_count(BACKBONE_PRESETS["wan2.1-t2v-1.3b"].transformer_config)
    # Fun-InP carries the image embedding (145.3M parameters) that T2V lacks.
    assert abs(n36 / 1e6 - 1564.4) < 0.1 and abs(n16 / 1e6 - 1419.0) < 0.1
    assert count(t2v.transformer) == n16 + 20 * 1536 * 4 and t2v.widened_channels == (16, 36)
    assert inp.widened_channels is None and count(inp.vae) > 0
    with pytest.raises(ValueError, match="meta"):
        backbone_fingerprint(inp)


def test_widened_t2v_embedding_keeps_the_original_output(tiny16: tuple[WanTransformer3DModel, Path]) -> None:
    original, _ = tiny16
    widened = copy.deepcopy(original)
    assert widen_patch_embedding(widened) == (16, 36)
    assert widened.config.in_channels == 36 and widened.patch_embedding.weight.shape[1] == 36
    z_t, y, m, t = _inputs()
    text = torch.zeros(2, 1, original.config.text_dim)
    with torch.no_grad():
        expected = original(z_t, t, text, return_dict=False)[0]
        for extra in (torch.zeros(2, 20, *LATENT), torch.cat([m, y], dim=1)):
            got = widened(torch.cat([z_t, extra], dim=1), t, text, return_dict=False)[0]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_t2v_preset_loads_and_widens_a_16_channel_checkpoint(tiny16: tuple[WanTransformer3DModel, Path]) -> None:
    original, folder = tiny16
    backbone = load_backbone("wan2.1-t2v-1.3b", path=folder)
    assert backbone.widened_channels == (16, 36)
    assert backbone.nola_extra_targets() == {"patch_embedding": {"in_channel_slice": (16, 36)}}
    assert backbone.transformer.config.in_channels == 36
    assert all(not p.requires_grad for p in backbone.transformer.parameters())
    z_t, y, m, t = _inputs()
    with torch.no_grad():
        set_cross_attention(original, enabled=False)
        try:
            expected = original(z_t, t, torch.zeros(2, 1, original.config.text_dim), return_dict=False)[0]
        finally:
            set_cross_attention(original, enabled=True)
        torch.testing.assert_close(backbone.predict(z_t, y, m, t), expected, rtol=1e-5, atol=1e-6)


def test_inp_preset_rejects_a_16_channel_checkpoint(tiny16: tuple[WanTransformer3DModel, Path]) -> None:
    _, folder = tiny16
    with pytest.raises(PresetError, match="16-channel.*'wan2.1-t2v-1.3b'"):
        load_backbone("wan2.1-fun-1.3b-inp", path=folder)


def test_save_pretrained_round_trip_through_path(tiny: Backbone, tmp_path: Path) -> None:
    tiny.transformer.save_pretrained(tmp_path / "transformer")
    tiny.vae.save_pretrained(tmp_path / "vae")
    loaded = load_backbone("tiny", path=tmp_path)
    assert _state_dicts_equal(loaded.transformer, tiny.transformer)
    assert _state_dicts_equal(loaded.vae, tiny.vae)
    assert backbone_fingerprint(loaded) == backbone_fingerprint(tiny)
    assert not cross_attention_enabled(loaded.transformer)
    z_t, y, m, t = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.predict(z_t, y, m, t), tiny.predict(z_t, y, m, t))


@pytest.mark.parametrize(
    ("preset", "path", "named"),
    [
        ("wan2.1-t2v-1.3b", None, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        ("wan2.1-fun-1.3b-inp", None, "alibaba-pai/Wan2.1-Fun-1.3B-InP"),
        ("wan2.1-t2v-1.3b", "nobody-divinr/no-such-backbone", "nobody-divinr/no-such-backbone"),
        ("tiny", "MISSING_DIR", "MISSING_DIR"),
    ],
)
def test_missing_weights_offline(preset: str, path: str | None, named: str, tmp_path: Path) -> None:
    if path == "MISSING_DIR":
        path = named = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(MissingWeightsError) as info:
        load_backbone(preset, path=path, cache_dir=tmp_path / "hf-cache", local_files_only=True)
    message = str(info.value)
    assert named in message and "--local-dir" in message and "\n" not in message


def test_unknown_preset() -> None:
    with pytest.raises(PresetError, match="unknown backbone preset 'wan9'.*tiny"):
        load_backbone("wan9")
    with pytest.raises(PresetError):
        build_backbone_on_meta("wan9")


def test_bfloat16_transformer_keeps_diffusers_fp32_modules() -> None:
    backbone = load_backbone("tiny", dtype=torch.bfloat16)
    assert backbone.transformer.patch_embedding.weight.dtype == torch.bfloat16
    assert backbone.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert backbone.transformer.blocks[0].scale_shift_table.dtype == torch.float32
    assert next(backbone.vae.parameters()).dtype == torch.float32
    z_t, y, m, t = _inputs()
    with torch.no_grad():
        out = backbone.predict(z_t, y, m, t)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()

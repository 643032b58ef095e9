"""The UniPC loop against diffusers' own WanPipeline, and the sampler's settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel

from divinr.errors import PresetError
from divinr.inference.sampler import SamplerConfig, initial_noise, make_scheduler, sample
from divinr.models.backbone import load_backbone, set_cross_attention
from divinr.models.nola import NOLAConfig, inject_nola, nola_parameters


def sixteen_channel_twin(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """A T2V-shaped copy whose patch embedding is the first 16 input channels of the 36-channel model."""
    config = dict(transformer.config)
    config["in_channels"] = 16
    twin = WanTransformer3DModel.from_config(config)
    state = transformer.state_dict()
    state["patch_embedding.weight"] = state["patch_embedding.weight"][:, :16].clone()
    twin.load_state_dict(state)
    set_cross_attention(twin, False)
    return twin.eval()


@pytest.mark.parametrize("steps", [4, 7])
def test_sampler_reproduces_wan_pipeline_latents(steps: int) -> None:
    backbone = load_backbone("tiny")
    twin = sixteen_channel_twin(backbone.transformer)
    # Adapters injected but contributing nothing (beta = 0), conditioning all zero.
    assert inject_nola(backbone.transformer, NOLAConfig(rank=4, num_bases=8))
    assert all(p.abs().sum() > 0 for p in nola_parameters(backbone.transformer)[0::2])
    config = SamplerConfig(steps=steps, flow_shift=3.0, noise_seed=11)
    shape = (1, 16, 3, 8, 8)  # 9 frames of 64x64
    noise = initial_noise(shape, config, gop_index=0)
    zeros_y, zeros_m = torch.zeros(shape), torch.zeros(1, 4, *shape[2:])

    ours = sample(lambda x, t: backbone.predict(x, zeros_y, zeros_m, t), noise, config)

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=backbone.vae, scheduler=make_scheduler(config), transformer=twin)
    pipe.set_progress_bar_config(disable=True)
    text = backbone.transformer.config.text_dim
    reference = pipe(
        prompt_embeds=torch.zeros(1, 1, text),
        guidance_scale=1.0,
        num_inference_steps=steps,
        height=64,
        width=64,
        num_frames=9,
        latents=noise.clone(),
        output_type="latent",
    ).frames
    assert reference.shape == ours.shape
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, noise)  # the loop really moved the latents


def test_conditioning_changes_the_sample() -> None:
    backbone = load_backbone("tiny")
    config = SamplerConfig(steps=3)
    shape = (1, 16, 2, 8, 8)
    noise = initial_noise(shape, config, 0)
    m = torch.ones(1, 4, 2, 8, 8)
    a = sample(lambda x, t: backbone.predict(x, torch.zeros(shape), m, t), noise, config)
    b = sample(lambda x, t: backbone.predict(x, torch.randn(shape), m, t), noise, config)
    assert not torch.allclose(a, b)


def test_noise_is_seeded_per_gop_and_independent_of_global_rng() -> None:
    config = SamplerConfig(noise_seed=5)
    torch.manual_seed(0)
    a = initial_noise((1, 16, 2, 4, 4), config, 3)
    torch.manual_seed(123)
    b = initial_noise((1, 16, 2, 4, 4), config, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, initial_noise((1, 16, 2, 4, 4), config, 4))


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"flow_shift": 0.0}, {"solver_order": 4}])
def test_invalid_sampler_settings(kwargs: dict) -> None:
    with pytest.raises(PresetError):
        SamplerConfig(**kwargs)

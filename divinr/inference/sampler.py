"""UniPC sampling of Wan latents conditioned on the INR (paper Eq. 1).

The loop follows diffusers' ``WanPipeline`` exactly (latents in float32, the model input cast to
the transformer's dtype, ``scheduler.step`` on the flow prediction), so that with zero
conditioning and zero adapters it reproduces the pipeline's latents; a test checks this.

    z_1 ~ N(0, I) (seeded per GoP) --20 x [DiT(cat(z, M, y), t) -> UniPC step]--> z_0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import UniPCMultistepScheduler

from divinr.errors import PresetError


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings; all of them travel in the bitstream header.

    Args:
        steps: UniPC steps (the paper: 20).
        flow_shift: Wan's timestep shift (3.0 for 480p-class resolutions such as 1024x576, 5.0 for 720p).
        noise_seed: seed of the initial noise; GoP ``g`` uses ``noise_seed + g``.
        solver_order: UniPC order (diffusers' default for Wan: 2).
    """

    steps: int = 20
    flow_shift: float = 3.0
    noise_seed: int = 0
    solver_order: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise PresetError(f"sampler steps must be in 1..1000, got {self.steps}")
        if self.flow_shift <= 0:
            raise PresetError(f"flow_shift must be positive, got {self.flow_shift}")
        if not 0 <= self.noise_seed < 2**32:
            raise PresetError(f"noise_seed must be in 0..2^32-1, got {self.noise_seed}")
        if self.solver_order not in (1, 2, 3):
            raise PresetError(f"UniPC solver_order must be 1, 2 or 3, got {self.solver_order}")


def make_scheduler(config: SamplerConfig) -> UniPCMultistepScheduler:
    """Wan2.1's UniPC set-up for flow prediction."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=config.flow_shift,
        solver_order=config.solver_order,
    )


def initial_noise(shape: tuple[int, ...], config: SamplerConfig, gop_index: int) -> torch.Tensor:
    """Seeded float32 Gaussian noise drawn on the CPU, so every device and process sees the same z_1."""
    generator = torch.Generator(device="cpu").manual_seed(config.noise_seed + gop_index)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(
    denoise: Denoiser,
    noise: torch.Tensor,
    config: SamplerConfig,
    *,
    model_dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE from ``noise`` with UniPC.

    Args:
        denoise: ``(model_input, timestep (B,)) -> flow prediction``, the conditioned DiT.
        noise: initial latents z_1, float32, (B, 16, T', h, w) on the target device.
        config: steps, shift and solver order.
        model_dtype: dtype the denoiser's input is cast to (the pipeline's ``transformer_dtype``).
        progress: called with 1 after every step (progress bars).

    Returns:
        The sampled clean latents z_0, float32.
    """
    scheduler = make_scheduler(config)
    scheduler.set_timesteps(config.steps, device=noise.device)
    scheduler.set_begin_index(0)
    latents = noise
    for t in scheduler.timesteps:
        prediction = denoise(latents.to(model_dtype), t.expand(latents.shape[0]))
        latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        if progress is not None:
            progress(1)
    return latents

"""Valid DiV-INR streams of each adapter family, made without training, for decode-side tests."""

from __future__ import annotations

from dataclasses import replace

import torch

from divinr.codec.divinr import plan_header
from divinr.compression.bitstream import pack
from divinr.data.video import Video
from divinr.inference.sampler import SamplerConfig
from divinr.models.adapters import LoRAConfig, VeRAConfig, adapter_parameters, adapter_state_dict
from divinr.models.backbone import backbone_fingerprint, load_backbone
from divinr.models.inr import build_inr
from divinr.models.nola import NOLAConfig
from divinr.training.encoder import EncoderConfig

SMALL_INR = {"channels": 8, "stage_channels": (8,), "strides": (1,), "blocks": (1,)}


def small_config(adapter: str, **changes: object) -> EncoderConfig:
    """Encoder settings of a seconds-long tiny-backbone encode with ``adapter``."""
    settings = dict(
        adapter=adapter, inr="xxs", inr_overrides=SMALL_INR, nola=NOLAConfig(rank=4, num_bases=8),
        lora=LoRAConfig(rank=2, alpha=3.0), vera=VeRAConfig(rank=4, seed=5), sampler=SamplerConfig(steps=2, noise_seed=3),
        gop_size=5, device="cpu",
    )
    return EncoderConfig(**{**settings, **changes})  # type: ignore[arg-type]


def untrained_stream(adapter: str, frames: int = 5, size: int = 32) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A stream with a fresh INR and random (non-zero) adapter tensors; also those tensors, unquantised."""
    config = small_config(adapter)
    header = plan_header(Video(torch.zeros(frames, 3, size, size), 25.0), config)
    backbone = load_backbone("tiny")
    fingerprint = backbone_fingerprint(backbone)
    layers = backbone.adapt(config.adapter_config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in adapter_parameters(backbone.transformer).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    header = replace(header, backbone_fingerprint=fingerprint, nola_layers=len(layers))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inr = build_inr(header.inr, header.latent_size).state_dict()
    tensors = adapter_state_dict(backbone.transformer)
    return pack(header, inr, tensors), tensors

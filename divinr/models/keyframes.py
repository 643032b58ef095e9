"""Keyframe conditioning, the paper's alternative to the INR: each GoP's decoded first frame as (y, M).

    keyframe (3, H, W) at the display size --pad to the coded size--> VAE (alone)
        --> z_key (16, h, w) = the GoP's first latent frame
    y = [z_key, 0, ..., 0], M = [1, 0, ..., 0] over the GoP's T' latent frames, DiT layout (1, C, T', h, w)

The Wan VAE is causal: its first latent frame depends on the first frame only, so the keyframe
encoded alone is exactly the latent frame it covers, and M is 1 on that frame and 0 on the
others: the ``first`` kind of divinr's pretraining mixture (Wan's own image-to-video models
VAE-encode blank frames after the image instead of leaving zeros). One place builds it for
training and for the decoder, so the two cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from divinr.data.video import pad_frames
from divinr.models.backbone import MASK_CHANNELS, Backbone


@torch.no_grad()
def keyframe_latent(backbone: Backbone, keyframe: Tensor, width: int, height: int) -> Tensor:
    """The normalised latent (16, h, w) of a keyframe (3, H, W), padded to the coded ``width`` x ``height``
    by edge replication as the encoder pads the video; on the VAE's device."""
    return backbone.encode(pad_frames(keyframe, width, height).unsqueeze(0))[:, 0]


def keyframe_conditioning(latent: Tensor, num_latent: int) -> tuple[Tensor, Tensor]:
    """(y, M) for a GoP of ``num_latent`` latent frames whose first is ``latent`` (16, h, w)."""
    channels, h, w = latent.shape
    y = latent.new_zeros(1, channels, num_latent, h, w)
    y[0, :, 0] = latent
    m = latent.new_zeros(1, MASK_CHANNELS, num_latent, h, w)
    m[0, :, 0] = 1.0
    return y, m

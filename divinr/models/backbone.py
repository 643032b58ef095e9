"""The frozen Wan2.1 video diffusion backbone (DiT + 3D causal VAE) that DiV-INR steers.

DiV-INR (paper, Sec. 3) never trains the diffusion model: a per-video INR produces latent
conditioning maps ``y`` and confidence masks ``m`` that are concatenated with the noisy latents
on the channel axis, and adapters (NOLA, or peft's LoRA / VeRA; separate modules) specialise a
few DiT layers. This
module loads the backbone from diffusers as it is, freezes it and changes behaviour only
through attention processors and one widened input convolution::

    frames (T,3,H,W) in [0,1] --encode--> z0 (16, 1+(T-1)/4, H/8, W/8), normalised
    z_t (B,16,..), m (B,4,..), y (B,16,..) --model_input--> (B,36,..) --DiT--> v (B,16,..)
    latents (16,T',h,w) --decode--> frames (T,3,H,W) in [0,1]

Text conditioning is not used: every block's cross-attention (``attn2``) is replaced by a
processor that contributes zeros (see :func:`set_cross_attention`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from torch import Tensor, nn

from divinr.errors import MissingWeightsError, PresetError, VideoFormatError, unknown_choice
from divinr.models.backbone_files import (
    DIFFUSERS_FILES,
    WAN_FILES,
    converted_folder,
    download_snapshot,
    fetch_command,
    folder_layout,
    is_hub_id,
    missing_from_hub,
)
from divinr.models.adapters import AdapterConfig, inject_adapters

LATENT_CHANNELS = 16
MASK_CHANNELS = 4
MODEL_IN_CHANNELS = 2 * LATENT_CHANNELS + MASK_CHANNELS

# Per-channel statistics of the Wan2.1 VAE latents, published with the model (and the defaults
# of diffusers' AutoencoderKLWan); written out so full-size presets need no download.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

TINY_SEED = 0

_WAN21_1_3B_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": MODEL_IN_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
# Fun-InP is an image-to-video-type model: its checkpoint carries the CLIP image projection
# (``img_emb``) and per-block image key/value projections (``k_img``, ``v_img``). DiV-INR never
# runs cross-attention, but the weights are loaded, hashed into the fingerprint and held in memory.
_WAN21_FUN_1_3B_INP_TRANSFORMER: dict[str, Any] = {
    **_WAN21_1_3B_TRANSFORMER,
    "image_dim": 1280,
    "added_kv_proj_dim": 1536,
}

_WAN21_VAE: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": list(WAN21_LATENTS_MEAN),
    "latents_std": list(WAN21_LATENTS_STD),
}

# The architecture of the ``mini`` preset. Its latent statistics are measured by the pretraining
# script and live in the shipped VAE config; Wan's, inherited here, only serve fresh instantiation.
MINI_TRANSFORMER: dict[str, Any] = {
    **_WAN21_1_3B_TRANSFORMER,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "text_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
}
MINI_VAE: dict[str, Any] = {
    **_WAN21_VAE,
    "base_dim": 16,
    "num_res_blocks": 1,
}


@dataclass(frozen=True)
class BackbonePreset:
    """A named backbone: where its weights live and the architecture they must have.

    Attributes:
        name: Registry key, also hashed into the backbone fingerprint.
        repo_id: Default Hugging Face id of the checkpoint; None for a model built from the
            configs (``tiny``) or shipped in the package (``mini``).
        transformer_config: ``WanTransformer3DModel`` constructor arguments of the checkpoint.
        vae_config: ``AutoencoderKLWan`` constructor arguments.
        source_in_channels: Input channels of the checkpoint's DiT (36 for Fun-InP, 16 for
            T2V); the loaded model is always widened to 36.
        bundled: Folder (relative to this module) of a diffusers-format checkpoint that ships
            with the package (``mini``); loaded like any local checkpoint, never downloaded.
        revision: Commit of ``repo_id`` that is downloaded, so every run uses the same weights.
        hub_layout: ``"diffusers"`` (``transformer/`` and ``vae/``) or ``"wan"`` (the original
            Wan / VideoX-Fun files, converted on first use): which files to download.
    """

    name: str
    repo_id: str | None
    transformer_config: dict = field(hash=False)
    vae_config: dict = field(hash=False)
    source_in_channels: int
    bundled: str | None = None
    revision: str | None = None
    hub_layout: str = "diffusers"

    @property
    def hub_files(self) -> tuple[str, ...]:
        """The repo files divinr reads (``allow_patterns``): no text or image encoders."""
        return WAN_FILES if self.hub_layout == "wan" else DIFFUSERS_FILES

    def bundled_path(self) -> Path | None:
        """The diffusers-format folder shipped inside the package, for presets that have one."""
        return None if self.bundled is None else Path(__file__).parent / self.bundled


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    # The paper's backbone. The official alibaba-pai repo is in the original Wan / VideoX-Fun
    # layout, converted to diffusers once on first load (divinr.models.backbone_files).
    "wan2.1-fun-1.3b-inp": BackbonePreset(
        name="wan2.1-fun-1.3b-inp",
        repo_id="alibaba-pai/Wan2.1-Fun-1.3B-InP",
        transformer_config=_WAN21_FUN_1_3B_INP_TRANSFORMER,
        vae_config=_WAN21_VAE,
        source_in_channels=MODEL_IN_CHANNELS,
        revision="7693adbe4ae670234958e42aa98145b4a406116c",
        hub_layout="wan",
    ),
    # Text-to-video weights; the 20 conditioning channels are added zero-initialised on load.
    "wan2.1-t2v-1.3b": BackbonePreset(
        name="wan2.1-t2v-1.3b",
        repo_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        transformer_config={**_WAN21_1_3B_TRANSFORMER, "in_channels": LATENT_CHANNELS},
        vae_config=_WAN21_VAE,
        source_in_channels=LATENT_CHANNELS,
        revision="0fad780a534b6463e45facd96134c9f345acfa5b",
    ),
    # A miniature Wan (1.2M-parameter DiT, 2.6M-parameter VAE) pretrained by this project on real
    # clips (divinr.pretraining.mini) and shipped in the package: the CPU backbone whose quality
    # means something. Same classes, 4x8x8 compression, 16 latent channels and NOLA target names.
    "mini": BackbonePreset(
        name="mini",
        repo_id=None,
        transformer_config=MINI_TRANSFORMER,
        vae_config=MINI_VAE,
        source_in_channels=MODEL_IN_CHANNELS,
        bundled="mini",
    ),
    # Random weights from a fixed seed, for tests and smoke runs on CPU.
    "tiny": BackbonePreset(
        name="tiny",
        repo_id=None,
        transformer_config={
            **_WAN21_1_3B_TRANSFORMER,
            "num_attention_heads": 2,
            "attention_head_dim": 16,
            "text_dim": 32,
            "freq_dim": 32,
            "ffn_dim": 64,
            "num_layers": 2,
        },
        vae_config={**_WAN21_VAE, "base_dim": 8, "num_res_blocks": 1},
        source_in_channels=MODEL_IN_CHANNELS,
    ),
}


def get_preset(name: str) -> BackbonePreset:
    """Look a backbone preset up by name.

    Args:
        name: A key of :data:`BACKBONE_PRESETS`.

    Returns:
        The preset.

    Raises:
        PresetError: For an unknown name.
    """
    try:
        return BACKBONE_PRESETS[name]
    except KeyError:
        raise unknown_choice("backbone preset", name, tuple(BACKBONE_PRESETS)) from None


def model_input(z_t: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """Assemble the DiT input; the single place that defines the 36-channel layout.

    The order ``[noisy latents (16), mask (4), conditioning latents (16)]`` is the one of
    diffusers' ``WanImageToVideoPipeline`` and of the Wan Fun-InP checkpoints, so their
    pretrained input convolution reads ``m`` and ``y`` where it expects mask and condition.

    Args:
        z_t: Noisy latents (B, 16, T', h, w).
        y: INR conditioning latents (B, 16, T', h, w).
        m: INR confidence masks in [0, 1] (B, 4, T', h, w).

    Returns:
        The concatenation (B, 36, T', h, w).
    """
    expected = {"z_t": (z_t, LATENT_CHANNELS), "y": (y, LATENT_CHANNELS), "m": (m, MASK_CHANNELS)}
    for name, (tensor, channels) in expected.items():
        if tensor.ndim != 5 or tensor.shape[1] != channels:
            raise ValueError(f"{name} must be shaped (B, {channels}, T', h, w), got {tuple(tensor.shape)}")
    if not (z_t.shape[0] == y.shape[0] == m.shape[0] and z_t.shape[2:] == y.shape[2:] == m.shape[2:]):
        raise ValueError(
            f"z_t {tuple(z_t.shape)}, y {tuple(y.shape)} and m {tuple(m.shape)} differ in batch or latent size"
        )
    return torch.cat([z_t, m, y], dim=1)


class NoCrossAttentionProcessor:
    """``attn2`` processor that skips cross-attention and contributes nothing.

    ``WanTransformerBlock`` adds the cross-attention output straight to the residual stream, so a
    zero of the query's shape and dtype is exactly "no cross-attention". It is an expanded view
    of one scalar, so it costs neither compute nor memory. The replaced processor is kept so
    :func:`set_cross_attention` can restore it.
    """

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, attn: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states.new_zeros(()).expand_as(hidden_states)


def set_cross_attention(transformer: WanTransformer3DModel, enabled: bool) -> None:
    """Switch the text cross-attention of every block off (DiV-INR) or back on (baselines).

    Args:
        transformer: The Wan DiT.
        enabled: True restores the processors in place before disabling; False installs
            :class:`NoCrossAttentionProcessor`. Repeating a call changes nothing.
    """
    for block in transformer.blocks:
        processor = block.attn2.processor
        disabled = isinstance(processor, NoCrossAttentionProcessor)
        if enabled and disabled:
            block.attn2.set_processor(processor.previous)
        elif not enabled and not disabled:
            block.attn2.set_processor(NoCrossAttentionProcessor(processor))


def cross_attention_enabled(transformer: WanTransformer3DModel) -> bool:
    """Whether any block still runs its text cross-attention."""
    return any(not isinstance(b.attn2.processor, NoCrossAttentionProcessor) for b in transformer.blocks)


def widen_patch_embedding(transformer: WanTransformer3DModel, in_channels: int = MODEL_IN_CHANNELS) -> tuple[int, int]:
    """Give the DiT's input convolution extra, zero-weighted input channels.

    A text-to-video checkpoint reads 16 channels; appending zero weights for the mask and
    conditioning channels leaves its output unchanged at load, and adapters can then learn
    to use them. The parameter is replaced in place (no new random init, so the global RNG is
    untouched) and the config updated, so ``save_pretrained`` writes a consistent model.

    Args:
        transformer: The Wan DiT, modified in place.
        in_channels: Input channels after widening.

    Returns:
        ``(old_in_channels, in_channels)``.
    """
    conv = transformer.patch_embedding
    old = conv.in_channels
    if in_channels < old:
        raise ValueError(f"cannot narrow the patch embedding from {old} to {in_channels} channels")
    weight = conv.weight
    extra = weight.new_zeros((weight.shape[0], in_channels - old, *weight.shape[2:]))
    conv.weight = nn.Parameter(torch.cat([weight.detach(), extra], dim=1), requires_grad=weight.requires_grad)
    conv.in_channels = in_channels
    transformer.register_to_config(in_channels=in_channels)
    return old, in_channels


@dataclass(eq=False)
class Backbone:
    """The frozen DiT and VAE with the few operations DiV-INR needs.

    ``Backbone`` is not an ``nn.Module``: a LightningModule that holds it does not save its
    (multi-GB) weights in checkpoints, and must call :meth:`eval` again after Lightning's
    ``train()`` (a no-op numerically for Wan, whose dropout rates are 0, but it keeps the
    frozen parts honest).

    Attributes:
        transformer: ``WanTransformer3DModel`` with 36 input channels, cross-attention disabled.
        vae: ``AutoencoderKLWan`` in float32.
        preset: The preset it was built from.
        widened_channels: ``(16, 36)`` when the input convolution was widened at load, else None.
    """

    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    preset: BackbonePreset
    widened_channels: tuple[int, int] | None = None

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent space (16)."""
        return int(self.vae.config.z_dim)

    @property
    def latents_mean(self) -> Tensor:
        """Per-channel latent mean (1, 16, 1, 1, 1) on the VAE's device and dtype."""
        return self._latent_stat("latents_mean")

    @property
    def latents_std(self) -> Tensor:
        """Per-channel latent standard deviation (1, 16, 1, 1, 1) on the VAE's device and dtype."""
        return self._latent_stat("latents_std")

    def _latent_stat(self, key: str) -> Tensor:
        p = next(self.vae.parameters())
        return torch.tensor(self.vae.config[key], device=p.device, dtype=p.dtype).view(1, -1, 1, 1, 1)

    def nola_extra_targets(self) -> dict[str, dict[str, Any]]:
        """Adapter targets this backbone needs beyond the paper's layers.

        Returns:
            ``{"patch_embedding": {"in_channel_slice": (16, 36)}}`` when the input convolution was
            widened (its zero-initialised conditioning channels must learn), else ``{}``.
        """
        if self.widened_channels is None:
            return {}
        return {"patch_embedding": {"in_channel_slice": self.widened_channels}}

    def adapt(self, config: AdapterConfig, *, init_seed: int = 0) -> list[str]:
        """Inject the adapter family of ``config`` (NOLA, LoRA or VeRA) into the transformer, in
        place, on the paper's targets plus :meth:`nola_extra_targets`.

        The one place the encoder and the decoder adapt a backbone, so both adapt the same layers;
        returns the adapted layer names (``[]`` for NOLA with ``num_bases=0``). ``init_seed`` seeds
        the initial values peft draws (see :func:`~divinr.models.adapters.inject_adapters`).
        """
        return inject_adapters(self.transformer, config, extra_targets=self.nola_extra_targets(), init_seed=init_seed)

    def eval(self) -> Backbone:
        """Put both networks in eval mode (call again after any ``train()`` of a parent)."""
        self.transformer.eval()
        self.vae.eval()
        return self

    def encode(self, frames: Tensor) -> Tensor:
        """Encode one GoP to normalised latents, deterministically (posterior mode).

        Args:
            frames: (T, 3, H, W) in [0, 1] with T = 1 + 4k and H, W multiples of 8.

        Returns:
            ``(mu - latents_mean) / latents_std`` shaped (16, 1 + (T-1)/4, H/8, W/8), on the
            VAE's device in float32.
        """
        cfg = self.vae.config
        st, ss = cfg.scale_factor_temporal, cfg.scale_factor_spatial
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise VideoFormatError(f"expected RGB frames shaped (T, 3, H, W), got {tuple(frames.shape)}")
        t, _, h, w = frames.shape
        if (t - 1) % st or h % ss or w % ss:
            raise VideoFormatError(
                f"cannot encode {t} frames of {w}x{h}: use 1 + {st}k frames and sizes divisible by {ss}"
            )
        p = next(self.vae.parameters())
        video = frames.to(device=p.device, dtype=p.dtype).permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1
        mu = self.vae.encode(video).latent_dist.mode()
        return ((mu - self.latents_mean) / self.latents_std)[0].float()

    def decode(self, latents: Tensor) -> Tensor:
        """Decode normalised latents of one GoP to frames.

        Args:
            latents: (16, T', h, w), normalised as :meth:`encode` returns them.

        Returns:
            (1 + 4(T'-1), 3, 8h, 8w) frames in [0, 1], float32.
        """
        if latents.ndim != 4 or latents.shape[0] != self.latent_channels:
            raise ValueError(f"latents must be shaped ({self.latent_channels}, T', h, w), got {tuple(latents.shape)}")
        p = next(self.vae.parameters())
        z = latents.to(device=p.device, dtype=p.dtype).unsqueeze(0) * self.latents_std + self.latents_mean
        video = self.vae.decode(z).sample[0].permute(1, 0, 2, 3)
        return ((video.float() + 1) / 2).clamp(0, 1)

    @property
    def model_dtype(self) -> torch.dtype:
        """Compute dtype of the DiT (read from a block weight that adapters never wrap)."""
        return self.transformer.blocks[0].attn1.to_q.weight.dtype

    def predict(
        self,
        z_t: Tensor,
        y: Tensor,
        m: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor | None = None,
    ) -> Tensor:
        """Run the DiT on the conditioned input; differentiable with respect to the inputs.

        Args:
            z_t: Noisy latents (B, 16, T', h, w), h and w divisible by the patch size.
            y: INR conditioning latents (B, 16, T', h, w).
            m: INR masks (B, 4, T', h, w).
            timestep: (B,) or scalar, float in [0, 1000] (flow time t times 1000).
            encoder_hidden_states: Text embeddings (B, L, text_dim) for baselines that enable
                cross-attention; by default one zero token, which disabled cross-attention ignores.

        Returns:
            The model output (B, 16, T', h, w) in ``z_t``'s dtype: the flow velocity eps - z0.
        """
        x = model_input(z_t, y, m)
        batch = x.shape[0]
        patch = tuple(self.transformer.config.patch_size)
        if any(size % p for size, p in zip(x.shape[2:], patch)):
            raise ValueError(f"latent size {tuple(x.shape[2:])} is not divisible by the patch size {patch}")
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if timestep.shape != (batch,):
            raise ValueError(f"timestep must be a scalar or shaped ({batch},), got {tuple(timestep.shape)}")
        dtype = self.model_dtype
        if encoder_hidden_states is None:
            encoder_hidden_states = x.new_zeros((batch, 1, self.transformer.config.text_dim))
        out = self.transformer(
            hidden_states=x.to(dtype),
            timestep=timestep.to(device=x.device, dtype=torch.float32),
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            return_dict=False,
        )[0]
        return out.to(z_t.dtype)


def freeze_backbone(backbone: Backbone) -> Backbone:
    """Stop every backbone parameter from training and put both networks in eval mode.

    Call it before injecting adapters: their parameters must stay trainable.

    Args:
        backbone: Modified in place.

    Returns:
        The same backbone.
    """
    backbone.transformer.requires_grad_(False)
    backbone.vae.requires_grad_(False)
    return backbone.eval()


def _instantiate(preset: BackbonePreset) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    # Deep copies: diffusers keeps references to list arguments in its config.
    transformer = WanTransformer3DModel(**copy.deepcopy(preset.transformer_config))
    vae = AutoencoderKLWan(**copy.deepcopy(preset.vae_config))
    return transformer, vae


def _cast_like_diffusers(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating tensors to ``dtype`` except those diffusers keeps in float32 at load."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)


def _local_folder_missing(preset: BackbonePreset, source: str) -> MissingWeightsError:
    if preset.repo_id is not None:
        fetch = f"`{fetch_command(preset.repo_id, preset.revision, preset.hub_files)} --local-dir DIR`"
    else:
        fetch = "`hf download REPO --local-dir DIR` (REPO a Wan2.1 checkpoint)"
    return MissingWeightsError(
        f"no backbone weights for preset {preset.name!r} at {source!r} (expected transformer/ and vae/ of a "
        f"diffusers checkpoint, or the original Wan files {', '.join(WAN_FILES)}): on a machine with internet "
        f"run {fetch}, copy DIR here and pass path=DIR (CLI: --backbone-path DIR)"
    )


def resolve_weights(
    preset: BackbonePreset,
    source: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """The local diffusers folder holding a preset's weights, whatever form they come in.

    Args:
        preset: The preset being loaded (its pinned revision, Hub layout and VAE config).
        source: A Hub id, a local diffusers folder or a local original-layout folder.
        revision: Hub revision; None uses the preset's pin for its own repo, else the default branch.
        cache_dir: Hugging Face cache folder; None uses HF_HOME.
        local_files_only: Forwarded to ``snapshot_download``; None honours HF_HUB_OFFLINE.

    Returns:
        A folder with ``transformer/`` and ``vae/`` (converted into the backbone cache for the
        original layout).
    """
    if is_hub_id(source):
        ours = source == preset.repo_id
        files = preset.hub_files if ours else DIFFUSERS_FILES + WAN_FILES
        if revision is None and ours:
            revision = preset.revision
        folder = download_snapshot(source, revision, files, cache_dir=cache_dir, local_files_only=local_files_only)
        layout = folder_layout(folder)
        if layout is None:
            raise missing_from_hub(source, revision, files, "incomplete snapshot")
    else:
        folder = Path(source).expanduser()
        layout = folder_layout(folder)
        if layout is None:
            raise _local_folder_missing(preset, source)
    return converted_folder(folder, preset.vae_config) if layout == "wan" else folder


def _from_pretrained(folder: Path, dtype: torch.dtype) -> tuple[WanTransformer3DModel, AutoencoderKLWan]:
    try:
        transformer = WanTransformer3DModel.from_pretrained(
            folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True
        )
        vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True)
    except OSError as exc:
        raise MissingWeightsError(
            f"cannot read the backbone weights in {folder} ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
            f"download them again"
        ) from exc
    return transformer, vae


def _assemble(
    preset: BackbonePreset, transformer: WanTransformer3DModel, vae: AutoencoderKLWan, source: str
) -> Backbone:
    """Check a checkpoint against its preset, widen it to 36 channels, freeze it, drop text."""
    cfg = transformer.config
    if cfg.in_channels != preset.source_in_channels:
        matching = sorted(
            p.name for p in BACKBONE_PRESETS.values() if p.repo_id and p.source_in_channels == cfg.in_channels
        )
        hint = "use preset " + " or ".join(map(repr, matching)) if matching else "use a Wan2.1 checkpoint"
        raise PresetError(
            f"checkpoint {source!r} has a {cfg.in_channels}-channel DiT input but preset {preset.name!r} "
            f"expects {preset.source_in_channels}: {hint}"
        )
    if cfg.out_channels != LATENT_CHANNELS or vae.config.z_dim != LATENT_CHANNELS:
        raise PresetError(
            f"checkpoint {source!r} has {cfg.out_channels}-channel DiT output and a {vae.config.z_dim}-channel "
            f"VAE, but DiV-INR needs {LATENT_CHANNELS} for both: use a Wan2.1 checkpoint"
        )
    widened = widen_patch_embedding(transformer) if cfg.in_channels < MODEL_IN_CHANNELS else None
    set_cross_attention(transformer, enabled=False)
    return freeze_backbone(Backbone(transformer=transformer, vae=vae, preset=preset, widened_channels=widened))


def load_backbone(
    preset: str = "tiny",
    *,
    path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    revision: str | None = None,
) -> Backbone:
    """Load (or, for ``tiny``, build) the frozen backbone.

    Weights come from ``path``, else the folder a preset ships in the package (``mini``), else
    the preset's ``repo_id`` at its pinned ``revision``. Any of them may be a Hub id (downloaded
    into the Hugging Face cache, only the files divinr reads), a local diffusers folder
    (``transformer/``, ``vae/``) or a local folder in the original Wan / VideoX-Fun layout
    (converted once into the backbone cache; see :mod:`divinr.models.backbone_files`). The
    same weights give the same :func:`backbone_fingerprint` from every form. ``tiny`` without
    ``path`` is built from its config under :data:`TINY_SEED`, bit-identical in every process
    and leaving the global RNG untouched.

    The transformer is cast to ``dtype`` (modules diffusers keeps in float32 stay so); the VAE
    is always float32, because it runs once per GoP and its decoder is sensitive to precision.
    Both go to ``device``.

    Args:
        preset: A key of :data:`BACKBONE_PRESETS`.
        path: Local folder or Hub id overriding the preset's ``repo_id``.
        dtype: Transformer dtype.
        device: Where both networks live.
        gradient_checkpointing: Recompute DiT blocks in backward to save activation memory.
        cache_dir: Hugging Face cache folder; None uses HF_HOME.
        local_files_only: Never download; None honours HF_HUB_OFFLINE.
        revision: Hub revision of a Hub id; None uses the preset's pin for its own repo.

    Returns:
        A frozen :class:`Backbone` with a 36-channel DiT and cross-attention disabled.

    Raises:
        PresetError: Unknown preset, or a checkpoint whose channels do not match it.
        MissingWeightsError: Weights not found locally and not downloadable.
    """
    spec = get_preset(preset)
    bundled = spec.bundled_path()
    if path is None and bundled is not None:
        if folder_layout(bundled) != "diffusers":
            raise MissingWeightsError(
                f"the {spec.name!r} weights are missing from {bundled} (a damaged install?): reinstall divinr, "
                f"or rebuild them with `python -m divinr.pretraining.mini --install`"
            )
        path = bundled
    source = str(path) if path is not None else spec.repo_id
    if source is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            transformer, vae = _instantiate(spec)
        _cast_like_diffusers(transformer, dtype)
        source = f"<{spec.name} built from config>"
    else:
        folder = resolve_weights(
            spec, source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        transformer, vae = _from_pretrained(folder, dtype)
    backbone = _assemble(spec, transformer.to(device), vae.to(device), source)
    if gradient_checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    return backbone


def build_backbone_on_meta(preset: str) -> Backbone:
    """Instantiate a preset's full architecture on the meta device, without weights or memory.

    For shape checks and parameter counting (e.g. of the 1.3B model) on any machine.

    Args:
        preset: A key of :data:`BACKBONE_PRESETS`.

    Returns:
        A :class:`Backbone` whose tensors are all on ``torch.device("meta")``.
    """
    spec = get_preset(preset)
    with torch.device("meta"):
        transformer, vae = _instantiate(spec)
    return _assemble(spec, transformer, vae, f"<{spec.name} on meta>")


def build_random_backbone(
    preset: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Backbone:
    """Build a preset's full architecture with random weights, directly on ``device``.

    For speed and memory measurements, whose results do not depend on weight values, on
    machines without the checkpoint. Parameters are initialised where they will live (a 1.3B
    model initialised on the CPU takes minutes), then cast like :func:`load_backbone` casts
    (transformer to ``dtype`` except diffusers' float32 modules, VAE float32), frozen, widened
    and without cross-attention. The global RNG is left untouched; ``tiny`` with seed
    :data:`TINY_SEED` on the CPU equals ``load_backbone("tiny")``.

    Args:
        preset: A key of :data:`BACKBONE_PRESETS`.
        device: Where both networks are built.
        dtype: Transformer dtype.
        seed: Seed of the random initialisation.

    Returns:
        A frozen :class:`Backbone` with a 36-channel DiT and cross-attention disabled.
    """
    spec = get_preset(preset)
    device = torch.device(device)
    rng_devices = []
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=rng_devices), device:
        torch.manual_seed(seed)
        transformer, vae = _instantiate(spec)
    _cast_like_diffusers(transformer, dtype)
    return _assemble(spec, transformer, vae, f"<{spec.name} random, seed {seed}>")


def _canonical_config(model: nn.Module) -> bytes:
    public = {k: v for k, v in model.config.items() if not k.startswith("_")}
    return json.dumps(public, sort_keys=True).encode()


def backbone_fingerprint(backbone: Backbone) -> bytes:
    """A 16-byte identity of the backbone, stored in bitstreams so a decoder refuses another one.

    SHA-256 over the preset name, both networks' public configs and every state-dict tensor
    (name, shape, values) in sorted name order. Values are hashed as bfloat16 so the same
    checkpoint loaded in float32 or bfloat16 gives the same fingerprint, while any change in
    the weights visible at bf16 precision gives another. Hash it before injecting adapters
    (they change the state dict). Cost: one pass over all weights, moved to the CPU tensor by
    tensor: about 1.5B values, a few seconds, for the 1.3B model.

    Args:
        backbone: A backbone with real (not meta) weights.

    Returns:
        The first 16 bytes of the digest.
    """
    digest = hashlib.sha256(backbone.preset.name.encode())
    for model in (backbone.transformer, backbone.vae):
        digest.update(_canonical_config(model))
        for name, tensor in sorted(model.state_dict().items()):
            if tensor.is_meta:
                raise ValueError(f"cannot fingerprint {name}: the backbone has no weights (meta device)")
            digest.update(json.dumps([name, list(tensor.shape)]).encode())
            values = tensor.detach().cpu()
            if values.is_floating_point():
                values = values.to(torch.bfloat16)
            values = values.reshape(-1)
            digest.update(values.view(torch.uint8).numpy())
    return digest.digest()[:16]

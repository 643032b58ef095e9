"""Write diffusers Wan models in the original Wan / VideoX-Fun checkpoint layout, for tests.

The key names follow the original Wan code (``wan/modules/model.py``: ``WanModel`` with
``patch_embedding``, ``text_embedding``/``time_embedding`` Sequentials, ``blocks.N.self_attn.q``,
``cross_attn.k_img``, ``norm3`` as the cross-attention norm, ``ffn.0``/``ffn.2``, ``modulation``,
``head.head``, ``img_emb.proj``; ``wan/modules/vae.py``: ``encoder.downsamples.N.residual.K``,
``middle.0/1/2``, ``head.0/2``, the decoder's flat ``upsamples`` list, ``conv1``/``conv2``), which
VideoX-Fun keeps. They are written here from that naming, independently of diffusers' converter,
so loading them through divinr checks the converter and the config divinr gives it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file

_TRANSFORMER_RULES: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.add_k_proj\.", ".k_img."),
    (r"\.add_v_proj\.", ".v_img."),
    (r"\.norm_added_k\.", ".norm_k_img."),
    (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers' norm2 is Wan's cross-attention norm3
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
)

_RESIDUAL = (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
             ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))  # fmt: skip


def wan_transformer_name(name: str) -> str:
    """The original Wan name of a diffusers ``WanTransformer3DModel`` state-dict key."""
    for pattern, replacement in _TRANSFORMER_RULES:
        name = re.sub(pattern, replacement, name)
    return name


def _residual(rest: str) -> str:
    for new, old in _RESIDUAL:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest  # resample.* and time_conv.* keep their names


def wan_vae_name(name: str, num_res_blocks: int) -> str:
    """The original Wan name of a diffusers ``AutoencoderKLWan`` (Wan2.1) state-dict key."""
    fixed = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
             "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
             "decoder.norm_out.": "decoder.head.0.", "encoder.conv_out.": "encoder.head.2.",
             "decoder.conv_out.": "decoder.head.2."}  # fmt: skip
    for new, old in fixed.items():
        if name.startswith(new):
            return old + name[len(new):]
    if m := re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", name):
        side, kind, index, rest = m.groups()
        slot = {"resnets": (0, 2), "attentions": (1,)}[kind][int(index)]
        return f"{side}.middle.{slot}.{_residual(rest) if kind == 'resnets' else rest}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)", name):
        return f"encoder.downsamples.{m[1]}.{_residual(m[2])}"
    per_stage = num_res_blocks + 2  # resnets, then one upsampler, flattened into `upsamples`
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", name):
        return f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.{_residual(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", name):
        return f"decoder.upsamples.{int(m[1]) * per_stage + num_res_blocks + 1}.{m[2]}"
    raise AssertionError(f"no Wan name for VAE key {name}")


def wan_config(transformer: WanTransformer3DModel) -> dict:
    """The Wan-style ``config.json`` of the original ``WanModel`` for this architecture."""
    cfg = transformer.config
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "model_type": "i2v" if cfg.image_dim is not None else "t2v",
        "patch_size": list(cfg.patch_size),
        "text_len": 512,
        "in_dim": cfg.in_channels,
        "dim": cfg.num_attention_heads * cfg.attention_head_dim,
        "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim,
        "text_dim": cfg.text_dim,
        "out_dim": cfg.out_channels,
        "num_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_layers,
        "window_size": [-1, -1],
        "qk_norm": cfg.qk_norm is not None,
        "cross_attn_norm": cfg.cross_attn_norm,
        "eps": cfg.eps,
    }


def write_wan_layout(folder: Path, transformer: WanTransformer3DModel, vae: AutoencoderKLWan) -> Path:
    """Write ``config.json``, ``diffusion_pytorch_model.safetensors`` and ``Wan2.1_VAE.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {wan_transformer_name(k): v.contiguous() for k, v in transformer.state_dict().items()}
    assert len(state) == len(transformer.state_dict())
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(wan_config(transformer), indent=2))
    blocks = vae.config.num_res_blocks
    vae_state = {wan_vae_name(k, blocks): v for k, v in vae.state_dict().items()}
    assert len(vae_state) == len(vae.state_dict())
    torch.save(vae_state, folder / "Wan2.1_VAE.pth")
    return folder

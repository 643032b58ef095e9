"""Where backbone weights come from: a Hub id, a diffusers folder, or the original Wan layout.

Users hold the Wan2.1 weights in one of three forms, and all of them end as a diffusers folder
that ``from_pretrained`` reads::

    Hub id (+ pinned revision) --snapshot_download, only the needed files--> snapshot folder
    snapshot or local folder --layout?--> diffusers (transformer/, vae/)        -> used as is
                                       \\-> original Wan / VideoX-Fun             -> converted once
        config.json + diffusion_pytorch_model.safetensors + Wan2.1_VAE.pth
        --diffusers' Wan key converters, explicit config, strict load-->
        $DIVINR_BACKBONE_CACHE/wan-<hash of the source files>/{transformer,vae}

The conversion builds the DiT from a config derived from the checkpoint itself (its Wan-style
``config.json`` and whether it carries the image-embedding keys), because diffusers'
``from_single_file`` infers a 16-channel T2V config for any 1536-wide model. The cached folder
appears by one atomic rename, so an interrupted conversion leaves nothing that looks complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file
from torch import nn

from divinr.errors import MissingWeightsError

BACKBONE_CACHE_ENV = "DIVINR_BACKBONE_CACHE"

#: Files of a diffusers-format repo that divinr reads (no text encoder, tokenizer or scheduler).
DIFFUSERS_FILES: tuple[str, ...] = ("transformer/*", "vae/*")
WAN_CONFIG = "config.json"
WAN_TRANSFORMER = "diffusion_pytorch_model.safetensors"
WAN_VAE = "Wan2.1_VAE.pth"
#: Files of an original Wan / VideoX-Fun repo that divinr reads (no T5 or CLIP checkpoints).
WAN_FILES: tuple[str, ...] = (WAN_CONFIG, WAN_TRANSFORMER, WAN_VAE)

# Bumped when the conversion changes, so caches written by an older one are not reused.
_CONVERSION_VERSION = "divinr-wan-to-diffusers-1"
_HF_BLOB = re.compile(r"[0-9a-f]{64}")


def backbone_cache_dir() -> Path:
    """Folder of converted checkpoints: ``$DIVINR_BACKBONE_CACHE`` or ``~/.cache/divinr/backbones``."""
    env = os.environ.get(BACKBONE_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "divinr" / "backbones"


def fetch_command(repo_id: str, revision: str | None, files: Iterable[str]) -> str:
    """The ``hf download`` command that puts exactly ``files`` of a repo in the Hugging Face cache."""
    rev = f" --revision {revision}" if revision else ""
    includes = "".join(f" --include '{f}'" for f in files)
    return f"hf download {repo_id}{rev}{includes}"


def is_hub_id(source: str) -> bool:
    """Whether ``source`` can only mean a Hub repo (``org/name``), not a local folder.

    ``weights/wan`` whose ``weights/`` exists is a mistyped local folder, not a Hub id: the
    user then gets the missing-folder error, not a misleading Hub-cache one.
    """
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "~", "/")) or path.parent.is_dir() and path.parent != Path("."):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return source.count("/") == 1


def download_snapshot(
    repo_id: str,
    revision: str | None,
    files: tuple[str, ...],
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Resolve a Hub repo to its snapshot folder in the standard cache, fetching only ``files``.

    ``HF_HOME`` and ``HF_HUB_OFFLINE`` apply as for any Hugging Face download; ``local_files_only``
    None keeps the library's default.

    Raises:
        MissingWeightsError: Offline (or unreachable) without the files, naming the repo, the
            revision and the command that fetches them.
    """
    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir) if cache_dir is not None else None}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(files), **kwargs)
    except (OSError, HFValidationError, HfHubHTTPError) as exc:
        raise missing_from_hub(repo_id, revision, files, type(exc).__name__) from exc
    return Path(folder)


def missing_from_hub(repo_id: str, revision: str | None, files: Iterable[str], why: str) -> MissingWeightsError:
    """The one-line error for Hub weights that are not in the local cache."""
    files = tuple(files)
    return MissingWeightsError(
        f"backbone weights {repo_id} at revision {revision or 'main'} are not in the Hugging Face cache ({why}): "
        f"on a machine with internet run `{fetch_command(repo_id, revision, files)}` and point HF_HOME at that "
        f"cache (or add --local-dir DIR and pass --backbone-path DIR)"
    )


def folder_layout(folder: Path) -> str | None:
    """``"diffusers"``, ``"wan"`` (original Wan / VideoX-Fun) or None when neither is complete."""
    if (folder / "transformer" / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        return "diffusers"
    if all((folder / name).is_file() for name in WAN_FILES):
        return "wan"
    return None


def file_digest(path: Path) -> str:
    """SHA-256 of a file; free for a file in the Hugging Face cache, whose blob is named by it."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _HF_BLOB.fullmatch(real.name):
        return real.name
    digest = hashlib.sha256()
    with real.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def transformer_config_from_wan(wan_config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``WanTransformer3DModel`` config of an original-layout checkpoint.

    Args:
        wan_config: The checkpoint's Wan-style ``config.json`` (``dim``, ``in_dim``, ``num_heads``...).
        state: Its state dict with original key names; the image-embedding fields are set when it
            carries ``img_emb`` / ``k_img`` / ``v_img`` weights (I2V-type models such as Fun-InP).

    Raises:
        MissingWeightsError: A field the architecture needs is absent.
    """
    try:
        dim, heads = int(wan_config["dim"]), int(wan_config["num_heads"])
        config: dict[str, Any] = {
            "patch_size": tuple(wan_config.get("patch_size", (1, 2, 2))),
            "num_attention_heads": heads,
            "attention_head_dim": dim // heads,
            "in_channels": int(wan_config["in_dim"]),
            "out_channels": int(wan_config["out_dim"]),
            "text_dim": int(wan_config.get("text_dim", 4096)),
            "freq_dim": int(wan_config["freq_dim"]),
            "ffn_dim": int(wan_config["ffn_dim"]),
            "num_layers": int(wan_config["num_layers"]),
            "cross_attn_norm": bool(wan_config.get("cross_attn_norm", True)),
            "qk_norm": "rms_norm_across_heads" if wan_config.get("qk_norm", True) else None,
            "eps": float(wan_config.get("eps", 1e-6)),
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024,
        }
    except KeyError as exc:
        raise MissingWeightsError(
            f"the Wan config.json lacks {exc.args[0]!r}: use the config.json published with the checkpoint"
        ) from None
    image_norm = state.get("img_emb.proj.0.weight")
    if image_norm is not None or any(".k_img." in k or ".v_img." in k for k in state):
        config["image_dim"] = int(image_norm.shape[0]) if image_norm is not None else 1280
        config["added_kv_proj_dim"] = dim
    return config


def _strict_model(cls: type[nn.Module], config: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """Build ``cls(**config)`` without initialising it and load ``state`` exactly (every key, every shape)."""
    with torch.device("meta"):
        model = cls(**copy.deepcopy(config))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong)))
            if names
        )
        raise MissingWeightsError(
            f"{source} does not match a {cls.__name__} of its config ({details}): use an unmodified Wan2.1 "
            f"checkpoint and its own config.json"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _save_converted(folder: Path, vae_config: dict[str, Any], out: Path) -> None:
    wan_config = json.loads((folder / WAN_CONFIG).read_text())
    state = load_file(folder / WAN_TRANSFORMER)
    config = transformer_config_from_wan(wan_config, state)
    transformer = _strict_model(
        WanTransformer3DModel, config, convert_wan_transformer_to_diffusers(state), folder / WAN_TRANSFORMER
    )
    transformer.save_pretrained(out / "transformer")
    del transformer, state
    vae_state = torch.load(folder / WAN_VAE, map_location="cpu", weights_only=True, mmap=True)
    vae = _strict_model(AutoencoderKLWan, vae_config, convert_wan_vae_to_diffusers(vae_state), folder / WAN_VAE)
    vae.save_pretrained(out / "vae")


def converted_folder(folder: Path, vae_config: dict[str, Any], cache_root: Path | None = None) -> Path:
    """The diffusers folder of an original-layout checkpoint, converting it on first use.

    The cache entry is named by a hash of the source files' SHA-256s, the VAE config (the original
    layout carries none) and the conversion version, so edited weights are converted anew and
    the same weights are converted once, wherever they lie.

    Args:
        folder: A folder with ``config.json``, ``diffusion_pytorch_model.safetensors`` and
            ``Wan2.1_VAE.pth``.
        vae_config: ``AutoencoderKLWan`` constructor arguments of the checkpoint's VAE.
        cache_root: Where conversions live; None uses :func:`backbone_cache_dir`.

    Returns:
        A folder with ``transformer/`` and ``vae/`` in diffusers format.
    """
    key = hashlib.sha256(_CONVERSION_VERSION.encode())
    key.update(json.dumps(vae_config, sort_keys=True).encode())
    for name in WAN_FILES:
        key.update(f"{name}:{file_digest(folder / name)}".encode())
    root = backbone_cache_dir() if cache_root is None else cache_root
    target = root / f"wan-{key.hexdigest()[:32]}"
    if folder_layout(target) == "diffusers":
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.", suffix=".part"))
    try:
        _save_converted(folder, vae_config, work)
        try:
            os.replace(work, target)
        except OSError:
            if folder_layout(target) != "diffusers":  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target

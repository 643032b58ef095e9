"""Every on-disk form of a Wan backbone loads to the same model and the same fingerprint.

Tiny checkpoints are written in each real layout (the original Wan / VideoX-Fun files, a
diffusers folder, a Hugging Face cache snapshot read offline) from one directly built pair of
diffusers models, the reference every loaded backbone is compared with.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from wan_layouts import wan_transformer_name, write_wan_layout

from divinr.errors import MissingWeightsError
from divinr.models import backbone_files
from divinr.models.backbone import (
    BACKBONE_PRESETS,
    MASK_CHANNELS,
    Backbone,
    BackbonePreset,
    backbone_fingerprint,
    build_backbone_on_meta,
    load_backbone,
    set_cross_attention,
)
from divinr.models.nola import NOLAConfig, count_nola_coefficients, inject_nola

REPO = "divinr-test/tiny-fun-inp"
REVISION = "0123456789abcdef0123456789abcdef01234567"
LATENT = (3, 4, 4)


def _preset(image: bool) -> BackbonePreset:
    """A tiny Fun-InP-like preset; the VAE keeps Wan's block structure (2 res blocks) at width 8."""
    tiny = BACKBONE_PRESETS["tiny"]
    extra = {"image_dim": 24, "added_kv_proj_dim": 32} if image else {}
    return dataclasses.replace(
        tiny,
        name="tiny-fun-inp" if image else "tiny-wan",
        repo_id=REPO,
        revision=REVISION,
        hub_layout="wan",
        transformer_config={**tiny.transformer_config, **extra},
        vae_config={**tiny.vae_config, "num_res_blocks": 2},
    )


@pytest.fixture(params=[True, False], ids=["img_emb", "no_img_emb"], scope="module")
def reference(request: pytest.FixtureRequest) -> tuple[BackbonePreset, WanTransformer3DModel, AutoencoderKLWan]:
    """A preset and the diffusers models built directly from its configs (random, seeded)."""
    preset = _preset(request.param)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        transformer = WanTransformer3DModel(**copy.deepcopy(preset.transformer_config)).eval()
        vae = AutoencoderKLWan(**copy.deepcopy(preset.vae_config)).eval()
        # Non-zero norms and modulation so that every tensor's mapping shows in the output.
        with torch.no_grad():
            for p in [*transformer.parameters(), *vae.parameters()]:
                p.add_(torch.randn_like(p) * 0.02)
    set_cross_attention(transformer, enabled=False)
    return preset, transformer, vae


@pytest.fixture
def registered(reference, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The reference preset registered, with a private conversion cache."""
    preset, transformer, vae = reference
    monkeypatch.setitem(BACKBONE_PRESETS, preset.name, preset)
    monkeypatch.setenv(backbone_files.BACKBONE_CACHE_ENV, str(tmp_path / "conversions"))
    return preset, transformer, vae


def _public_config(model: torch.nn.Module) -> str:
    return json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}, sort_keys=True)


def _assert_same_as_reference(backbone: Backbone, transformer: WanTransformer3DModel, vae: AutoencoderKLWan) -> None:
    g = torch.Generator().manual_seed(0)
    z_t, y = torch.randn(2, 16, *LATENT, generator=g), torch.randn(2, 16, *LATENT, generator=g)
    m, t = torch.rand(2, MASK_CHANNELS, *LATENT, generator=g), torch.rand(2, generator=g) * 1000
    text = torch.zeros(2, 1, transformer.config.text_dim)
    latents = torch.randn(1, 16, 2, 4, 4, generator=g)
    with torch.no_grad():
        expected = transformer(torch.cat([z_t, m, y], 1), t, text, return_dict=False)[0]
        assert (backbone.predict(z_t, y, m, t) - expected).abs().max().item() == 0.0
        decoded = vae.decode(latents).sample
        assert (backbone.vae.decode(latents).sample - decoded).abs().max().item() == 0.0
    for loaded, built in ((backbone.transformer, transformer), (backbone.vae, vae)):
        assert _public_config(loaded) == _public_config(built)
    reference = Backbone(transformer=transformer, vae=vae, preset=backbone.preset)
    assert backbone_fingerprint(backbone) == backbone_fingerprint(reference)


def test_wan_key_names_are_the_original_ones(reference) -> None:
    """Spot checks of the written names against the original Wan module tree."""
    preset, transformer, _ = reference
    names = {wan_transformer_name(k) for k in transformer.state_dict()}
    expected = {
        "patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias", "time_embedding.0.weight",
        "time_projection.1.weight", "blocks.0.self_attn.q.weight", "blocks.1.self_attn.o.bias",
        "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.k.weight", "blocks.0.norm3.weight",
        "blocks.0.ffn.0.weight", "blocks.1.ffn.2.bias", "blocks.0.modulation", "head.head.weight", "head.modulation",
    }  # fmt: skip
    if preset.transformer_config["image_dim"] is not None:
        expected |= {"img_emb.proj.0.weight", "img_emb.proj.4.bias", "blocks.0.cross_attn.k_img.weight",
                     "blocks.1.cross_attn.v_img.bias", "blocks.0.cross_attn.norm_k_img.weight"}  # fmt: skip
    assert expected <= names
    assert not any("attn1" in n or "to_q" in n or "norm2" in n or "condition_embedder" in n for n in names)


def test_original_wan_layout_converts_once_and_matches(registered, tmp_path: Path, monkeypatch) -> None:
    preset, transformer, vae = registered
    folder = write_wan_layout(tmp_path / "Wan2.1-Fun-tiny", transformer, vae)
    backbone = load_backbone(preset.name, path=folder)
    _assert_same_as_reference(backbone, transformer, vae)

    cache = tmp_path / "conversions"
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("wan-"), entries  # no partial folder left
    calls = []
    monkeypatch.setattr(backbone_files, "_save_converted", lambda *a: calls.append(a))
    again = load_backbone(preset.name, path=folder, dtype=torch.bfloat16)
    assert calls == [] and backbone_fingerprint(again) == backbone_fingerprint(backbone)

    # Other weights under the same file names are converted anew, not taken from the cache.
    monkeypatch.undo()
    monkeypatch.setitem(BACKBONE_PRESETS, preset.name, preset)
    monkeypatch.setenv(backbone_files.BACKBONE_CACHE_ENV, str(cache))
    changed = copy.deepcopy(transformer)
    with torch.no_grad():
        changed.proj_out.bias.add_(1.0)
    write_wan_layout(folder, changed, vae)
    assert backbone_fingerprint(load_backbone(preset.name, path=folder)) != backbone_fingerprint(backbone)
    assert len(list(cache.iterdir())) == 2


def test_diffusers_folder_matches(registered, tmp_path: Path) -> None:
    preset, transformer, vae = registered
    transformer.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    _assert_same_as_reference(load_backbone(preset.name, path=tmp_path), transformer, vae)


def _hf_cache_snapshot(cache: Path, repo: str, revision: str, files: Path) -> Path:
    """Lay ``files`` out as the Hugging Face cache does: blobs named by SHA-256, snapshot symlinks, refs."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / revision
    for source in sorted(p for p in files.rglob("*") if p.is_file()):
        data = source.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / source.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_id_offline_from_a_cache_snapshot(registered, tmp_path: Path, monkeypatch) -> None:
    preset, transformer, vae = registered
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    original = write_wan_layout(tmp_path / "files", transformer, vae)
    (original / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"never read")  # the cache may hold more
    _hf_cache_snapshot(tmp_path / "hub", REPO, REVISION, original)
    backbone = load_backbone(preset.name, cache_dir=tmp_path / "hub")
    _assert_same_as_reference(backbone, transformer, vae)
    # A file from the Hugging Face cache is hashed by its blob name, not read again.
    blob = next((tmp_path / "hub").rglob("snapshots/*/Wan2.1_VAE.pth"))
    assert backbone_files.file_digest(blob) == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert backbone_files.file_digest(blob) == Path(os.path.realpath(blob)).name


def test_hub_id_of_a_diffusers_repo_offline(registered, tmp_path: Path, monkeypatch) -> None:
    preset, transformer, vae = registered
    monkeypatch.setitem(BACKBONE_PRESETS, preset.name, dataclasses.replace(preset, hub_layout="diffusers"))
    files = tmp_path / "files"
    transformer.save_pretrained(files / "transformer")
    vae.save_pretrained(files / "vae")
    _hf_cache_snapshot(tmp_path / "hub", REPO, REVISION, files)
    _assert_same_as_reference(load_backbone(preset.name, cache_dir=tmp_path / "hub"), transformer, vae)


def test_hub_cache_through_hf_home_and_hf_hub_offline_in_a_fresh_process(registered, tmp_path: Path) -> None:
    """HF_HOME and HF_HUB_OFFLINE are read by huggingface_hub at import: check them in a new process."""
    preset, transformer, vae = registered
    original = write_wan_layout(tmp_path / "files", transformer, vae)
    _hf_cache_snapshot(tmp_path / "hf-home" / "hub", REPO, REVISION, original)
    transformer.save_pretrained(tmp_path / "diffusers" / "transformer")
    vae.save_pretrained(tmp_path / "diffusers" / "vae")
    code = (
        "import dataclasses, json, sys\n"
        "from divinr.models import backbone as b\n"
        "spec = dataclasses.replace(b.BACKBONE_PRESETS['tiny'], **json.loads(sys.argv[1]))\n"
        "b.BACKBONE_PRESETS[spec.name] = spec\n"
        "print(b.backbone_fingerprint(b.load_backbone(spec.name)).hex())\n"
    )
    fields = {k: getattr(preset, k) for k in ("name", "repo_id", "revision", "hub_layout", "transformer_config",
                                              "vae_config")}  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1",
           backbone_files.BACKBONE_CACHE_ENV: str(tmp_path / "conversions")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(fields)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    expected = backbone_fingerprint(load_backbone(preset.name, path=tmp_path / "diffusers"))
    assert result.stdout.strip().splitlines()[-1] == expected.hex()


def test_offline_without_the_files_names_id_revision_and_command(registered, tmp_path: Path) -> None:
    preset, transformer, vae = registered
    with pytest.raises(MissingWeightsError) as info:
        load_backbone(preset.name, cache_dir=tmp_path / "empty-hub", local_files_only=True)
    message = str(info.value)
    command = (
        f"hf download {REPO} --revision {REVISION} --include 'config.json' "
        f"--include 'diffusion_pytorch_model.safetensors' --include 'Wan2.1_VAE.pth'"
    )
    assert "\n" not in message and REPO in message and REVISION in message and command in message
    # A snapshot missing one of the files is reported the same way, not as a diffusers error.
    original = write_wan_layout(tmp_path / "files", transformer, vae)
    (original / "Wan2.1_VAE.pth").unlink()
    _hf_cache_snapshot(tmp_path / "hub", REPO, REVISION, original)
    with pytest.raises(MissingWeightsError, match="incomplete snapshot.*hf download"):
        load_backbone(preset.name, cache_dir=tmp_path / "hub", local_files_only=True)


def test_real_presets_fetch_only_what_divinr_reads() -> None:
    inp, t2v = BACKBONE_PRESETS["wan2.1-fun-1.3b-inp"], BACKBONE_PRESETS["wan2.1-t2v-1.3b"]
    assert inp.hub_files == ("config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth")
    assert t2v.hub_files == ("transformer/*", "vae/*")
    for preset in (inp, t2v):
        assert len(preset.revision) == 40 and int(preset.revision, 16) >= 0


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(registered, tmp_path: Path) -> None:
    preset, transformer, vae = registered
    folder = write_wan_layout(tmp_path / "files", transformer, vae)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(MissingWeightsError, match=r"missing \['blocks\.2\..*config\.json") as info:
        load_backbone(preset.name, path=folder)
    assert "\n" not in str(info.value)
    assert not any(p.name.startswith("wan-") for p in (tmp_path / "conversions").iterdir())


def test_full_size_fun_inp_on_meta_has_the_image_embedding_and_91_nola_layers() -> None:
    backbone = build_backbone_on_meta("wan2.1-fun-1.3b-inp")
    transformer = backbone.transformer
    assert transformer.config.in_channels == 36 and transformer.config.image_dim == 1280
    assert transformer.blocks[0].attn2.add_k_proj.weight.shape == (1536, 1536)
    names = inject_nola(transformer, NOLAConfig(), extra_targets=backbone.nola_extra_targets())
    assert len(names) == 91 and count_nola_coefficients(transformer) == 91_000
    frozen = sum(p.numel() for p in transformer.parameters() if not p.requires_grad)
    assert abs(frozen / 1e6 - 1564.4) < 0.1


def test_missing_local_folder_says_what_it_expected(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        load_backbone("wan2.1-fun-1.3b-inp", path=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "Wan2.1_VAE.pth" in message and "--local-dir DIR" in message
    assert "hf download alibaba-pai/Wan2.1-Fun-1.3B-InP --revision 7693adbe" in message


def test_a_mistyped_relative_folder_is_a_local_folder_not_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    """``weights/wan`` under an existing ``weights/`` is a local path; org/name with no such folder is a Hub id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    assert not backbone_files.is_hub_id("weights/wan") and backbone_files.is_hub_id("alibaba-pai/Wan2.1-Fun-1.3B-InP")
    with pytest.raises(MissingWeightsError, match="no backbone weights for preset .* at 'weights/wan'"):
        load_backbone("wan2.1-fun-1.3b-inp", path="weights/wan")


def test_speed_benchmark_weight_memory_of_the_full_fun_inp_on_meta() -> None:
    from benchmarks.speed import backbone_weight_bytes

    from divinr.models.backbone import _cast_like_diffusers

    backbone = build_backbone_on_meta("wan2.1-fun-1.3b-inp")
    _cast_like_diffusers(backbone.transformer, torch.bfloat16)
    dtypes = [p.dtype for p in backbone.transformer.parameters()]
    assert torch.bfloat16 in dtypes and torch.float32 in dtypes  # diffusers' fp32 modules stay fp32
    counts = {d: sum(p.numel() for p in backbone.transformer.parameters() if p.dtype == d) for d in set(dtypes)}
    vae = sum(p.numel() for p in backbone.vae.parameters())
    expected = 2 * counts[torch.bfloat16] + 4 * counts[torch.float32] + 4 * vae
    assert backbone_weight_bytes(backbone) == expected
    assert 3.1e9 < backbone_weight_bytes(backbone) < 3.8e9  # 1.56B bf16 DiT + fp32 VAE


@pytest.mark.slow
def test_full_size_random_fun_inp_in_the_original_layout_encodes_and_decodes(tmp_path: Path, monkeypatch) -> None:
    """About 3.1 GB of bf16 weights written as VideoX-Fun publishes them, then the whole CLI round trip on CPU."""
    from divinr.cli import main
    from divinr.data.video import write_video
    from divinr.models.backbone import build_random_backbone

    monkeypatch.setenv(backbone_files.BACKBONE_CACHE_ENV, str(tmp_path / "conversions"))
    random = build_random_backbone("wan2.1-fun-1.3b-inp", dtype=torch.bfloat16, seed=3)
    folder = write_wan_layout(tmp_path / "Wan2.1-Fun-1.3B-InP", random.transformer, random.vae)
    assert (folder / "diffusion_pytorch_model.safetensors").stat().st_size > 3e9
    del random
    clip = tmp_path / "clip.y4m"
    write_video(clip, torch.rand(5, 3, 64, 64), 25.0)
    stream, decoded = tmp_path / "clip.dvr", tmp_path / "decoded.y4m"
    common = ["--backbone-path", str(folder), "--device", "cpu"]
    assert main(["encode", str(clip), "-o", str(stream), "--backbone", "wan2.1-fun-1.3b-inp", *common,
                 "--resolution", "64x64", "--gop", "5", "--epochs", "1,0,0", "--steps", "1",
                 "--nola-bases", "8"]) == 0  # fmt: skip
    assert main(["decode", str(stream), "-o", str(decoded), *common]) == 0
    assert decoded.stat().st_size > 5 * 64 * 64 * 3 // 2

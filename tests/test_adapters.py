"""The adapter families: peft's LoRA and VeRA on NOLA's layers, coded like NOLA, decoded exactly.

The layer sets and parameter counts are checked at full size on the meta device; numerics and
the encode -> bitstream -> decode round trip (in separate processes) on the tiny backbone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, VeraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from adapter_streams import SMALL_INR, untrained_stream
from divinr.cli import stream_info
from divinr.compression import bitstream
from divinr.compression.bitstream import (
    ADAPTER_CODES,
    DIVINR_V4,
    FORMAT_VERSION,
    SCHEMA_V4,
    SCHEMAS,
    bits_breakdown,
    decode_tensors,
    read_header_schema,
    unpack,
)
from divinr.compression.container import read_container, section_bits, write_container
from divinr.compression.quant import enable_quant_noise, fake_quantize
from divinr.errors import BitstreamError, PresetError
from divinr.models import adapters
from divinr.models.adapters import (
    ADAPTERS,
    LoRAConfig,
    VeRAConfig,
    adapter_layers,
    adapter_owners,
    adapter_parameters,
    adapter_state_dict,
    count_adapter_parameters,
    eject_adapters,
)
from divinr.models.backbone import build_backbone_on_meta, load_backbone
from divinr.models.nola import DEFAULT_WAN_TARGETS, NOLAConfig, NOLALayer, nola_state_dict, select_targets
from divinr.training.encoder import EncoderConfig

DATA = Path(__file__).parent / "data"
TESTS = Path(__file__).parent
CONFIGS = {"nola": NOLAConfig(rank=4, num_bases=8), "lora": LoRAConfig(rank=2), "vera": VeRAConfig(rank=4, seed=5)}
LAYERS = {"tiny": 7, "mini": 13, "wan2.1-fun-1.3b-inp": 91}


def adapted(preset: str, config: object):
    """A backbone of ``preset`` (real weights for tiny, the meta device otherwise) adapted with ``config``."""
    backbone = load_backbone("tiny") if preset == "tiny" else build_backbone_on_meta(preset)
    return backbone, backbone.adapt(config)


# -- the layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(LAYERS))
def test_lora_and_vera_are_peft_tuners_on_exactly_the_layers_nola_adapts(preset: str) -> None:
    targets = list(select_targets(build_backbone_on_meta(preset).transformer, DEFAULT_WAN_TARGETS))
    for name, config in CONFIGS.items():
        backbone, names = adapted(preset, config)
        kind = NOLALayer if name == "nola" else BaseTunerLayer
        found = sorted(n for n, m in backbone.transformer.named_modules() if isinstance(m, kind))
        assert names == targets and found == sorted(targets) and len(names) == LAYERS[preset], name
        if name != "nola":
            peft_config = backbone.transformer.peft_config["default"]
            assert isinstance(peft_config, LoraConfig if name == "lora" else VeraConfig)
            assert peft_config.r == config.rank
            assert {type(m).__module__ for m in adapter_layers(backbone.transformer).values()} == {f"peft.tuners.{name}.layer"}
            trained = set(adapter_parameters(backbone.transformer))
            assert all(p.requires_grad == (k in trained) for k, p in backbone.transformer.named_parameters())


# Trained parameters on the meta device: NOLA's 2 b per layer; LoRA r (in + out) per layer; VeRA
# r + out per layer (the documented counts of divinr.models.adapters and the ablation config).
COUNTS = {"mini": (13_000, 6_336, 3_136, 13), "wan2.1-fun-1.3b-inp": (91_000, 723_520, 361_024, 91)}


@pytest.mark.parametrize("preset", list(COUNTS))
def test_parameter_counts_at_matched_adapter_bits(preset: str) -> None:
    nola, lora_per_rank, vera_base, vera_per_rank = COUNTS[preset]

    def count(config: object) -> int:
        return count_adapter_parameters(adapted(preset, config)[0].transformer)

    assert count(NOLAConfig()) == nola
    for rank in (1, 2):
        assert count(LoRAConfig(rank=rank)) == lora_per_rank * rank
        assert count(VeRAConfig(rank=rank)) == vera_base + vera_per_rank * rank
    if preset == "wan2.1-fun-1.3b-inp":  # no rank matches NOLA: the defaults are the smallest ranks
        assert LoRAConfig().rank == VeRAConfig().rank == 1
        assert count(LoRAConfig()) > nola and count(VeRAConfig()) > nola


def test_a_widened_backbone_keeps_nola_and_refuses_peft_with_the_fix() -> None:
    """The text-to-video backbone adapts only the 20 new input channels of its patch embedding,
    which peft cannot express."""
    assert len(adapted("wan2.1-t2v-1.3b", NOLAConfig())[1]) == 92
    for config in (LoRAConfig(), VeRAConfig()):
        with pytest.raises(PresetError, match=r"cannot adapt only some input channels of \['patch_embedding'\].*adapter nola"):
            adapted("wan2.1-t2v-1.3b", config)


# -- the tensors ---------------------------------------------------------------------------------
def test_nola_adapter_tensors_are_its_coefficients_in_the_same_order() -> None:
    """What the codec now codes for NOLA (adapter_state_dict) is what it coded before (nola_state_dict)."""
    backbone, _ = adapted("tiny", CONFIGS["nola"])
    generic, own = adapter_state_dict(backbone.transformer), nola_state_dict(backbone.transformer)
    assert list(generic) == list(own) and all(torch.equal(generic[k], own[k]) for k in own)


@pytest.mark.parametrize("adapter", ["lora", "vera"])
def test_quant_noise_reaches_the_peft_tensors_and_keeps_their_keys(adapter: str) -> None:
    backbone, _ = adapted("tiny", CONFIGS[adapter])
    transformer = backbone.transformer
    with torch.no_grad():
        for param in adapter_parameters(transformer).values():
            param.uniform_(-1, 1)
    inputs = {"hidden_states": torch.randn(1, 36, 2, 8, 8, generator=torch.Generator().manual_seed(1)),
              "timestep": torch.tensor([500.0]), "encoder_hidden_states": torch.zeros(1, 1, 32), "return_dict": False}
    keys, params = list(adapter_parameters(transformer)), list(adapter_parameters(transformer).values())
    plain = transformer(**inputs)[0]
    handle = enable_quant_noise(adapter_owners(transformer), bits=2, rho=1.0)
    transformer.eval()
    assert list(adapter_parameters(transformer)) == keys
    assert all(a is b for a, b in zip(adapter_parameters(transformer).values(), params))
    assert not torch.allclose(transformer(**inputs)[0], plain)
    handle.remove()
    assert torch.equal(transformer(**inputs)[0], plain)


def test_loras_initial_values_are_seeded_and_leave_the_global_generator_alone() -> None:
    def initial(seed: int) -> dict[str, torch.Tensor]:
        backbone = load_backbone("tiny")
        backbone.adapt(LoRAConfig(rank=2), init_seed=seed)
        return adapter_state_dict(backbone.transformer)

    state = torch.random.get_rng_state()
    first, again, other = initial(1), initial(1), initial(2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


@pytest.mark.parametrize("adapter", ["lora", "vera"])
def test_the_training_module_trains_checkpoints_and_quantises_exactly_the_adapter_tensors(adapter: str) -> None:
    from divinr.models.inr import build_inr, inr_config
    from divinr.training.module import DiVINRModule
    from divinr.training.stages import paper_phases

    backbone, _ = adapted("tiny", CONFIGS[adapter])
    module = DiVINRModule(backbone, build_inr(inr_config("xxs", num_latent_frames=2, **SMALL_INR), (4, 4)), paper_phases(1, 0, 1))
    keys = [f"transformer.{k}" for k in adapter_parameters(backbone.transformer)]
    assert [k for k in module.trainable_state_dict() if not k.startswith("inr.")] == keys
    groups = {g["name"]: g["params"] for g in module.configure_optimizers().param_groups}
    assert groups["adapter"] == list(adapter_parameters(backbone.transformer).values())
    owners = module.quantised_targets()[-len(keys):]
    assert [getattr(owner, attr) is param for (owner, attr), param in zip(owners, groups["adapter"])] == [True] * len(keys)


def test_ejecting_restores_the_backbone_as_loaded() -> None:
    reference = load_backbone("tiny").transformer.state_dict()
    for config in CONFIGS.values():
        backbone, _ = adapted("tiny", config)
        eject_adapters(backbone.transformer)
        state = backbone.transformer.state_dict()
        assert not adapter_layers(backbone.transformer) and not hasattr(backbone.transformer, "peft_config")
        assert list(state) == list(reference) and all(torch.equal(state[k], reference[k]) for k in reference)
        assert backbone.adapt(config)  # and it adapts again


# -- the header and the adapter section ----------------------------------------------------------
def test_the_header_names_the_family_and_carries_its_settings() -> None:
    data, _ = untrained_stream("vera")
    schema, values = read_header_schema(data)
    assert schema is DIVINR_V4 and schema.version == FORMAT_VERSION == 4
    assert (values["adapter"], values["vera_rank"], values["vera_seed"]) == (ADAPTER_CODES["vera"], 4, 5)
    header = unpack(data).header
    assert header.adapter == "vera" and header.adapter_config == VeRAConfig(rank=4, seed=5)
    assert header.lora == LoRAConfig() and header.nola == NOLAConfig()  # the unused families: defaults
    info = stream_info(data)
    assert info["adapter"] == "vera" and info["vera"] == {"layers": 7, "rank": 4, "seed": 5} and "nola" not in info
    assert unpack(untrained_stream("lora")[0]).header.adapter_config == LoRAConfig(rank=2, alpha=3.0)
    # The section must be the family's: a header naming another family is refused before decoding.
    _, values, sections = read_container(data, SCHEMAS)
    assert [name for name, _ in sections] == ["inr", "vera"]
    for family in ("lora", "nola"):
        relabelled = write_container(SCHEMA_V4, {**values, "adapter": ADAPTER_CODES[family]}, sections, version=FORMAT_VERSION)
        with pytest.raises(BitstreamError, match=rf"sections \['inr', 'vera'\] disagree with the header, .* so implies \['inr', '{family}'\]"):
            unpack(relabelled)


def test_the_header_bounds_are_the_configs() -> None:
    assert list(ADAPTERS) == list(ADAPTER_CODES)
    assert (bitstream.MAX_LORA_RANK, bitstream.MAX_VERA_RANK, bitstream.MAX_LORA_ALPHA) == (
        adapters.MAX_LORA_RANK, adapters.MAX_VERA_RANK, adapters.MAX_LORA_ALPHA,
    )


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_the_adapter_bits_are_the_adapter_section_holding_every_quantised_tensor(adapter: str) -> None:
    data, tensors = untrained_stream(adapter)
    _, _, sections = read_container(data, SCHEMAS)
    [(name, payload)] = [(n, p) for n, p in sections if n != "inr"]
    bits = bits_breakdown(data)
    assert name == adapter and bits["adapter"] == section_bits(name, payload) == 8 * (1 + len(name) + 4 + len(payload))
    assert bits["header"] + bits["inr"] + bits["adapter"] == bits["total"] == 8 * len(data) and stream_info(data)["bits"] == bits
    stream = unpack(data)
    backbone = load_backbone("tiny")
    assert len(backbone.adapt(stream.header.adapter_config)) == stream.header.nola_layers == 7
    shapes = {k: tuple(v.shape) for k, v in adapter_parameters(backbone.transformer).items()}
    assert shapes == {k: tuple(v.shape) for k, v in tensors.items()}  # what the header implies is what was coded
    decoded = decode_tensors(stream.adapter_section, shapes, stream.header.quant_bits)
    assert all(torch.equal(decoded[k], fake_quantize(tensors[k], stream.header.quant_bits)) for k in tensors)


# -- settings ------------------------------------------------------------------------------------
def test_bad_adapter_settings_say_what_to_do() -> None:
    with pytest.raises(PresetError, match="unknown adapter 'dora'; choose one of: lora, nola, vera"):
        EncoderConfig(adapter="dora")
    with pytest.raises(PresetError, match=r"LoRA rank must be in 1\.\.256, got 0; rank 1 is the closest"):
        LoRAConfig(rank=0)
    with pytest.raises(PresetError, match=r"VeRA rank must be in 1\.\.1024, got 0; rank 1 is the closest"):
        VeRAConfig(rank=0)
    with pytest.raises(PresetError, match=r"LoRA alpha must be in \(0, 1024\], got 0.0"):
        LoRAConfig(alpha=0.0)
    with pytest.raises(PresetError, match="VeRA seed must be in 0..2\\^32-1, got -1"):
        VeRAConfig(seed=-1)
    backbone, _ = adapted("tiny", LoRAConfig())
    with pytest.raises(PresetError, match="already has adapters; adapt a freshly loaded model"):
        backbone.adapt(VeRAConfig())
    assert EncoderConfig(adapter="vera", vera=VeRAConfig(rank=3)).adapter_config == VeRAConfig(rank=3)


# -- encode -> bitstream -> decode in another process ----------------------------------------------
ENCODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from adapter_streams import small_config
    from divinr.codec import DiVINRCodec, load_clip
    from divinr.codec.divinr import pack_module
    from divinr.compression.quant import fake_quantize
    from divinr.data.samples import sample_clip_path
    from divinr.inference.decoder import decode_stream
    from divinr.models.adapters import adapter_layers, adapter_state_dict, eject_adapters, load_adapter_state_dict, merge_adapters
    from divinr.models.backbone import load_backbone
    from divinr.training.stages import paper_phases
    video = load_clip(sample_clip_path("bikes"), width=32, height=32, max_frames=5)
    out = {}
    for adapter in ("lora", "vera"):
        config = small_config(adapter, phases=paper_phases(2, 0, 1))
        trained = DiVINRCodec(config, progress=False).train(video)
        transformer = trained.module.transformer
        state = adapter_state_dict(transformer)
        data = pack_module(trained.module, trained.header)
        open(f"{sys.argv[1]}/{adapter}.dvr", "wb").write(data)
        # The encoder's adapted weights: W0 plus the update of its quantised tensors.
        fresh = load_backbone("tiny")
        fresh.adapt(config.adapter_config)
        load_adapter_state_dict(fresh.transformer, {k: fake_quantize(v, config.quant_bits) for k, v in state.items()})
        merge_adapters(fresh.transformer)
        out[adapter] = {
            "state": state,
            "projections": {k: v.clone() for k, v in transformer.named_buffers() if ".vera_" in k},
            "weights": {n: layer.get_base_layer().weight.clone() for n, layer in adapter_layers(fresh.transformer).items()},
        }
        eject_adapters(transformer)  # the codec's reconstruction: the decoder's path on the training backbone
        out[adapter]["frames"] = decode_stream(
            data, trained.module.backbone, device="cpu", progress=False, fingerprint=trained.header.backbone_fingerprint
        ).frames
    torch.save(out, f"{sys.argv[1]}/encoder.pt")
    """
)
DECODE = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from divinr.compression.bitstream import unpack
    from divinr.inference.decoder import prepare_stream, reconstruct
    from divinr.models.adapters import adapter_layers
    from divinr.models.backbone import load_backbone
    out = {}
    for adapter in ("lora", "vera"):
        stream = unpack(open(f"{sys.argv[1]}/{adapter}.dvr", "rb").read())
        backbone = load_backbone(stream.header.backbone)
        condition = prepare_stream(stream, backbone)
        out[adapter] = {
            "projections": {k: v.clone() for k, v in backbone.transformer.named_buffers() if ".vera_" in k},
            "weights": {n: layer.get_base_layer().weight.clone() for n, layer in adapter_layers(backbone.transformer).items()},
            "frames": reconstruct(backbone, stream, condition, progress=False).frames,
        }
    torch.save(out, f"{sys.argv[1]}/decoder.pt")
    """
)


def run_python(code: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=env, timeout=600, capture_output=True)


def test_lora_and_vera_streams_decode_in_another_process_to_the_encoders_adapted_weights(tmp_path: Path) -> None:
    """One process trains (with Quant-Noise) and codes; a fresh one decodes. The decoder's merged
    weights equal the encoder's own weights under its quantised tensors bit for bit, VeRA's
    projections regenerate bit-identically from the seed, and the frames equal the encoder's
    reconstruction."""
    run_python(ENCODE, str(tmp_path))
    run_python(DECODE, str(tmp_path))
    encoder, decoder = (torch.load(tmp_path / f"{side}.pt", weights_only=True) for side in ("encoder", "decoder"))
    initial = load_backbone("tiny").transformer
    for adapter in ("lora", "vera"):
        enc, dec = encoder[adapter], decoder[adapter]
        trained = "lora_B" if adapter == "lora" else "vera_lambda_b"  # zero at initialisation
        assert all(v.abs().sum() > 0 for k, v in enc["state"].items() if trained in k), "training did not move the adapters"
        assert list(enc["weights"]) == list(dec["weights"]) and len(dec["weights"]) == 7
        for name, weight in dec["weights"].items():
            assert torch.equal(weight, enc["weights"][name]), (adapter, name)
            assert not torch.equal(weight, initial.get_submodule(name).weight), (adapter, name)
        assert list(enc["projections"]) == list(dec["projections"]) and len(dec["projections"]) == (2 if adapter == "vera" else 0)
        assert all(torch.equal(dec["projections"][k], v) for k, v in enc["projections"].items())
        assert torch.equal(enc["frames"], dec["frames"]) and dec["frames"].shape == (5, 3, 32, 32)
        stream = unpack((tmp_path / f"{adapter}.dvr").read_bytes())
        assert stream.header.adapter == adapter and stream.header.nola_layers == 7

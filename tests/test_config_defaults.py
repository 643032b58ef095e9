"""Each setting is declared once: group YAMLs, the CLI and the speed benchmark agree with the library.

The library's values are read here from instances and signatures (``EncoderConfig()``,
``paper_phases()``, constructors), not from the Hydra schema, so a schema, YAML file or flag that
drifts from them fails. The only values allowed to differ are the deltas declared below, each
with its reason; a YAML file may set nothing else (and nothing equal to the default).
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import experiments
from divinr.anchors import CODECS
from divinr.cli import CLI_BACKBONE, build_parser
from divinr.codec import decompress, load_clip
from divinr.training.encoder import EncoderConfig
from divinr.training.gop_jobs import GoPLauncher
from divinr.data.datasets import sequence_source
from divinr.data.video import read_video
from divinr.inference.decoder import DEFAULT_MEMORY_BUDGET
from divinr.training.stages import paper_phases
from experiments.schema import DivinrConfig, register_configs

CONF_DIR = Path(experiments.__file__).resolve().parent / "conf"
GROUPS = ("anchor", "backbone", "data", "inr", "logger", "nola", "sampler", "training")
WAN_PATH = "${oc.env:DIVINR_BACKBONE_PATH,null}"
#: What a group option changes, by design; every other library setting must come through as is.
DELTAS: dict[str, dict[str, Any]] = {
    # the pretrained CPU backbone; the library's default (tiny) is the random one of the tests
    "backbone/mini": {"preset": "mini"},
    # the 1.3B DiT does not fit training memory without recomputing activations
    "backbone/wan2.1-fun-1.3b-inp": {"preset": "wan2.1-fun-1.3b-inp", "path": WAN_PATH, "gradient_checkpointing": True},
    "backbone/wan2.1-t2v-1.3b": {"preset": "wan2.1-t2v-1.3b", "path": WAN_PATH, "gradient_checkpointing": True},
    **{f"data/{d}": {"source": "dataset", "clip": None, "dataset": d} for d in ("jvetb", "mcl_jcv", "uvg")},
    "logger/none": {"name": "none"},
    "logger/wandb": {"name": "wandb"},
    # the paper's VTM release, for the label (the binaries are not asked)
    "anchor/vtm": {"kwargs.version": "23.11"},
    # busy 1024x576 footage needs QP 57 for DiV-INR's rates; the library's 52..17 suits smooth clips
    "anchor/vvenc": {"kwargs.qps": [57, 52, 47, 42, 37, 32, 27, 22]},
}
#: CLI flags (by dest) that differ from the library on purpose.
CLI_DELTAS = {"backbone": CLI_BACKBONE}
#: Encode flags with no library default behind them (files, or "the preset / adapter family decides").
CLI_ONLY = {"input", "output", "gradient_checkpointing", "input_size", "fps", "workdir", "recon", "adapter_rank"}


def _defaults(function: Any) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(function).parameters.values()}


def library_settings() -> dict[str, dict[str, Any]]:
    """Group -> config key -> the value the library uses when it is not told otherwise."""
    encoder = EncoderConfig()
    dense, prune, quant = paper_phases()
    data = _defaults(sequence_source)
    settings = {
        "": {
            "gop_size": encoder.gop_size, "mask_mode": encoder.mask_mode, "adapter": encoder.adapter,
            "conditioning": encoder.conditioning, "keyframe_quality": encoder.keyframe_quality,
        },
        "backbone": {
            "preset": encoder.backbone, "path": encoder.backbone_path,
            "gradient_checkpointing": encoder.gradient_checkpointing,
        },
        "inr": {"preset": encoder.inr, "overrides": encoder.inr_overrides},
        "nola": {k: v for k, v in dataclasses.asdict(encoder.nola).items() if k != "target_modules"},
        "sampler": dataclasses.asdict(encoder.sampler),
        "training": {
            "dense_epochs": dense.epochs, "prune_epochs": prune.epochs, "quant_epochs": quant.epochs,
            "inr_lr": dense.inr_lr, "nola_lr": dense.nola_lr, "prune_fraction": prune.prune_fraction,
            "rho": quant.quant_noise, "bits": encoder.quant_bits, **dataclasses.asdict(encoder.loss),
            "weight_decay": encoder.weight_decay, "seed": encoder.seed, "device": encoder.device,
            "precision": encoder.precision,
        },
        "data": {
            "width": data["width"], "height": data["height"], "max_frames": data["max_frames"],
            "start": _defaults(load_clip)["start"],
        },
    }
    for name, cls in CODECS.items():
        settings[f"anchor/{name}"] = {
            f"kwargs.{k}": "???" if v is inspect.Parameter.empty else list(v) if isinstance(v, tuple) else v
            for k, v in _defaults(cls).items()
        }
    return settings


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _compose(*overrides: str) -> dict[str, Any]:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=False)


def _options() -> list[str]:
    return sorted(f"{g}/{p.stem}" for g in GROUPS for p in (CONF_DIR / g).glob("*.yaml"))


def _choices(defaults: list[Any]) -> dict[str, str]:
    """Group -> option of a defaults list (``override /group: option`` or ``group: option`` entries)."""
    entries = [next(iter(e.items())) for e in defaults if isinstance(e, dict)]
    return {group.removeprefix("override /"): option for group, option in entries}


def test_the_peft_adapter_settings_are_the_library_defaults() -> None:
    """``lora`` and ``vera`` are plain nodes of the root schema (no group options): they come
    through from ``LoRAConfig`` and ``VeRAConfig`` unchanged."""
    encoder = EncoderConfig()
    composed = _compose()
    assert composed["lora"] == dataclasses.asdict(encoder.lora) and composed["vera"] == dataclasses.asdict(encoder.vera)


def test_every_group_has_options_and_every_delta_an_option() -> None:
    assert all(any(f.startswith(f"{g}/") for f in _options()) for g in GROUPS)
    assert set(DELTAS) <= set(_options())


@pytest.mark.parametrize("option", _options())
def test_group_option_keeps_the_library_defaults(option: str) -> None:
    """The drift test: every library setting reaches the composed config unchanged, unless declared."""
    group, name = option.split("/")
    composed = _compose(f"{group}={name}")
    settings = library_settings()
    library = settings.get(option) or settings.get(group, {})  # logger: no library setting behind it
    values = _flat(composed[group])
    deltas = DELTAS.get(option, {})
    for key, default in library.items():
        assert values[key] == deltas.get(key, default), f"{option}: {key}"
    for key, value in deltas.items():
        assert library.get(key, "not a library setting") != value, f"{option}: {key} restates the library default"
    assert {k: composed[k] for k in settings[""]} == settings[""]


@pytest.mark.parametrize("option", _options())
def test_group_yaml_holds_only_its_deltas(option: str) -> None:
    """A group file sets exactly its declared deltas, none of them equal to the schema's default."""
    group = option.split("/")[0]
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{option}.yaml")) or {}
    raw.pop("defaults", None)
    written = _flat(raw) if raw else {}
    assert written == DELTAS.get(option, {})
    schema = _flat(OmegaConf.to_container(OmegaConf.structured(DivinrConfig))[group] or {})
    for key, value in written.items():
        assert schema.get(key, "not in the schema") != value, f"{option}: {key} restates the schema default"


@pytest.mark.parametrize("path", sorted((CONF_DIR / "exp").glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_sets_only_what_it_changes(path: Path) -> None:
    """An experiment's group choices and settings each differ from what it is applied to."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    choices = _choices(raw.pop("defaults", []))
    roots = _choices(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"])
    for group, option in choices.items():
        assert roots[group] != option, f"{path.stem}: override /{group}: {option} is already the default"
    raw.pop("hydra", None)
    base = _flat(_compose(*(f"{group}={option}" for group, option in choices.items())))
    for key, value in _flat(raw).items():
        assert base.get(key, "not set") != value, f"{path.stem}: {key}={value} is already the default"


def test_cli_defaults_are_the_library_defaults() -> None:
    encoder = EncoderConfig()
    dense, prune, quant = paper_phases()
    clip, video = _defaults(load_clip), _defaults(read_video)
    library = {
        "backbone": encoder.backbone,
        "backbone_path": encoder.backbone_path,
        "inr_size": encoder.inr,
        "target_bpp": encoder.target_bpp,
        "epochs": (dense.epochs, prune.epochs, quant.epochs),
        "resolution": (_defaults(sequence_source)["width"], _defaults(sequence_source)["height"]),
        "frames": clip["max_frames"],
        "start": clip["start"],
        "seed": encoder.seed,
        "steps": encoder.sampler.steps,
        "gop": encoder.gop_size,
        "nola_bases": encoder.nola.num_bases,
        "adapter": encoder.adapter,
        "conditioning": encoder.conditioning,
        "keyframe_quality": encoder.keyframe_quality,
        "granularity": encoder.granularity,
        "nola_scope": encoder.nola_scope,
        "gop_workers": GoPLauncher().workers,
        "device": encoder.device,
        "bit_depth": video["bit_depth"],
    }
    parser = build_parser()
    args = vars(parser.parse_args(["encode", "in.mp4", "-o", "out.dvr"]))  # every flag the parser declares
    assert set(args) - {"command"} == set(library) | CLI_ONLY, "classify each new encode flag"
    for dest, default in library.items():
        assert args[dest] == CLI_DELTAS.get(dest, default), dest
    for dest, value in CLI_DELTAS.items():
        assert library[dest] != value, f"--{dest} restates the library default"
    decode = vars(parser.parse_args(["decode", "in.dvr", "-o", "out.mp4"]))
    assert decode["max_memory"] * 2**30 == DEFAULT_MEMORY_BUDGET
    assert decode["device"] == _defaults(decompress)["device"]


def test_speed_benchmark_defaults_are_the_papers_geometry() -> None:
    from benchmarks.speed import parse_args

    args = parse_args(["--device", "cpu"])
    encoder = EncoderConfig()
    data = _defaults(sequence_source)
    assert (*args.size, args.gop, args.steps) == (
        data["width"], data["height"], encoder.gop_size, encoder.sampler.steps
    )


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return proc.stdout.strip()


def test_reporting_does_not_import_wandb() -> None:
    assert _run("import sys, divinr.reporting; print('wandb' in sys.modules)") == "False"


def test_imports_leave_warning_filters_and_config_store_alone() -> None:
    """Importing these modules changes no process-wide warning filter and registers no config.

    The third-party packages are imported first: their own import-time filters are not ours.
    """
    modules = (
        "divinr.reporting", "divinr.cli", "divinr.anchors", "divinr.data.datasets", "divinr.training.stages",
        "divinr.codec", "divinr.training.encoder", "divinr.training.trainer",
        "experiments.schema", "experiments.wandb_logging", "experiments.callbacks", "experiments.points",
        "experiments.anchors",
    )
    code = (
        "import importlib, warnings\n"
        "import torch, lightning, diffusers, accelerate, hydra, matplotlib\n"
        "from hydra.core.config_store import ConfigStore\n"
        "before = list(warnings.filters)\n"
        f"changed = [m for m in {modules!r} if importlib.import_module(m) and warnings.filters != before]\n"
        "stored = sorted(k for k in ConfigStore.instance().repo if 'divinr' in k or k == 'anchor')\n"
        "print(changed, stored)\n"
    )
    assert _run(code) == "[] []"

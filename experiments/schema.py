"""Structured configs of the experiment layer, made from the library's own dataclasses.

Each group mirrors the library constructor it feeds (``backbone`` -> ``load_backbone``,
``inr`` -> ``inr_config``, ``nola`` / ``lora`` / ``vera`` -> ``NOLAConfig`` / ``LoRAConfig`` /
``VeRAConfig`` (the root's ``adapter`` picks one), ``training`` -> ``paper_phases`` /
``Phase`` + ``LossConfig``, ``sampler`` -> ``SamplerConfig``, ``data`` -> ``load_clip`` /
``sequence_source``, ``anchor`` -> a reference codec's constructor). The fields, types and
defaults of those groups are read from the library (``dataclasses.fields``, signatures), so a
default is declared once, where the library declares it, and the group YAMLs hold only what an
option changes. Registered in Hydra's ConfigStore by :func:`register_configs` (the entry point
calls it), they make every YAML file and command-line override type-checked at composition: a
mistyped key (``inr.presett=s``) or a wrong type fails before anything runs.

    library dataclasses / signatures --library_fields--> NOLAConf, SamplerConf, TrainingConf, ...
    conf/config.yaml --defaults--> divinr_schema (DivinrConfig) + group YAMLs + exp/<name>.yaml
                     --compose---> DictConfig --experiments.run--> EncoderConfig, Video, loggers
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from divinr.anchors import CODECS
from divinr.codec import load_clip
from divinr.training.encoder import EncoderConfig
from divinr.data.datasets import sequence_source
from divinr.inference.sampler import SamplerConfig
from divinr.metrics.evaluate import METRICS
from divinr.models.adapters import LoRAConfig, VeRAConfig
from divinr.models.nola import NOLAConfig
from divinr.training.losses import LossConfig
from divinr.training.stages import Phase, paper_phases

#: One field of a generated schema: (name, type, ``dataclasses.field``), as ``make_dataclass`` takes it.
SchemaField = tuple[str, Any, Any]


def library_fields(
    source: type | Callable[..., Any], names: Sequence[str] | None = None, *, rename: Mapping[str, str] | None = None
) -> list[SchemaField]:
    """Fields of a library dataclass, or keyword parameters of a library function, with their defaults.

    Args:
        source: a dataclass (its fields) or a function (its parameters).
        names: the ones to take, in this order (default: all).
        rename: library name -> config key, where the config spells it otherwise.

    Returns:
        ``make_dataclass`` field specs; one without a default is mandatory (``???``).
    """
    hints = typing.get_type_hints(source)
    if dataclasses.is_dataclass(source):
        defaults = {
            f.name: field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else field(default=MISSING if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(source)
        }
    else:
        defaults = {
            p.name: field(default=MISSING if p.default is p.empty else p.default)
            for p in inspect.signature(source).parameters.values()
        }
    rename = rename or {}
    return [(rename.get(n, n), hints[n], defaults[n]) for n in (defaults if names is None else names)]


def library_kwargs(source: type | Callable[..., Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments to call ``source`` with: what a composed group holds for each of its
    fields or parameters (the inverse of :func:`library_fields` without renaming)."""
    if dataclasses.is_dataclass(source):
        return {f.name: node[f.name] for f in dataclasses.fields(source)}
    return {name: node[name] for name in inspect.signature(source).parameters}


def schema(name: str, doc: str, fields: Sequence[SchemaField]) -> type:
    """A (mutable, so Hydra can merge into it) dataclass of ``fields``, documented by ``doc``."""
    cls = dataclasses.make_dataclass(name, fields, namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


BackboneConf = schema(
    "BackboneConf",
    """Arguments of ``divinr.models.backbone.load_backbone``.

    ``path`` is a local diffusers folder, a local folder of original Wan / VideoX-Fun files
    (converted once, cached) or a Hub id; None loads the folder the preset ships (``mini``) or
    the preset's own Hub id at its pinned revision, through the Hugging Face cache.
    """,
    library_fields(
        EncoderConfig, ("backbone", "backbone_path", "gradient_checkpointing"),
        rename={"backbone": "preset", "backbone_path": "path"},
    ),
)
INRConf = schema(
    "INRConf",
    """``inr_config(preset, **overrides)``; overrides are INRConfig fields (checked by the library).
    ``target_bpp`` sizes the INR for that rate instead of ``preset`` (``divinr.rate_control``).""",
    library_fields(
        EncoderConfig, ("inr", "inr_overrides", "target_bpp"), rename={"inr": "preset", "inr_overrides": "overrides"}
    ),
)
NOLAConf = schema(
    "NOLAConf",
    """``NOLAConfig`` fields (target modules keep the library's Wan default).""",
    [f for f in library_fields(NOLAConfig) if f[0] != "target_modules"],
)
LoRAConf = schema("LoRAConf", """``LoRAConfig`` fields (used when ``adapter=lora``).""", library_fields(LoRAConfig))
VeRAConf = schema("VeRAConf", """``VeRAConfig`` fields (used when ``adapter=vera``).""", library_fields(VeRAConfig))
PhaseConf = schema(
    "PhaseConf",
    """One explicit ``Phase`` (name and epochs are mandatory); its Quant-Noise width is ``training.bits``.""",
    [f for f in library_fields(Phase) if f[0] != "quant_bits"],
)
TrainingConf = schema(
    "TrainingConf",
    """The stage schedule, loss schedule and where training runs.

    Without ``phases`` the schedule is ``paper_phases(dense_epochs, prune_epochs, quant_epochs,
    ...)``; a list of :class:`PhaseConf` replaces it entirely.
    """,
    [
        *library_fields(paper_phases),
        ("phases", list[PhaseConf] | None, field(default=None)),
        *library_fields(LossConfig),
        *library_fields(EncoderConfig, ("weight_decay", "seed", "device", "precision")),
    ],
)
SamplerConf = schema(
    "SamplerConf", """``SamplerConfig`` fields (they travel in the bitstream header).""", library_fields(SamplerConfig)
)


DataConf = schema(
    "DataConf",
    """Where the frames come from and the coding resolution.

    ``source=clip``: ``clip`` is a sample-clip name (``bikes``) or a video file path.
    ``source=dataset``: ``dataset``/``sequence`` name a registered sequence under ``root``
    (None: ``$DIVINR_DATA_ROOT``). ``start`` (first frame) applies to clips only.
    """,
    [
        ("source", str, field(default="clip")),
        ("clip", str | None, field(default="bikes")),
        ("dataset", str | None, field(default=None)),
        ("sequence", str | None, field(default=None)),
        ("root", str | None, field(default=None)),
        *library_fields(sequence_source, ("width", "height", "max_frames")),
        *library_fields(load_clip, ("start",)),
    ],
)


@dataclass
class LoggerConf:
    """Training-curve logger: ``none``, ``csv`` (in the run folder) or ``wandb``.

    ``mode`` None lets ``experiments.wandb_logging.wandb_mode`` choose (offline without an API key).
    ``sample_frames``/``video_frames``: how many frames W&B gets as images and as a clip.
    """

    name: str = "csv"
    project: str = "divinr"
    entity: str | None = None
    mode: str | None = None
    sample_frames: int = 3
    video_frames: int = 48


@dataclass
class AnchorConf:
    """A reference codec: ``divinr.anchors.build_codec(name, **kwargs)``.

    ``kwargs`` are the codec class's constructor arguments (checked by the class); its rate
    sweep (``qps``, or ``presets`` for HiNeRV) lists the points, each written to its own folder.
    ``label`` replaces the codec's own description. The group option ``anchor/<name>.yaml``
    starts from ``<name>_defaults``, the class's own constructor defaults
    (:func:`register_configs`), and holds only what differs from them.
    """

    name: str = MISSING
    label: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GoPJobsConf:
    """Where the GoPs of ``granularity=gop`` with per-GoP adapters train
    (:class:`~divinr.training.gop_jobs.GoPLauncher`): ``inline`` (this job, in turn), ``local``
    (``workers`` processes here) or ``slurm`` (an array, ``workers`` at once, 0 = no limit;
    ``slurm`` holds submitit's parameters, e.g. ``slurm_partition``, ``gpus_per_node``,
    ``timeout_min``; ``threads``: torch threads of a local job, null = cores / workers). Not a
    setting of the stream: changing it never invalidates a point."""

    kind: str = "inline"
    workers: int = 1
    timeout_min: int = 24 * 60
    threads: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class DivinrConfig:
    """Root config of one rate point of one sequence.

    The point's folder is ``results_root/exp_name/<dataset or clip>/<sequence>/rate_point``;
    ``rate_point`` must name everything that differs between the points of a sweep (an
    ablation adds tags such as ``-b500`` or ``jpeg-q30``; ``${inr_size:}`` is the INR preset, or
    ``bpp<target>`` with ``inr.target_bpp`` set), ``codec`` names the RD curve the point belongs
    to. ``adapter`` picks the adapter family (``nola``, ``lora`` or ``vera``) whose group applies.
    ``gop_size``, ``mask_mode``, ``conditioning``, ``keyframe_quality``, ``granularity`` and
    ``nola_scope`` (null: the granularity's) are :class:`~divinr.training.encoder.EncoderConfig`'s;
    ``gop_jobs`` says where per-GoP trainings run.
    With ``anchor`` set, the run codes the sequence with that reference codec instead, one
    folder per rate point of its sweep: ``.../<sequence>/<anchor name>/<qp37 | preset>``
    (``experiments.anchors``); the DiV-INR groups are then unused. A point is decoded once,
    from its file, with a freshly loaded backbone; ``verify_decode=true`` also reconstructs in
    the encoder and records whether the two decodes agree bit for bit (one more full decode).
    """

    exp_name: str = "default"
    results_root: str = "results"
    rate_point: str = "${inr_size:}"
    codec: str = "divinr"
    label: str | None = None
    force: bool = False
    rescore: bool = False
    keep_workdir: bool = False
    verify_decode: bool = False
    progress: bool = True
    print_summary: bool = False
    gop_size: int = EncoderConfig.gop_size
    mask_mode: str = EncoderConfig.mask_mode
    adapter: str = EncoderConfig.adapter
    conditioning: str = EncoderConfig.conditioning
    keyframe_quality: int = EncoderConfig.keyframe_quality
    granularity: str = EncoderConfig.granularity
    nola_scope: str | None = EncoderConfig.nola_scope
    gop_jobs: GoPJobsConf = field(default_factory=GoPJobsConf)
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    backbone: BackboneConf = field(default_factory=BackboneConf)
    inr: INRConf = field(default_factory=INRConf)
    nola: NOLAConf = field(default_factory=NOLAConf)
    lora: LoRAConf = field(default_factory=LoRAConf)
    vera: VeRAConf = field(default_factory=VeRAConf)
    training: TrainingConf = field(default_factory=TrainingConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    data: DataConf = field(default_factory=DataConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    anchor: AnchorConf | None = None


def constructor_defaults(cls: type) -> dict[str, Any]:
    """A class's constructor arguments and defaults (``???`` where it has none), lists for tuples."""
    return {
        p.name: MISSING if p.default is p.empty else list(p.default) if isinstance(p.default, tuple) else p.default
        for p in inspect.signature(cls).parameters.values()
    }


def inr_size(*, _root_: DictConfig) -> str:
    """How a point's INR size is named: its preset, or ``bpp0.01`` when a target rate sizes it."""
    target = _root_.inr.target_bpp
    return _root_.inr.preset if target is None else f"bpp{target:g}"


def register_configs() -> None:
    """Store the root schema and each reference codec's constructor defaults in Hydra's ConfigStore.

    ``divinr_schema`` is the root (conf/config.yaml lists it first in its defaults);
    ``anchor/<name>_defaults`` is what ``anchor/<name>.yaml`` starts from. Called by the entry
    points before composing, never on import. Idempotent: storing a node again replaces it.
    """
    OmegaConf.register_new_resolver("inr_size", inr_size, replace=True)
    store = ConfigStore.instance()
    store.store(name="divinr_schema", node=DivinrConfig)
    for name, cls in CODECS.items():
        node = AnchorConf(name=name, kwargs=constructor_defaults(cls))
        store.store(group="anchor", name=f"{name}_defaults", node=node)

"""Structured configs of the experiment layer: one dataclass per Hydra group.

Each group mirrors the library constructor it feeds (``backbone`` -> ``load_backbone``,
``inr`` -> ``inr_config``, ``nola`` -> ``NOLAConfig``, ``training`` -> ``paper_phases`` /
``Phase`` + ``LossConfig``, ``sampler`` -> ``SamplerConfig``, ``data`` -> ``load_clip`` /
``load_sequence``). Registered in Hydra's ConfigStore as the schema of the root config, they
make every YAML file and command-line override type-checked at composition: a mistyped key
(``inr.presett=s``) or a wrong type fails before anything runs.

    conf/config.yaml --defaults--> divinr_schema (DivinrConfig) + group YAMLs + exp/<name>.yaml
                     --compose---> DictConfig --experiments.run--> EncoderConfig, Video, loggers
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from divinr.metrics.evaluate import METRICS

@dataclass
class BackboneConf:
    """Arguments of ``divinr.models.backbone.load_backbone``.

    ``path`` is a local diffusers-format checkpoint (the paper's Wan2.1-Fun-1.3B-InP must be
    converted to diffusers format first); None loads the folder the preset ships (``mini``) or
    the preset's Hugging Face id from the cache.
    """

    preset: str = "mini"
    path: str | None = None
    gradient_checkpointing: bool = False


@dataclass
class INRConf:
    """``inr_config(preset, **overrides)``; overrides are INRConfig fields (checked by the library)."""

    preset: str = "xxs"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class NOLAConf:
    """``NOLAConfig`` fields (target modules keep the library's Wan default)."""

    rank: int = 64
    num_bases: int = 500
    basis_variance: float = 0.25
    scaling: float = 1.0
    seed: int = 0


@dataclass
class PhaseConf:
    """One explicit ``Phase``; its Quant-Noise width is ``training.bits`` (also the bitstream's)."""

    name: str = "dense"
    epochs: int = 1
    inr_lr: float = 2e-3
    nola_lr: float = 2e-4
    prune_fraction: float = 0.0
    quant_noise: float = 0.0
    min_lr_ratio: float = 0.0


@dataclass
class TrainingConf:
    """The stage schedule, loss schedule and where training runs.

    Without ``phases`` the schedule is ``paper_phases(dense_epochs, prune_epochs, quant_epochs,
    ...)``; a list of :class:`PhaseConf` replaces it entirely.
    """

    dense_epochs: int = 300
    prune_epochs: int = 120
    quant_epochs: int = 60
    inr_lr: float = 2e-3
    nola_lr: float = 2e-4
    prune_fraction: float = 0.15
    rho: float = 0.9
    bits: int = 6
    phases: list[PhaseConf] | None = None
    lambda_start: float = 1.0
    lambda_end: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"


@dataclass
class SamplerConf:
    """``SamplerConfig`` fields (they travel in the bitstream header)."""

    steps: int = 20
    flow_shift: float = 3.0
    noise_seed: int = 0
    solver_order: int = 2


@dataclass
class DataConf:
    """Where the frames come from and the coding resolution.

    ``source=clip``: ``clip`` is a sample-clip name (``bikes``) or a video file path.
    ``source=dataset``: ``dataset``/``sequence`` name a registered sequence under ``root``
    (None: ``$DIVINR_DATA_ROOT``). ``start`` (first frame) applies to clips only.
    """

    source: str = "clip"
    clip: str | None = "bikes"
    dataset: str | None = None
    sequence: str | None = None
    root: str | None = None
    width: int = 1024
    height: int = 576
    max_frames: int | None = None
    start: int = 0


@dataclass
class LoggerConf:
    """Training-curve logger: ``none``, ``csv`` (in the run folder) or ``wandb``.

    ``mode`` None lets ``divinr.reporting.wandb_mode`` choose (offline without an API key).
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
    ``label`` replaces the codec's own description.
    """

    name: str = "x265"
    label: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DivinrConfig:
    """Root config of one rate point of one sequence.

    The point's folder is ``results_root/exp_name/<dataset or clip>/<sequence>/rate_point``;
    ``rate_point`` must name everything that differs between the points of a sweep (an
    ablation adds tags such as ``-b500``), ``codec`` names the RD curve the point belongs to.
    With ``anchor`` set, the run codes the sequence with that reference codec instead, one
    folder per rate point of its sweep: ``.../<sequence>/<anchor name>/<qp37 | preset>``
    (``experiments.anchors``); the DiV-INR groups are then unused. A point is decoded once,
    from its file, with a freshly loaded backbone; ``verify_decode=true`` also reconstructs in
    the encoder and records whether the two decodes agree bit for bit (one more full decode).
    """

    exp_name: str = "default"
    results_root: str = "results"
    rate_point: str = "${inr.preset}"
    codec: str = "divinr"
    label: str | None = None
    force: bool = False
    rescore: bool = False
    keep_workdir: bool = False
    verify_decode: bool = False
    progress: bool = True
    print_summary: bool = False
    gop_size: int = 25
    mask_mode: str = "learned"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    backbone: BackboneConf = field(default_factory=BackboneConf)
    inr: INRConf = field(default_factory=INRConf)
    nola: NOLAConf = field(default_factory=NOLAConf)
    training: TrainingConf = field(default_factory=TrainingConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    data: DataConf = field(default_factory=DataConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    anchor: AnchorConf | None = None


def register_configs() -> None:
    """Store the root schema as ``divinr_schema`` (conf/config.yaml lists it first in its defaults).

    Idempotent: storing the same node again replaces it.
    """
    ConfigStore.instance().store(name="divinr_schema", node=DivinrConfig)

"""The Hydra experiment layer: configs compose and type-check, points run once, fail alone, report.

Runs use the tiny random backbone on a few frames of a real clip; the in-process points run at
64x64 with PSNR only (MS-SSIM needs 176 px), the command-line demo at 176x176 with every metric.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

import experiments
from divinr.codec import load_clip
from divinr.training.encoder import EncoderConfig
from divinr.data.datasets import DATASETS
from divinr.data.samples import sample_clip_path
from divinr.data.video import read_video
from divinr.errors import PresetError
from divinr.models.backbone import BACKBONE_PRESETS, build_backbone_on_meta
from divinr.data.gop import split_gops
from divinr.models.inr import INR_PRESETS, build_inr, count_parameters, inr_config
from divinr.models.adapters import LoRAConfig, VeRAConfig
from divinr.models.nola import NOLAConfig, count_nola_coefficients
from divinr.results import read_result
from divinr.training.stages import total_epochs
from experiments import run as run_module
from experiments import wandb_logging
from experiments.callbacks import RDCurvesCallback
from experiments.run import STREAM_NAME, WORK_NAME, encoder_config, point_dir, run
from experiments.schema import register_configs

CONF_DIR = Path(experiments.__file__).resolve().parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml") if not p.stem.startswith("anchors_"))  # anchors: test_anchor_experiments.py
TINY_RUN = [
    "+exp=demo", "backbone=tiny", "data.max_frames=5", "training.dense_epochs=2", "training.prune_epochs=1",
    "training.quant_epochs=1", "sampler.steps=2", "progress=false", "print_summary=false",
]
SMALL = [*TINY_RUN, "data.width=64", "data.height=64", "metrics=[psnr,psnr_y]"]


def compose_cfg(*overrides: str, hydra: bool = False) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def sweep_values(params: DictConfig) -> dict[str, list[str]]:
    """Hydra's own parser expands each ``hydra.sweeper.params`` entry into its values (a single
    value is a one-point sweep, as Hydra's basic sweeper runs it)."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    return {o.key_or_group: [str(v) for v in o.sweep_iterator()] if o.is_sweep_override() else [str(o.value())] for o in parsed}


# ---------------------------------------------------------------------------- composition


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(name: str) -> None:
    base = compose_cfg(f"+exp={name}", hydra=True)
    params = sweep_values(base.hydra.sweeper.params) if base.hydra.sweeper.params else {}
    assert (base.hydra.mode == RunMode.MULTIRUN) == bool(params)
    # Each swept value on its own is enough to catch a bad preset or sequence name.
    points = [()] if not params else [((k, v),) for k, values in params.items() for v in values]
    for point in points:
        overrides = [f"{k}={v}" for k, v in point]
        if "data.sequence" in params and not any(k == "data.sequence" for k, _ in point):
            overrides.append(f"data.sequence={params['data.sequence'][0]}")
        cfg = compose_cfg(f"+exp={name}", *overrides)
        config = encoder_config(cfg)
        assert isinstance(config, EncoderConfig)
        assert config.backbone in BACKBONE_PRESETS and config.inr in INR_PRESETS
        assert config.nola.num_bases == cfg.nola.num_bases and config.sampler.steps == cfg.sampler.steps
        folder = point_dir(cfg)
        assert folder.name == cfg.rate_point and folder.parent.parent.parent.name == cfg.exp_name
    if "data.sequence" in params:  # a dataset sweep covers every sequence of its dataset
        assert sorted(params["data.sequence"]) == sorted(s.name for s in DATASETS[base.data.dataset].sequences)
    if name.endswith("_sweep") or name.startswith("ablation"):
        assert base.backbone.preset == "wan2.1-fun-1.3b-inp"
        assert [p.epochs for p in encoder_config(cfg).phases] == [300, 120, 60]


@pytest.fixture(scope="module")
def nola_coefficients() -> int:
    backbone = build_backbone_on_meta("wan2.1-fun-1.3b-inp")
    backbone.adapt(NOLAConfig())
    return count_nola_coefficients(backbone.transformer)


@pytest.mark.parametrize(
    ("name", "frames", "low", "high"),
    [("uvg_sweep", 600, 0.0065, 0.04), ("jvetb_sweep", 500, 0.0065, 0.04), ("mcl_jcv_sweep", 150, 0.0125, 0.045)],
)
def test_sweep_presets_span_the_target_rates(
    name: str, frames: int, low: float, high: float, nola_coefficients: int
) -> None:
    """6-bit parameter counts at 1024x576 put the lowest preset near 0.005 bpp and the highest near 0.05.

    MCL-JCV's 5 s sequences cannot go below ~0.008 bpp: the NOLA coefficients alone cost that.
    """
    presets = sweep_values(compose_cfg(f"+exp={name}", hydra=True).hydra.sweeper.params)["inr.preset"]
    latent = sum(g.num_latent for g in split_gops(torch.zeros(frames, 1, 1, 1), 25))
    bpp = []
    for preset in presets:
        inr = build_inr(inr_config(preset, num_latent_frames=latent), (576 // 8, 1024 // 8))
        bpp.append((count_parameters(inr) + nola_coefficients) * 6 / (frames * 1024 * 576))
    assert bpp == sorted(bpp) and len(set(presets)) == len(presets) >= 4
    assert bpp[0] < low and bpp[-1] > high


def test_ablation_points_get_their_own_folders_and_curves() -> None:
    a = compose_cfg("+exp=ablation_peft_size", "data.sequence=Beauty", "nola.num_bases=0")
    b = compose_cfg("+exp=ablation_peft_size", "data.sequence=Beauty", "nola.num_bases=1000")
    assert point_dir(a) != point_dir(b) and a.codec != b.codec
    assert encoder_config(a).nola.num_bases == 0
    nola, lora, vera = (compose_cfg("+exp=ablation_adapter", "data.sequence=Beauty", f"adapter={x}") for x in ("nola", "lora", "vera"))
    assert len({point_dir(c) for c in (nola, lora, vera)}) == len({c.codec for c in (nola, lora, vera)}) == 3
    assert [encoder_config(c).adapter_config for c in (nola, lora, vera)] == [NOLAConfig(), LoRAConfig(), VeRAConfig()]
    mask = compose_cfg("+exp=ablation_mask", "data.sequence=Beauty")
    assert encoder_config(mask).mask_mode == "ones" and point_dir(mask).name.endswith("mask1")
    q5, q75 = (compose_cfg("+exp=ablation_keyframes", "data.sequence=Beauty", f"keyframe_quality={q}") for q in (5, 75))
    assert point_dir(q5).name == "jpeg-q5" and point_dir(q5) != point_dir(q75) and q5.codec == q75.codec == "divinr-jpeg"
    assert (encoder_config(q5).conditioning, encoder_config(q5).keyframe_quality) == ("jpeg", 5)


def test_the_keyframe_sweep_spans_the_target_rates(nola_coefficients: int) -> None:
    """Its lowest and highest JPEG qualities put textured 1024x576 keyframes (bigbuckbunny, one per
    25-frame GoP, 600 frames, with NOLA at 6 bits) near the lowest (0.0051 bpp) and above the highest
    (0.0456 bpp) rates of the INR sweep (uvg_sweep); smoother content codes smaller still."""
    from divinr.compression.jpeg import encode_jpeg

    qualities = [int(q) for q in sweep_values(compose_cfg("+exp=ablation_keyframes", hydra=True).hydra.sweeper.params)[
        "keyframe_quality"
    ]]
    frames = load_clip(sample_clip_path("bigbuckbunny"), width=1024, height=576, max_frames=51).frames[::25]
    nola = nola_coefficients * 6 / (600 * 1024 * 576)
    bpp = [sum(len(encode_jpeg(f, q)) for f in frames) * 8 / (len(frames) * 25 * 1024 * 576) + nola for q in qualities]
    assert bpp == sorted(bpp) and len(set(qualities)) == len(qualities) >= 4
    assert bpp[0] < 0.007 and bpp[-1] > 0.0456


def test_demo_resolution_supports_every_metric() -> None:
    cfg = compose_cfg("+exp=demo")
    assert cfg.data.width % 16 == 0 and cfg.data.height % 16 == 0
    assert min(cfg.data.width, cfg.data.height) >= 176  # MS-SSIM's five scales
    assert encoder_config(cfg).resolved_device().type == "cpu"


@pytest.mark.parametrize(
    "override", ["inr.presett=s", "training.dense_epochs=many", "logger.projekt=x", "sampler=nope"]
)
def test_mistyped_key_fails_at_composition(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


def test_unknown_preset_fails_before_training() -> None:
    with pytest.raises(PresetError, match="INR preset"):
        encoder_config(compose_cfg("inr.preset=huge"))
    with pytest.raises(PresetError, match="INR config fields"):
        encoder_config(compose_cfg("+inr.overrides.chanels=3"))


def test_explicit_phases_replace_the_paper_schedule() -> None:
    cfg = compose_cfg("training.bits=5", "training.phases=[{name:a,epochs:2},{name:b,epochs:1,quant_noise:0.5}]")
    config = encoder_config(cfg)
    phases = [(p.name, p.epochs, p.quant_noise, p.quant_bits) for p in config.phases]
    assert phases == [("a", 2, 0.0, 5), ("b", 1, 0.5, 5)]
    assert config.quant_bits == 5 and total_epochs(config.phases) == 3


@pytest.mark.parametrize("launcher", ["submitit_local", "slurm_gpu"])
def test_launcher_configs_compose(launcher: str) -> None:
    cfg = compose_cfg("+exp=demo", f"hydra/launcher={launcher}", hydra=True)
    target = cfg.hydra.launcher._target_
    assert target.endswith("LocalLauncher" if launcher == "submitit_local" else "SlurmLauncher")
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.max_num_timeout > 0
    assert cfg.hydra.callbacks.rd_curves._target_ == "experiments.callbacks.RDCurvesCallback"


# ---------------------------------------------------------------------------- running points


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two points of one experiment, logged to W&B offline; ``xs`` also checks its decode against the encoder's."""
    root = tmp_path_factory.mktemp("results")
    env = pytest.MonkeyPatch()
    env.setenv("WANDB_MODE", "offline")
    env.setenv("WANDB_DIR", str(root / "wandb-default"))
    common = [*SMALL, f"results_root={root}", "exp_name=sweep", "logger=wandb"]
    cfgs = {"xxs": compose_cfg(*common, "inr.preset=xxs"), "xs": compose_cfg(*common, "inr.preset=xs", "verify_decode=true")}
    results = {p: run(cfg) for p, cfg in cfgs.items()}
    yield {"root": root, "cfgs": cfgs, "results": results, "common": common}
    env.undo()


def test_points_record_the_rate_of_their_bitstream_file(sweep: dict) -> None:
    for preset, cfg in sweep["cfgs"].items():
        folder = point_dir(cfg)
        result = read_result(folder / "results.json")
        assert result.status == "ok", result.error
        size = (folder / STREAM_NAME).stat().st_size
        assert result.bpp == size * 8 / (5 * 64 * 64)
        assert result.bits["total"] == size * 8 == sum(v for k, v in result.bits.items() if k != "total")
        assert (result.frames, result.width, result.height, result.rate_point) == (5, 64, 64, preset)
        if cfg.verify_decode:  # the encoder's reconstruction and the decode from the file agree bit for bit
            assert result.config["checks"] == {"decoder_matches_encoder": True, "decoder_max_abs_diff": 0.0}
        else:  # by default a point is decoded once, from its file
            assert "checks" not in result.config and "decode_seconds_in_encoder" not in result.config
        assert result.config["resolved"]["inr"]["preset"] == preset
        assert not (folder / WORK_NAME).exists()  # checkpoints and latent cache are cleaned up
        assert Image.open(folder / "compare.png").format == "PNG"


def test_recorded_psnr_matches_the_decoded_file(sweep: dict) -> None:
    """PSNR recomputed with numpy from decoded.mp4 (lossless RGB) and the same input frames."""
    cfg = sweep["cfgs"]["xxs"]
    result = read_result(point_dir(cfg) / "results.json")
    decoded = read_video(point_dir(cfg) / "decoded.mp4").frames.numpy()
    original = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=5).frames.numpy()
    ref, dec = np.round(original.astype(np.float64) * 255), np.round(decoded.astype(np.float64) * 255)
    mse = ((ref - dec) ** 2).reshape(5, -1).mean(axis=1)
    assert result.metrics["psnr"] == pytest.approx(float(np.mean(10 * np.log10(255**2 / mse))), abs=1e-3)


def test_rerun_runs_only_the_missing_point(sweep: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfgs = sweep["cfgs"]
    missing, kept = point_dir(cfgs["xxs"]) / "results.json", point_dir(cfgs["xs"]) / "results.json"
    kept_mtime, kept_text = kept.stat().st_mtime_ns, kept.read_text()
    missing.unlink()
    capsys.readouterr()
    rerun = run(cfgs["xxs"])
    assert rerun is not None and rerun.status == "ok" and missing.exists()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(point_dir(cfgs["xxs"]))
    skipped = run(cfgs["xs"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2:] == ["skip", str(point_dir(cfgs["xs"]))]
    assert skipped.bpp == sweep["results"]["xs"].bpp
    assert kept.stat().st_mtime_ns == kept_mtime and kept.read_text() == kept_text


@pytest.mark.parametrize(
    ("override", "error"),
    [("data.clip=/nonexistent/clip.mp4", "VideoFormatError"), ("inr.preset=huge", "PresetError")],
)
def test_failed_point_is_recorded_and_others_are_intact(
    sweep: dict, override: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = {p: (point_dir(c) / "results.json").read_text() for p, c in sweep["cfgs"].items()}
    cfg = compose_cfg(*sweep["common"], "rate_point=broken", override)
    result = run(cfg)
    assert result is not None and result.status == "failed" and result.error.startswith(error)
    assert "\n" not in result.error and result.config["user_error"] is True
    stored = read_result(point_dir(cfg) / "results.json")
    assert stored.status == "failed" and stored.error == result.error
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(point_dir(cfg))
    assert len([line for line in captured.err.splitlines() if line.startswith("error: ")]) == 1
    assert {p: (point_dir(c) / "results.json").read_text() for p, c in sweep["cfgs"].items()} == kept


def test_finished_point_with_other_settings_is_not_skipped(sweep: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose_cfg(*sweep["common"], "inr.preset=xs", "sampler.steps=3")
    before = (point_dir(cfg) / "results.json").read_text()
    assert run(cfg) is None
    assert "sampler.steps" in capsys.readouterr().err
    assert (point_dir(cfg) / "results.json").read_text() == before


def test_wandb_offline_runs_hold_media_and_the_rd_table(sweep: dict) -> None:
    root = Path(sweep["root"]) / "sweep"
    for cfg in sweep["cfgs"].values():
        files = list(point_dir(cfg).glob("wandb/offline-run-*/files/media/**/*"))
        assert any(f.suffix == ".mp4" for f in files) and any(f.name.startswith("frame_") for f in files)
    RDCurvesCallback(formats=["png"]).on_multirun_end(compose_cfg(*sweep["common"]))
    assert (root / "rd" / "rd_clip.png").is_file()
    tables = list(root.glob("wandb/offline-run-*/files/media/table/rd/points_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    expected = {p: read_result(point_dir(c) / "results.json").bpp for p, c in sweep["cfgs"].items()}
    assert {r["rate_point"]: r["bpp"] for r in rows} == pytest.approx(expected)


def test_rescore_adds_missing_metrics_without_coding_again(
    sweep: dict, standin_alexnet: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point finished without LPIPS gets it from its decoded file; stream and other scores stay."""
    from divinr.metrics.perceptual import LPIPSMetric

    common = [o for o in sweep["common"] if not o.startswith("metrics=")]
    cfg = compose_cfg(*common, "inr.preset=xs", "metrics=[psnr,psnr_y,lpips]", "rescore=true")
    folder = point_dir(cfg)
    before = read_result(folder / "results.json")
    stream_mtime = (folder / STREAM_NAME).stat().st_mtime_ns
    assert "lpips" not in before.metrics

    cache = os.environ["DIVINR_WEIGHTS_DIR"]  # the fixture's stand-in cache
    monkeypatch.setenv("DIVINR_WEIGHTS_DIR", str(folder / "no-weights-here"))
    capsys.readouterr()
    still_missing = run(cfg)
    assert capsys.readouterr().out.splitlines()[-2] == "rescored nothing"
    assert still_missing == before == read_result(folder / "results.json")  # nothing gained: nothing rewritten

    monkeypatch.setenv("DIVINR_WEIGHTS_DIR", cache)
    rescored = run(cfg)
    assert capsys.readouterr().out.splitlines()[-2] == "rescored lpips"
    stored = read_result(folder / "results.json")
    assert stored == rescored and "lpips" not in stored.skipped_metrics
    assert {k: stored.metrics[k] for k in ("psnr", "psnr_y")} == {k: before.metrics[k] for k in ("psnr", "psnr_y")}
    assert (stored.bpp, stored.bits) == (before.bpp, before.bits)
    assert (folder / STREAM_NAME).stat().st_mtime_ns == stream_mtime
    reference = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=5).frames
    decoded = read_video(folder / "decoded.mp4").frames
    expected = float(LPIPSMetric(pretrained=True)(reference, decoded).double().mean())
    assert stored.metrics["lpips"] == pytest.approx(expected, rel=1e-5)
    capsys.readouterr()
    assert run(cfg) == stored and capsys.readouterr().out.splitlines()[-2] == "skip"  # nothing left to add


def test_wandb_failure_falls_back_to_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb_logging, "WandbLogger", broken)
    with pytest.warns(UserWarning, match="W&B unavailable"):
        logger = run_module.make_logger(compose_cfg("logger=wandb"), tmp_path, "t")
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "logs"


def test_rd_callback_never_fails_a_sweep(tmp_path: Path) -> None:
    (tmp_path / "sweep" / "x").mkdir(parents=True)
    (tmp_path / "sweep" / "x" / "results.json").write_text("{not json")
    with pytest.warns(UserWarning, match="RD report failed"):
        RDCurvesCallback().on_multirun_end(compose_cfg(f"results_root={tmp_path}", "exp_name=sweep"))


# ---------------------------------------------------------------------------- command line


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def test_demo_from_the_command_line(tmp_path: Path) -> None:
    """The demo experiment end to end at 176x176 (every metric that has weights), from another folder."""
    proc = _cli([*TINY_RUN, "data.width=176", "data.height=176", "results_root=out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "out" / "demo" / "clip" / "bikes" / "xxs"
    assert proc.stdout.strip().splitlines()[-1] == str(folder)
    result = read_result(folder / "results.json")
    assert result.status == "ok" and result.bpp == (folder / STREAM_NAME).stat().st_size * 8 / (5 * 176 * 176)
    assert math.isfinite(result.metrics["ms_ssim"]) and math.isfinite(result.metrics["psnr"])
    assert set(result.skipped_metrics) == {m for m, v in result.metrics.items() if v is None}
    epochs = (folder / "logs" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert len(epochs) == 4  # one CSV row per epoch of the 2+1+1 schedule
    assert not (tmp_path / "outputs").exists()  # Hydra's own files stay under the experiment


def test_command_line_user_error_exits_2(tmp_path: Path) -> None:
    proc = _cli(["data.source=dataset", "data.dataset=uvg"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "data.sequence" in proc.stderr


@pytest.mark.slow
def test_submitit_local_multirun(tmp_path: Path) -> None:
    proc = _cli(
        ["-m", *SMALL, "results_root=out", "logger=none", "inr.preset=xxs,xs", "hydra/launcher=submitit_local"],
        cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {p: read_result(tmp_path / "out" / "demo" / "clip" / "bikes" / p / "results.json") for p in ("xxs", "xs")}
    assert all(r.status == "ok" for r in results.values())
    assert (tmp_path / "out" / "demo" / "rd" / "rd_clip.png").is_file()
    assert list((tmp_path / "out" / "demo" / "_hydra").glob("multirun-*/.submitit"))


def test_a_setting_added_after_a_point_was_made_counts_as_unchanged_only_at_its_default() -> None:
    from experiments.points import changed_settings

    before = {"inr": {"preset": "xs", "overrides": {}}, "nola": {"num_bases": 500}}
    assert changed_settings(before, {"inr": {"preset": "xs", "overrides": {}, "target_bpp": None}, "nola": {"num_bases": 500}}) == []
    assert changed_settings(before, {"inr": {"preset": "xs", "overrides": {}, "target_bpp": 0.1}, "nola": {"num_bases": 500}}) == [
        "inr.target_bpp"
    ]
    # a setting the stored point had and the current config dropped is still a change
    assert changed_settings({"inr": {"preset": "xs", "target_bpp": 0.1}}, {"inr": {"preset": "xs"}}) == ["inr.target_bpp"]

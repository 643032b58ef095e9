"""Reference codecs through the Hydra runner: configs compose, points record real stream sizes and
metrics of their decoded files, re-runs skip, failures are recorded, bad names are clear errors.

Points run x265 (and VVenC on the command line) on 5 frames of bikes at 64x48 with PSNR only
(MS-SSIM needs 176 px per side), as the DiV-INR experiment tests do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

import experiments
from divinr.anchors import HiNeRVCodec, VTMCodec, VVenCCodec, X265Codec
from divinr.codec import load_clip
from divinr.data.datasets import DATASETS
from divinr.data.samples import sample_clip_path
from divinr.errors import PresetError
from divinr.metrics.functional import BT709_LUMA
from divinr.results import read_result
from divinr.models.pixel_inr import SEQUENCE_PRESETS
from experiments.anchors import anchor_codec, rate_point_name, run_anchor
from experiments.points import exit_status
from experiments.schema import register_configs

CONF_DIR = Path(experiments.__file__).resolve().parent / "conf"
ANCHOR_EXPERIMENTS = ("anchors_uvg", "anchors_jvetb", "anchors_mcl_jcv", "anchors_clip")
FRAMES, WIDTH, HEIGHT = 5, 64, 48
BASE = [
    "+exp=anchors_clip", f"data.width={WIDTH}", f"data.height={HEIGHT}", f"data.max_frames={FRAMES}",
    "metrics=[psnr,psnr_y]",
]
SMALL = [*BASE, "anchor=x265", "anchor.kwargs.qps=[45,37]"]

needs_x265 = pytest.mark.skipif(not X265Codec().available(), reason="no system ffmpeg with libx265")
needs_vvenc = pytest.mark.skipif(not VVenCCodec().available(), reason="no imageio-ffmpeg ffmpeg with libvvenc")


def compose_cfg(*overrides: str, hydra: bool = False) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def sweep_values(params: DictConfig) -> dict[str, list[str]]:
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.key_or_group: [str(v) for v in o.sweep_iterator()] for o in parsed}


def last_lines(capsys: pytest.CaptureFixture[str], n: int) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()[-n:]


# ---------------------------------------------------------------------------- composition


@pytest.mark.parametrize("name", ANCHOR_EXPERIMENTS)
def test_anchor_experiments_compose_with_the_paper_settings(name: str) -> None:
    base = compose_cfg(f"+exp={name}", hydra=True)
    params = sweep_values(base.hydra.sweeper.params)
    assert base.hydra.mode == RunMode.MULTIRUN and params["anchor"] == ["x265", "vvenc", "hinerv"]
    assert (base.data.width, base.data.height) == (1024, 576)
    if base.data.source == "dataset":
        assert sorted(params["data.sequence"]) == sorted(s.name for s in DATASETS[base.data.dataset].sequences)
    sequence = [f"data.sequence={params['data.sequence'][0]}"] if "data.sequence" in params else []
    codecs = {c: anchor_codec(compose_cfg(f"+exp={name}", f"anchor={c}", *sequence).anchor) for c in params["anchor"]}
    x265, vvenc, hinerv = codecs["x265"], codecs["vvenc"], codecs["hinerv"]
    assert isinstance(x265, X265Codec) and (x265.preset, x265.keyint) == ("veryslow", 16)
    assert max(x265.qps) == 51 and x265.yuv_pix_fmt == "yuv444p"  # lowest reachable rate, 4:4:4
    assert isinstance(vvenc, VVenCCodec) and vvenc.intra_period == 16 and max(vvenc.qps) > 52
    assert isinstance(hinerv, HiNeRVCodec) and hinerv.epochs == (300, 60, 30)
    assert hinerv.presets == SEQUENCE_PRESETS
    for codec in codecs.values():  # one folder per point: the names of a sweep are distinct
        names = [rate_point_name(p) for p in codec.default_params()]
        assert len(set(names)) == len(names)


def test_anchors_do_not_import_the_divinr_runner() -> None:
    """The shared point logic lives in ``experiments.points``, so the anchors need nothing of DiV-INR's runner."""
    code = "import sys, experiments.anchors; print('experiments.run' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "False"


def test_rate_point_names() -> None:
    assert rate_point_name({"qp": 37}) == "qp37" and rate_point_name({"preset": "xs"}) == "xs"


def test_anchor_configs_keep_the_papers_x265_line_and_code_in_full_range() -> None:
    """The x265 YAML keeps the paper's flags (info SEI in); stripping it is a named, labelled option."""
    x265 = anchor_codec(compose_cfg("anchor=x265").anchor)
    assert isinstance(x265, X265Codec) and x265.strip_sei is False
    assert [rate_point_name(p) for p in x265.default_params()][:2] == ["qp51", "qp47"]
    stripped = anchor_codec(compose_cfg("anchor=x265", "anchor.kwargs.strip_sei=true").anchor)
    assert [rate_point_name(p) for p in stripped.default_params()][:2] == ["qp51_seistripped", "qp47_seistripped"]
    paths = [f"anchor.kwargs.{k}=x" for k in ("encoder_app", "decoder_app", "cfg")]
    for name, extra in (("x265", []), ("vvenc", []), ("vtm", paths)):
        assert anchor_codec(compose_cfg(f"anchor={name}", *extra).anchor).yuv_range == "full"


def test_vtm_needs_its_binaries_and_takes_them_from_the_config(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"anchor\.kwargs\.encoder_app is not set"):
        anchor_codec(compose_cfg("anchor=vtm").anchor)
    paths = {k: tmp_path / k for k in ("encoder_app", "decoder_app", "cfg")}
    codec = anchor_codec(compose_cfg("anchor=vtm", *(f"anchor.kwargs.{k}={v}" for k, v in paths.items())).anchor)
    assert isinstance(codec, VTMCodec) and codec.encoder_app == paths["encoder_app"] and codec.cfg == paths["cfg"]
    assert codec.intra_period == 16 and "VTM 23.11" in codec.label() and not codec.available()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["anchor.name=nope"], "unknown reference codec 'nope'; choose one of: hinerv, vtm, vvenc, x265"),
        (["+anchor.kwargs.keyframes=8"], "anchor.kwargs ['keyframes'] are not arguments of X265Codec"),
        (["anchor.kwargs.preset=turbo"], "unknown x265 preset 'turbo'"),
    ],
)
def test_bad_codec_settings_are_one_line_errors(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_cfg(*SMALL, f"results_root={tmp_path}", *overrides)
    assert run_anchor(cfg) is None and exit_status(None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not any(tmp_path.iterdir())  # nothing is written for a codec that cannot be named


# ---------------------------------------------------------------------------- running points


@pytest.fixture(scope="module")
def x265_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("anchors")
    common = [*SMALL, f"results_root={root}", "keep_workdir=true"]
    cfg = compose_cfg(*common)
    results = run_anchor(cfg)
    return {"root": root, "common": common, "results": results, "folder": root / "anchors_clip" / "clip" / "bikes" / "x265"}


@needs_x265
def test_x265_points_record_their_stream_size_and_commands(x265_run: dict) -> None:
    folder = x265_run["folder"]
    assert [r.rate_point for r in x265_run["results"]] == ["qp45", "qp37"]
    assert sorted(p.name for p in folder.iterdir()) == ["qp37", "qp45"]  # the shared input file is gone
    for qp in (45, 37):
        result = read_result(folder / f"qp{qp}" / "results.json")
        assert result.status == "ok", result.error
        stream = folder / f"qp{qp}" / result.bitstream
        assert stream.suffix == ".hevc" and result.bits == {"total": stream.stat().st_size * 8}
        assert result.bpp == stream.stat().st_size * 8 / (FRAMES * WIDTH * HEIGHT)
        assert (result.codec, result.dataset, result.sequence) == ("x265", "clip", "bikes")
        assert (result.frames, result.width, result.height) == (FRAMES, WIDTH, HEIGHT)
        assert result.label.startswith("HEVC (x265 ") and "veryslow, 4:4:4, GoP 16" in result.label
        rebuild, encode = result.config["commands"][:2]
        assert str(sample_clip_path("bikes")) in rebuild  # the input is rebuilt from the real source
        assert "-preset veryslow" in encode and f"qp={qp}" in encode and "-pix_fmt yuv444p" in encode
        assert "info=0" not in encode and "out_range=pc" in encode
        assert result.config["resolved"]["anchor"]["kwargs"]["yuv_range"] == "full"
        assert result.config["param"] == {"qp": qp} and result.encode_seconds > 0
    low, high = (read_result(folder / p / "results.json") for p in ("qp45", "qp37"))
    assert low.bpp < high.bpp and low.metrics["psnr"] < high.metrics["psnr"]


@needs_x265
def test_recorded_rebuild_command_recreates_the_deleted_input(x265_run: dict, tmp_path: Path) -> None:
    """The input file is deleted after the run; the recorded first command writes it again, byte for byte."""
    result = read_result(x265_run["folder"] / "qp45" / "results.json")
    rebuild = result.config["commands"][0]
    deleted = next(word for word in re.findall(r'"([^"]+)"', rebuild) if word.endswith("input.rgb"))
    assert not Path(deleted).exists()
    subprocess.run(rebuild, shell=True, check=True, cwd=tmp_path)
    frames = load_clip(sample_clip_path("bikes"), width=WIDTH, height=HEIGHT, max_frames=FRAMES).frames
    expected = (frames.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    assert Path(deleted).read_bytes() == expected
    Path(deleted).unlink()


@needs_x265
def test_recorded_psnr_matches_numpy_on_the_decoded_file(x265_run: dict) -> None:
    """PSNR (RGB and BT.709 Y) recomputed from the decoded rgb24 file and the clip DiV-INR would code."""
    reference = load_clip(sample_clip_path("bikes"), width=WIDTH, height=HEIGHT, max_frames=FRAMES).frames.numpy()
    ref = np.round(reference.astype(np.float64).transpose(0, 2, 3, 1) * 255)
    for qp in (45, 37):
        result = read_result(x265_run["folder"] / f"qp{qp}" / "results.json")
        raw = np.fromfile(x265_run["folder"] / f"qp{qp}" / result.decoded, dtype=np.uint8)
        dec = raw.reshape(FRAMES, HEIGHT, WIDTH, 3).astype(np.float64)
        mse = ((ref - dec) ** 2).reshape(FRAMES, -1).mean(axis=1)
        mse_y = (((ref - dec) @ np.array(BT709_LUMA)) ** 2).reshape(FRAMES, -1).mean(axis=1)
        assert 0 < mse.min()  # lossy: the comparison is not trivially infinite
        assert result.metrics["psnr"] == pytest.approx(float(np.mean(10 * np.log10(255**2 / mse))), abs=1e-9)
        assert result.metrics["psnr_y"] == pytest.approx(float(np.mean(10 * np.log10(255**2 / mse_y))), abs=1e-9)


@needs_x265
def test_rerun_skips_finished_points_and_runs_new_ones(x265_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    folder = x265_run["folder"]
    kept = {p: (folder / p / "results.json").stat().st_mtime_ns for p in ("qp45", "qp37")}
    capsys.readouterr()
    again = run_anchor(compose_cfg(*x265_run["common"]))
    assert last_lines(capsys, 4) == ["skip", str(folder / "qp45"), "skip", str(folder / "qp37")]
    assert [r.bpp for r in again] == [r.bpp for r in x265_run["results"]] and exit_status(again) == 0
    # A longer sweep list runs only the new point; the finished ones are not settings of it.
    more = run_anchor(compose_cfg(*x265_run["common"], "anchor.kwargs.qps=[45,41,37]"))
    assert last_lines(capsys, 5) == ["skip", str(folder / "qp45"), "skip", str(folder / "qp37"), str(folder / "qp41")]
    assert more[1].rate_point == "qp41" and more[1].status == "ok"
    assert {p: (folder / p / "results.json").stat().st_mtime_ns for p in kept} == kept


@needs_x265
def test_rescore_decodes_the_stream_again_for_missing_metrics(
    x265_run: dict, standin_alexnet: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """LPIPS added later: the stream is decoded again (into a scratch folder) and only LPIPS is computed."""
    from divinr.metrics.perceptual import LPIPSMetric

    folder = x265_run["folder"]
    common = [o for o in x265_run["common"] if not o.startswith("metrics=")]
    before = {p: read_result(folder / p / "results.json") for p in ("qp45", "qp37")}
    entries = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()
    results = run_anchor(compose_cfg(*common, "metrics=[psnr,psnr_y,lpips]", "rescore=true"))
    assert last_lines(capsys, 4) == ["rescored lpips", str(folder / "qp45"), "rescored lpips", str(folder / "qp37")]
    reference = load_clip(sample_clip_path("bikes"), width=WIDTH, height=HEIGHT, max_frames=FRAMES).frames
    metric = LPIPSMetric(pretrained=True)
    for (point, old), new in zip(before.items(), results):
        assert read_result(folder / point / "results.json") == new and new.bpp == old.bpp
        assert new.metrics["psnr"] == old.metrics["psnr"] and "lpips" not in new.skipped_metrics
        kept = np.fromfile(folder / point / old.decoded, dtype=np.uint8).reshape(FRAMES, HEIGHT, WIDTH, 3)
        decoded = torch.from_numpy(kept).permute(0, 3, 1, 2)
        assert new.metrics["lpips"] == pytest.approx(float(metric(reference, decoded).double().mean()), rel=1e-5)
    assert sorted(p.name for p in folder.iterdir()) == entries  # no scratch input or decode left behind
    capsys.readouterr()
    again = run_anchor(compose_cfg(*common, "metrics=[psnr,psnr_y,lpips]", "rescore=true"))
    assert again == results and last_lines(capsys, 4) == ["skip", str(folder / "qp45"), "skip", str(folder / "qp37")]


@needs_x265
def test_finished_point_with_other_codec_settings_is_refused(x265_run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    path = x265_run["folder"] / "qp45" / "results.json"
    before = path.read_text()
    results = run_anchor(compose_cfg(*x265_run["common"], "anchor.kwargs.qps=[45]", "anchor.kwargs.preset=fast"))
    assert results == [None] and exit_status(results) == 2
    assert "anchor.kwargs.preset" in capsys.readouterr().err and path.read_text() == before


@needs_x265
def test_stripped_sei_points_have_their_own_folders_and_label(x265_run: dict) -> None:
    results = run_anchor(compose_cfg(*x265_run["common"], "anchor.kwargs.strip_sei=true"))
    folder = x265_run["folder"]
    assert [r.rate_point for r in results] == ["qp45_seistripped", "qp37_seistripped"]
    for qp, result in zip((45, 37), results):
        assert result.status == "ok", result.error
        assert result.config["param"] == {"qp": qp, "sei": "stripped"} and "info SEI stripped" in result.label
        assert f"scenecut=0:info=0:qp={qp} " in result.config["commands"][1]  # after the input rebuild
        paper = read_result(folder / f"qp{qp}" / "results.json")  # the unstripped point is untouched
        assert "SEI" not in paper.label and result.bpp < paper.bpp


@needs_x265
def test_failed_points_are_recorded_and_the_sweep_goes_on(
    x265_run: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = X265Codec.encode_decode

    def flaky(self: X265Codec, frames: object, fps: float, param: dict, *args: object, **kwargs: object) -> object:
        if param == {"qp": 45}:
            raise RuntimeError("disk full\nsecond line")
        return original(self, frames, fps, param, *args, **kwargs)

    monkeypatch.setattr(X265Codec, "encode_decode", flaky)
    results = run_anchor(compose_cfg(*x265_run["common"], "exp_name=flaky"))
    assert [r.status for r in results] == ["failed", "ok"] and exit_status(results) == 1
    stored = read_result(Path(x265_run["root"]) / "flaky" / "clip" / "bikes" / "x265" / "qp45" / "results.json")
    assert stored.status == "failed" and stored.error == "RuntimeError: disk full"
    assert stored.config["user_error"] is False and stored.bpp is None


@needs_x265
def test_missing_tool_fails_every_point_and_a_later_run_retries(
    x265_run: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = run_anchor(compose_cfg(*x265_run["common"], "exp_name=no_tool", "anchor.kwargs.ffmpeg=/nonexistent/ffmpeg"))
    assert [r.status for r in missing] == ["failed", "failed"] and exit_status(missing) == 2
    assert all(r.error.startswith("MissingToolError: ffmpeg binary '/nonexistent/ffmpeg'") for r in missing)
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]) == 1
    retried = run_anchor(compose_cfg(*x265_run["common"], "exp_name=no_tool"))
    assert [r.status for r in retried] == ["ok", "ok"]


# ---------------------------------------------------------------------------- command line


@needs_x265
@needs_vvenc
def test_anchor_sweep_from_the_command_line(tmp_path: Path) -> None:
    """``+exp=anchors_clip`` as users run it: a multirun over two codecs, folders per point, RD figure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*BASE, "anchor=x265,vvenc", "anchor.kwargs.qps=[45]", "results_root=out"]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "out" / "anchors_clip"
    x265 = read_result(root / "clip" / "bikes" / "x265" / "qp45" / "results.json")
    vvenc = read_result(root / "clip" / "bikes" / "vvenc" / "qp45" / "results.json")
    assert (x265.codec, vvenc.codec) == ("x265", "vvenc") and x265.status == vvenc.status == "ok"
    assert vvenc.label.startswith("VVC (VVenC ") and "VTM" not in vvenc.label
    stream = root / "clip" / "bikes" / "vvenc" / "qp45" / vvenc.bitstream
    assert stream.suffix == ".266" and vvenc.bpp == stream.stat().st_size * 8 / (FRAMES * WIDTH * HEIGHT)
    assert vvenc.decoded is None and not list(root.rglob("*.rgb"))  # decoded and input files are not kept
    assert (root / "rd" / "rd_clip.png").is_file()


@pytest.mark.slow
def test_hinerv_point_through_the_runner(tmp_path: Path) -> None:
    cfg = compose_cfg(
        *BASE, "anchor=hinerv", "anchor.kwargs.presets=[xxs]", "anchor.kwargs.epochs=[1,1,1]",
        "anchor.kwargs.device=cpu", f"results_root={tmp_path}",
    )
    (result,) = run_anchor(cfg)
    assert result.status == "ok", result.error
    stream = tmp_path / "anchors_clip" / "clip" / "bikes" / "hinerv" / "xxs" / result.bitstream
    assert result.rate_point == "xxs" and result.bpp == stream.stat().st_size * 8 / (FRAMES * WIDTH * HEIGHT)
    assert "1+1+1 epochs" in result.label

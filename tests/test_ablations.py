"""The ablation benchmark: each curve is its Hydra experiment, BD against the reference, the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.ablations import ABLATIONS, REFERENCE, bd_rows, markdown, point_config, small_run
from divinr.results import RunResult
from experiments.run import encoder_config
from experiments.schema import register_configs


def composed(ablation, value: float, out: Path):
    register_configs()
    return point_config(ablation, small_run(out, "bikes", 25, (60, 24, 12)), value)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=[a.codec for a in ABLATIONS])
def test_each_curve_is_its_experiment_made_small(ablation, tmp_path: Path) -> None:
    value = ablation.values_on("bikes")[0]
    cfg = composed(ablation, value, tmp_path)
    config = encoder_config(cfg)
    assert (cfg.backbone.preset, cfg.data.clip, cfg.data.width, cfg.data.max_frames) == ("mini", "bikes", 256, 25)
    assert [p.epochs for p in config.phases] == [60, 24, 12] and config.device == "cpu"
    assert cfg.codec == ablation.codec
    # the experiment itself says what the curve varies; the benchmark only picks the variant
    if ablation.exp is not None:
        assert cfg.exp_name == ablation.exp
    for override in ablation.overrides:
        key, _, wanted = override.partition("=")
        assert str(cfg[key.split(".")[0]][key.split(".")[1]] if "." in key else cfg[key]) == wanted
    if ablation.axis == "inr.target_bpp":
        assert config.target_bpp == value and cfg.rate_point.startswith(f"bpp{value:g}")


def test_points_of_different_curves_never_share_a_folder(tmp_path: Path) -> None:
    from experiments.run import point_dir

    folders = [point_dir(composed(a, v, tmp_path)) for a in ABLATIONS for v in a.values_on("bikes")]
    assert len(set(folders)) == len(folders)


def _result(codec: str, bpp: float, psnr: float) -> RunResult:
    return RunResult(codec=codec, label=codec, dataset="clip", sequence="bikes", rate_point=f"{bpp:g}", bpp=bpp,
                     metrics={"psnr": psnr, "ms_ssim": psnr / 100})  # fmt: skip


def test_bd_is_the_gap_to_the_reference_at_equal_rate() -> None:
    rates = (0.1, 0.16, 0.25)
    results = [_result(REFERENCE, r, 20 + 10 * r) for r in rates]
    results += [_result("divinr-b0", r, 21 + 10 * r) for r in rates]  # 1 dB better everywhere
    results += [_result("divinr-mask1", r * 10, 30.0) for r in rates]  # no overlap
    table = bd_rows(results)["bikes"]
    assert table["divinr-b0"]["psnr"] == pytest.approx(1.0, abs=1e-3)
    assert table["divinr-b0"]["ms_ssim"] == pytest.approx(0.01, abs=1e-5)
    assert table["divinr-mask1"]["psnr"] is None
    text = markdown({"command": "x", "clips": ["bikes"], "frames": 25, "epochs": [1, 0, 0], "bd": {"bikes": table},
                     "skipped_metrics": {"lpips": "weights missing"}, "points": []})  # fmt: skip
    assert "| no adapters (b = 0) | +1.000 | +0.010 | skipped |" in text


def test_the_committed_table_is_computed_from_the_committed_points() -> None:
    """Every point's bpp is its stream file's, and the BD table follows from the points."""
    import json

    from benchmarks.ablations import REPO_RESULTS, finished
    from divinr.rate import bits_per_pixel

    report = json.loads((REPO_RESULTS / "ablations.json").read_text())
    results = finished(REPO_RESULTS)
    assert len(results) == len(report["points"]) and len(report["clips"]) >= 2
    for result in results:
        stream = REPO_RESULTS / "runs" / result.config["resolved"]["exp_name"] / "clip" / result.sequence / result.rate_point
        size = (stream / result.bitstream).stat().st_size
        assert result.bpp == bits_per_pixel(size, result.frames, result.width, result.height)
        assert result.bits["total"] == 8 * size
    assert bd_rows(results) == report["bd"]

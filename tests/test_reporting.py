"""RD averaging against a hand computation, figure files, and (experiments.wandb_logging) W&B logging offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from divinr.errors import DivinrError
from divinr.reporting import POINT_COLUMNS, RDWarning, plot_comparison, plot_rd_curves, rd_points, sequence_curves
from divinr.results import RunResult
from experiments.wandb_logging import OfflineNotice, log_rd_to_wandb, wandb_mode

# Per sequence: rate point -> (bpp, psnr, lpips).
X265 = {
    "A": {"22": (0.10, 35.0, 0.20), "27": (0.05, 32.0, 0.30), "32": (0.02, 29.0, 0.45)},
    "B": {"22": (0.20, 33.0, 0.25), "27": (0.08, 30.0, 0.35), "32": (0.04, 28.0, 0.50)},
}
DIVINR = {
    "A": {"s": (0.01, 27.0, 0.15), "m": (0.02, 28.0, 0.10), "l": (0.04, 29.0, 0.07)},
    "B": {"s": (0.012, 26.0, 0.16), "m": (0.025, 27.5, 0.12), "l": (0.05, 28.5, 0.08)},
}


def _result(codec: str, dataset: str, sequence: str, rate_point: str, bpp: float, psnr: float, lpips: float | None,
            status: str = "ok") -> RunResult:
    return RunResult(
        codec=codec, label=f"{codec} label", dataset=dataset, sequence=sequence, rate_point=rate_point, bpp=bpp,
        metrics={"psnr": psnr, "lpips": lpips}, status=status,
    )


def _results() -> list[RunResult]:
    out = [
        _result(codec, "uvg", seq, rp, *values)
        for codec, table in (("x265", X265), ("divinr", DIVINR))
        for seq, points in table.items()
        for rp, values in points.items()
    ]
    out[0].dataset = "UVG"  # another spelling of the same dataset
    return out


def test_rd_points_average_per_rate_point() -> None:
    results = _results()
    results.append(_result("x265", "uvg", "A", "12", 0.5, 99.0, 0.01, status="failed"))
    curves = rd_points(results, "psnr")
    assert set(curves) == {("uvg", "x265"), ("uvg", "divinr")}
    for codec, table in (("x265", X265), ("divinr", DIVINR)):
        rate_points = sorted(table["A"])
        arrays = np.array([[table[s][rp][:2] for rp in rate_points] for s in ("A", "B")])  # (seq, rp, 2)
        expected = sorted(map(tuple, arrays.mean(axis=0)))
        np.testing.assert_allclose(curves[("uvg", codec)], expected)
    # the failed run is not in any curve
    assert all(bpp < 0.5 for bpp, _ in curves[("uvg", "x265")])


def test_rd_points_skips_missing_values_and_incomplete_rate_points() -> None:
    results = _results()
    results.append(_result("x265", "uvg", "A", "37", 0.01, 27.0, None))
    results.append(_result("divinr", "uvg", "B", "xs", 0.006, 25.0, None))
    with pytest.warns(RDWarning) as record:
        psnr = rd_points(results, "psnr")
    assert sorted(str(w.message).split(":")[0] for w in record) == ["divinr on UVG, psnr", "x265 on UVG, psnr"]
    assert len(psnr[("uvg", "x265")]) == 3 and len(psnr[("uvg", "divinr")]) == 3
    lpips = rd_points(results, "lpips")  # None values are not points, so nothing is incomplete
    assert len(lpips[("uvg", "divinr")]) == 3
    per_seq = sequence_curves(results, "psnr")
    assert per_seq[("uvg", "x265", "A")][0] == (0.01, 27.0)
    assert len(per_seq[("uvg", "divinr", "B")]) == 4


def test_duplicate_rate_point_is_an_error() -> None:
    results = _results()
    results.append(_result("x265", "uvg", "A", "22", 0.11, 35.5, 0.2))
    with pytest.raises(DivinrError, match="two results"):
        rd_points(results, "psnr")


def test_plot_writes_png_and_pdf(tmp_path: Path) -> None:
    paths = plot_rd_curves(_results(), tmp_path / "figs", metrics=("psnr", "lpips", "fid"), log_x=True)
    assert sorted(p.name for p in paths) == ["rd_uvg.pdf", "rd_uvg.png"]
    png = tmp_path / "figs" / "rd_uvg.png"
    with Image.open(png) as image:
        width, height = image.size
    assert width > height > 100  # two subplots side by side (fid has no data)
    assert (tmp_path / "figs" / "rd_uvg.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["rd_uvg.pdf", "rd_uvg.png"]  # no temp files


def test_wandb_offline_run_holds_table_and_figure(tmp_path: Path) -> None:
    wandb = pytest.importorskip("wandb")
    results = _results()
    run = wandb.init(mode="offline", dir=str(tmp_path), project="divinr-test")
    try:
        assert log_rd_to_wandb(results, run) is True
    finally:
        run.finish()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/rd/points_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(POINT_COLUMNS)
    assert len(table["data"]) == len(results)
    row = next(r for r in table["data"] if r[2] == "x265" and r[1] == "B" and r[3] == "27")
    assert row[0] == "uvg" and row[4] == pytest.approx(0.08) and row[5] == pytest.approx(30.0)
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/table/rd/uvg/psnr_table_*.table.json"))
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/images/rd/uvg/figure_*.png"))


def test_wandb_without_run_or_with_failing_run_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "run", None)
    with pytest.warns(RDWarning, match="no active run"):
        assert log_rd_to_wandb(_results()) is False

    class BrokenRun:
        def log(self, payload: dict) -> None:
            raise RuntimeError("network down")

    with pytest.warns(RDWarning, match="network down"):
        assert log_rd_to_wandb(_results(), BrokenRun()) is False


def test_wandb_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    notice = OfflineNotice()
    assert wandb_mode(tmp_path, notice) == "offline"
    assert wandb_mode(tmp_path, notice) == "offline"
    assert capsys.readouterr().err.splitlines() == [f"W&B: no API key found, logging offline to {tmp_path / 'wandb'}"]
    assert wandb_mode(tmp_path) == "offline"  # another owner (a new job) is told again
    assert capsys.readouterr().err.splitlines() == [f"W&B: no API key found, logging offline to {tmp_path / 'wandb'}"]

    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert wandb_mode() == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    assert capsys.readouterr().err == ""


def _geo_result(codec: str, sequence: str, rate: str, bpp: float, psnr: float, frames: int = 25, width: int = 1024) -> RunResult:
    return RunResult(
        codec=codec, label=codec, dataset="uvg", sequence=sequence, rate_point=rate, bpp=bpp,
        frames=frames, width=width, height=576, metrics={"psnr": psnr},
    )


def test_dataset_curves_average_only_the_sequences_every_codec_has() -> None:
    results = [
        _geo_result("divinr", "Beauty", "a", 0.01, 30.0), _geo_result("divinr", "Jockey", "a", 0.01, 35.0),
        _geo_result("x265", "Beauty", "q", 0.01, 30.0),
    ]
    with pytest.warns(RDWarning, match="Jockey"):
        curves = rd_points(results, "psnr")
    assert curves[("uvg", "divinr")] == [(0.01, 30.0)]
    assert curves[("uvg", "x265")] == [(0.01, 30.0)]


def test_codecs_at_different_geometry_cannot_be_compared() -> None:
    results = [_geo_result("divinr", "Beauty", "a", 0.01, 30.0), _geo_result("x265", "Beauty", "q", 0.01, 31.0, frames=600)]
    with pytest.raises(DivinrError, match="same frames"):
        rd_points(results, "psnr")


def test_comparison_picture_has_a_row_per_frame(tmp_path: Path) -> None:
    reference = torch.rand(10, 3, 48, 64)
    decoded = (reference + 0.05 * torch.randn_like(reference)).clamp(0, 1)
    three = Image.open(plot_comparison(reference, decoded, tmp_path / "three.png"))
    one = Image.open(plot_comparison(reference, decoded, tmp_path / "one.png", count=1))
    assert three.format == one.format == "PNG"
    assert three.width == one.width and three.height > 2 * one.height
    assert not list(tmp_path.glob(".*part*"))  # written atomically, no temporary left
    with pytest.raises(ValueError, match="differ in shape"):
        plot_comparison(reference, decoded[:5], tmp_path / "bad.png")

"""Table 1: BD values against analytic cases and the bjontegaard package, signs, files and the CLI."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings
from pathlib import Path

import bjontegaard
import numpy as np
import pytest
import scipy.linalg
import torch

from benchmarks.table1 import compute_table1, main, run_table1, to_markdown
from divinr.errors import DivinrError
from divinr.metrics.bd import BDWarning
from divinr.metrics.perceptual import FID_STATS_NAME, FeatureStats, save_fid_stats
from divinr.reporting import RDWarning
from divinr.results import RunResult, read_result, write_result

REPO = Path(__file__).resolve().parents[1]
BPP = {"A": np.array([0.005, 0.01, 0.02, 0.04]), "B": np.array([0.006, 0.012, 0.024, 0.048])}
OFFSET = {"A": 0.0, "B": -1.0}
METRICS = ("psnr", "lpips", "dists", "fid")
# Anchor curves are straight lines in log10(bpp) (Akima reproduces lines exactly): slope per metric.
SLOPE = {"psnr": 4.0, "lpips": -0.1, "dists": -0.05, "fid": -30.0}
BASE = {"psnr": 25.0, "lpips": 0.30, "dists": 0.20, "fid": 80.0}
SHIFT = {"psnr": 1.5, "lpips": 0.05, "dists": 0.02, "fid": 20.0}  # x265: uniformly above the anchor
HINERV_RATE = 1.25  # hinerv: the anchor's quality at 1.25x the bits
VTM_RATE = np.array([1.1, 0.9, 1.2, 1.05])  # vtm: irregular, checked against bjontegaard
VTM_DELTA = {"psnr": [1.2, 0.7, 1.9, 1.1], "lpips": [0.04, 0.07, 0.02, 0.05], "dists": [0.01, 0.03, 0.02, 0.02],
             "fid": [12.0, 25.0, 9.0, 17.0]}


def _anchor(metric: str, sequence: str, bpp: np.ndarray) -> np.ndarray:
    offset = OFFSET[sequence] * (1 if metric == "psnr" else 0.01)
    return BASE[metric] + offset + SLOPE[metric] * np.log10(bpp / 0.005)


def _curves() -> dict[tuple[str, str], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(codec, sequence) -> (bpp, metric -> values)."""
    out = {}
    for seq, bpp in BPP.items():
        anchor = {m: _anchor(m, seq, bpp) for m in METRICS}
        out[("divinr", seq)] = (bpp, anchor)
        out[("x265", seq)] = (bpp, {m: anchor[m] + SHIFT[m] for m in METRICS})
        out[("hinerv", seq)] = (bpp * HINERV_RATE, anchor)
        out[("vtm", seq)] = (bpp * VTM_RATE, {m: anchor[m] + np.array(VTM_DELTA[m]) for m in METRICS})
    return out


def _results(curves: dict | None = None) -> list[RunResult]:
    results = []
    for (codec, seq), (bpp, metrics) in (curves or _curves()).items():
        for i, rate in enumerate(bpp):
            results.append(
                RunResult(
                    codec=codec, label=f"{codec} test curve", dataset="uvg", sequence=seq, rate_point=f"r{i}",
                    bpp=float(rate), metrics={m: float(v[i]) for m, v in metrics.items()},
                )
            )
    return results


def _write_results(root: Path, results: list[RunResult]) -> Path:
    for r in results:
        write_result(r, root / r.codec / r.sequence / r.rate_point)
    return root


def test_analytic_cells_and_sign_convention() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", BDWarning)  # every curve pair here overlaps well
        table = compute_table1(_results())
    assert table.codecs == ["x265", "vtm", "hinerv"]  # the paper's row order
    assert table.datasets == ["uvg"]
    for metric in METRICS:
        # Same rates, values shifted by a constant: the BD metric is that constant, with its sign.
        cell = table.cells[("x265", "uvg", metric)]
        assert cell.value == pytest.approx(SHIFT[metric], abs=1e-9)
        assert cell.basis == "sequences" and cell.sequences == 2
        # The anchor's quality at 1.25x the bits: BD = -slope * log10(1.25).
        expected = -SLOPE[metric] * math.log10(HINERV_RATE)
        assert table.cells[("hinerv", "uvg", metric)].value == pytest.approx(expected, abs=1e-9)
    # Uniformly higher PSNR is positive (better); higher LPIPS/DISTS/FID are positive (worse).
    assert table.cells[("x265", "uvg", "psnr")].value > 0 and table.cells[("x265", "uvg", "lpips")].value > 0
    assert table.cells[("hinerv", "uvg", "psnr")].value < 0 < table.cells[("hinerv", "uvg", "fid")].value


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_irregular_codec_matches_bjontegaard(method: str) -> None:
    curves = _curves()
    table = compute_table1(_results(curves), method=method)
    for metric in METRICS:
        per_sequence = []
        for seq in BPP:
            bpp_a, values_a = curves[("divinr", seq)]
            bpp_t, values_t = curves[("vtm", seq)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                per_sequence.append(bjontegaard.bd_psnr(bpp_a, values_a[metric], bpp_t, values_t[metric], method))
        assert table.cells[("vtm", "uvg", metric)].value == pytest.approx(np.mean(per_sequence), rel=1e-9, abs=1e-12)
    assert {(s, c, m) for _, s, c, m, _ in table.per_sequence if c == "vtm"} == {
        (s, "vtm", m) for s in BPP for m in METRICS
    }


def test_no_overlap_gives_nan_with_a_located_warning() -> None:
    curves = _curves()
    bpp, metrics = curves[("x265", "A")]
    curves[("x265", "A")] = (bpp * 100, metrics)
    with pytest.warns(BDWarning) as record:
        table = compute_table1(_results(curves))
    messages = {str(w.message) for w in record}
    assert all(f"x265 vs divinr on UVG, {m}, A: the anchor and test curves do not overlap" in " ".join(messages)
               for m in METRICS)
    assert math.isnan(table.cells[("x265", "uvg", "psnr")].value)  # one NaN sequence makes the cell NaN
    assert "| x265 | n/a |" in to_markdown(table)


def test_results_from_several_roots_make_the_same_table(tmp_path: Path) -> None:
    """A sweep's root and the anchors' root given together equal one root holding both."""
    results = _results()
    together, _ = run_table1(_write_results(tmp_path / "one", results), tmp_path / "out1")
    sweep = _write_results(tmp_path / "sweep", [r for r in results if r.codec == "divinr"])
    anchors = _write_results(tmp_path / "anchors", [r for r in results if r.codec != "divinr"])
    split, _ = run_table1([sweep, anchors], tmp_path / "out2")
    assert split.cells == together.cells and split.codecs == together.codecs
    with pytest.raises(DivinrError, match="missing-root does not exist"):
        run_table1([sweep, tmp_path / "missing-root"], tmp_path / "out3")


def test_bad_inputs_raise() -> None:
    with pytest.raises(DivinrError, match="anchor codec 'nope'"):
        compute_table1(_results(), anchor="nope")
    failed = _results()
    for r in failed:
        r.status = "failed"
    with pytest.raises(DivinrError, match="no successful results"):
        compute_table1(failed)


def test_files_written(tmp_path: Path) -> None:
    root = _write_results(tmp_path / "runs", _results())
    table, written = run_table1(root, tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == sorted([
        "table1.md", "table1.csv", "table1.tex", "table1_per_sequence.csv", "figures/rd_uvg.png", "figures/rd_uvg.pdf",
    ])
    assert all(p.stat().st_size > 0 for p in written)
    markdown = (tmp_path / "out" / "table1.md").read_text()
    assert "| x265 | +1.50 | +0.050 | +0.020 | +20.00 |" in markdown
    assert "| hinerv | -0.39 | +0.010 |" in markdown
    tex = (tmp_path / "out" / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\multicolumn{4}{c}{UVG}" in tex and r"x265 & $+1.50$ & $+0.050$" in tex
    with (tmp_path / "out" / "table1.csv").open() as handle:
        rows = {row["codec"]: row for row in csv.DictReader(handle)}
    assert float(rows["hinerv"]["uvg_psnr"]) == pytest.approx(-4 * math.log10(1.25))
    assert rows["vtm"]["label"] == "vtm test curve"


def test_imported_average_points(tmp_path: Path) -> None:
    pytest.importorskip("divinr.anchors.imported", reason="imported RD points loader not available")
    root = _write_results(tmp_path / "runs", [r for r in _results() if r.codec == "divinr"])
    imported_bpp, imported_psnr = [0.006, 0.012, 0.025, 0.045], [27.0, 29.0, 30.5, 31.5]
    csv_path = tmp_path / "dcvc.csv"
    lines = ["codec,dataset,sequence,bpp,psnr,source,reference"]
    lines += [f"DCVC-FM,UVG,average,{b},{p},Fig. 4,Li et al. 2024" for b, p in zip(imported_bpp, imported_psnr)]
    csv_path.write_text("\n".join(lines) + "\n")
    table, _ = run_table1(root, tmp_path / "out", imported=[csv_path])
    cell = table.cells[("DCVC-FM", "uvg", "psnr")]
    assert cell.basis == "average"
    anchor_bpp = np.mean([BPP[s] for s in BPP], axis=0)
    anchor_psnr = np.mean([_anchor("psnr", s, BPP[s]) for s in BPP], axis=0)
    expected = bjontegaard.bd_psnr(anchor_bpp, anchor_psnr, imported_bpp, imported_psnr, "akima")
    assert cell.value == pytest.approx(expected, rel=1e-9)
    assert math.isnan(table.cells[("DCVC-FM", "uvg", "lpips")].value)  # not reported
    markdown = to_markdown(table)
    assert f"| DCVC-FM | {cell.value:+.2f}* | n/a |" in markdown
    assert "imported: Fig. 4" in markdown


def test_cli_prints_table(tmp_path: Path) -> None:
    root = _write_results(tmp_path / "runs", _results())
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.table1", "--results", str(root), "--out", str(tmp_path / "out"),
         "--method", "pchip"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| x265 | +1.50 | +0.050 | +0.020 | +20.00 |" in proc.stdout
    assert "pchip interpolation" in proc.stdout
    assert (tmp_path / "out" / "table1.md").read_text() == proc.stdout


def test_cli_empty_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.table1", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no results.json found" in proc.stderr


def test_cli_missing_anchor_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _write_results(tmp_path / "runs", _results())
    assert main(["--results", str(root), "--out", str(tmp_path / "out"), "--anchor", "relic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "anchor codec 'relic'" in err[0]


def test_cli_reports_each_undefined_cell_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    curves = _curves()
    for seq in BPP:
        bpp, metrics = curves[("x265", seq)]
        curves[("x265", seq)] = (bpp * 100, metrics)
    root = _write_results(tmp_path / "runs", _results(curves))
    assert main(["--results", str(root), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "do not overlap" in line]
    assert len(lines) == len(METRICS) * len(BPP)  # one per sequence and metric, none deduplicated
    assert all(line.startswith("table1: warning: x265 vs divinr on UVG") for line in lines)
    assert "| x265 | n/a | n/a | n/a | n/a |" in captured.out


def test_cli_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = _write_results(tmp_path / "runs", _results())
    assert main(["--results", str(root), "--out", str(tmp_path / "out"), "--wandb"]) == 0
    run_files = tmp_path / "out" / "wandb"
    assert list(run_files.glob("offline-run-*/files/media/table/table1_*.table.json"))
    assert list(run_files.glob("offline-run-*/files/media/table/rd/points_*.table.json"))


def _numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


def _write_stats_results(root: Path) -> dict[tuple[str, str, int], tuple[float, np.ndarray, np.ndarray]]:
    """Two codecs x two sequences x four rate points with random features saved as fid_stats.npz."""
    g = np.random.default_rng(0)
    points = {}
    for codec, scale in (("divinr", 1.0), ("x265", 1.6)):
        for seq, bpp in BPP.items():
            real = g.normal(size=(40, 4)) + (3.0 if seq == "B" else 0.0)
            for i, rate in enumerate(bpp):
                fake = real + g.normal(scale=scale * 0.8 / (i + 1), size=real.shape) + 0.5 * scale / (i + 1)
                run_dir = root / codec / seq / f"r{i}"
                stats = FeatureStats.empty(4), FeatureStats.empty(4)
                stats[0].update(torch.from_numpy(real))
                stats[1].update(torch.from_numpy(fake))
                save_fid_stats(run_dir / FID_STATS_NAME, *stats)
                result = RunResult(
                    codec=codec, label=codec, dataset="uvg", sequence=seq, rate_point=f"r{i}", bpp=float(rate),
                    metrics={"psnr": 30.0 + 4 * i - scale, "fid": _numpy_fid(real, fake)},
                    config={"fid_stats": FID_STATS_NAME},
                )
                write_result(result, run_dir)
                points[(codec, seq, i)] = (float(rate), real, fake)
    return points


def test_table1_uses_pooled_fid_when_every_point_has_stats(tmp_path: Path) -> None:
    points = _write_stats_results(tmp_path / "runs")
    table, _ = run_table1(tmp_path / "runs", tmp_path / "out")
    assert table.fid == "pooled"
    cell = table.cells[("x265", "uvg", "fid")]
    assert cell.basis == "pooled"

    def curve(codec: str) -> tuple[list[float], list[float]]:
        bpp = [np.mean([points[(codec, s, i)][0] for s in BPP]) for i in range(4)]
        fid = [
            _numpy_fid(*(np.concatenate([points[(codec, s, i)][k] for s in BPP]) for k in (1, 2))) for i in range(4)
        ]
        return bpp, fid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = bjontegaard.bd_psnr(*curve("divinr"), *curve("x265"), "akima")
    assert cell.value == pytest.approx(expected, rel=1e-6)
    assert "pooled per-dataset FID" in (tmp_path / "out" / "table1.md").read_text()

    mean, _ = run_table1(tmp_path / "runs", tmp_path / "out", fid="mean")
    assert mean.fid == "mean" and mean.cells[("x265", "uvg", "fid")].basis == "sequences"
    assert "per-sequence FID" in to_markdown(mean)


def test_table1_falls_back_to_mean_fid_without_stats(tmp_path: Path) -> None:
    _write_stats_results(tmp_path / "runs")
    (tmp_path / "runs" / "x265" / "B" / "r2" / FID_STATS_NAME).unlink()
    result = tmp_path / "runs" / "x265" / "B" / "r2" / "results.json"
    stored = read_result(result)
    stored.config = {}
    write_result(stored, result.parent)
    with pytest.warns(RDWarning, match="mean of per-sequence FIDs"):
        table, _ = run_table1(tmp_path / "runs", tmp_path / "out")
    assert table.fid == "mean"
    with pytest.raises(DivinrError, match="no FID statistics"):
        run_table1(tmp_path / "runs", tmp_path / "out", fid="pooled")

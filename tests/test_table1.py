"""Table 1: BD values against analytic cases and the bjontegaard package, signs, column methods,
imported points and their geometry, files and the CLI."""

from __future__ import annotations

import csv
import json
import math
import re
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
from divinr.anchors.base import AnchorError
from divinr.anchors.imported import load_imported_points
from divinr.errors import DivinrError
from divinr.metrics.bd import BDWarning
from divinr.metrics.perceptual import FID_STATS_NAME, FeatureStats, save_fid_stats
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
FRAMES, WIDTH, HEIGHT = 8, 64, 32  # the geometry every measured test point is coded at
GEOMETRY_HEADER = "codec,dataset,sequence,bpp,psnr,fid,width,height,frames,source,reference"


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
                    frames=FRAMES, width=WIDTH, height=HEIGHT,
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
        assert cell.basis == "per-sequence" and cell.sequences == ("A", "B")
        assert table.columns[("uvg", metric)].method == "per-sequence"
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
    together, _ = run_table1(_write_results(tmp_path / "one", results), tmp_path / "out1", fid="mean")
    sweep = _write_results(tmp_path / "sweep", [r for r in results if r.codec == "divinr"])
    anchors = _write_results(tmp_path / "anchors", [r for r in results if r.codec != "divinr"])
    split, _ = run_table1([sweep, anchors], tmp_path / "out2", fid="mean")
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
    table, written = run_table1(root, tmp_path / "out", fid="mean")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == sorted([
        "table1.md", "table1.json", "table1.csv", "table1.tex", "table1_per_sequence.csv", "figures/rd_uvg.png",
        "figures/rd_uvg.pdf",
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
    assert {rows[c][f"uvg_{m}_bd"] for c in rows for m in METRICS} == {"per-sequence"}


def _imported_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([GEOMETRY_HEADER, *rows]) + "\n")
    return path


def test_imported_average_points(tmp_path: Path) -> None:
    root = _write_results(tmp_path / "runs", [r for r in _results() if r.codec == "divinr"])
    imported_bpp, imported_psnr = [0.006, 0.012, 0.025, 0.045], [27.0, 29.0, 30.5, 31.5]
    total = FRAMES * len(BPP)  # an average point states the frames of all the sequences it averages
    csv_path = _imported_csv(tmp_path / "dcvc.csv", [
        f"DCVC-FM,UVG,average,{b},{p},,{WIDTH},{HEIGHT},{total},Fig. 4,Li et al. 2024"
        for b, p in zip(imported_bpp, imported_psnr)
    ])
    table, _ = run_table1(root, tmp_path / "out", imported=[csv_path], fid="mean")
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
         "--method", "pchip", "--fid", "mean"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| x265 | +1.50 | +0.050 | +0.020 | +20.00 |" in proc.stdout
    assert "pchip interpolation" in proc.stdout
    assert (tmp_path / "out" / "table1.md").read_text() == proc.stdout


def test_cli_empty_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.table1", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
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
    assert main(["--results", str(root), "--out", str(tmp_path / "out"), "--fid", "mean"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "do not overlap" in line]
    assert len(lines) == len(METRICS) * len(BPP)  # one per sequence and metric, none deduplicated
    assert all(line.startswith("table1: warning: x265 vs divinr on UVG") for line in lines)
    assert "| x265 | n/a | n/a | n/a | n/a |" in captured.out


def test_cli_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = _write_results(tmp_path / "runs", _results())
    assert main(["--results", str(root), "--out", str(tmp_path / "out"), "--wandb", "--fid", "mean"]) == 0
    run_files = tmp_path / "out" / "wandb"
    assert list(run_files.glob("offline-run-*/files/media/table/table1_*.table.json"))
    assert list(run_files.glob("offline-run-*/files/media/table/rd/points_*.table.json"))


def _numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


STATS_CODECS = (("divinr", 1.0, ("A", "B")), ("x265", 1.6, ("A", "B")))


def _write_stats_results(
    root: Path, codecs: tuple[tuple[str, float, tuple[str, ...]], ...] = STATS_CODECS
) -> dict[tuple[str, str, int], tuple[float, np.ndarray, np.ndarray]]:
    """Codecs (name, noise scale, sequences) x four rate points with random features saved as fid_stats.npz.

    Codecs draw their features in order, so adding one at the end leaves the others' points unchanged.
    """
    g = np.random.default_rng(0)
    reals = {seq: g.normal(size=(40, 4)) + (3.0 if seq == "B" else 0.0) for seq in BPP}
    points = {}
    for codec, scale, sequences in codecs:
        for seq in sequences:
            real = reals[seq]
            for i, rate in enumerate(BPP[seq]):
                fake = real + g.normal(scale=scale * 0.8 / (i + 1), size=real.shape) + 0.5 * scale / (i + 1)
                run_dir = root / codec / seq / f"r{i}"
                stats = FeatureStats.empty(4), FeatureStats.empty(4)
                stats[0].update(torch.from_numpy(real))
                stats[1].update(torch.from_numpy(fake))
                save_fid_stats(run_dir / FID_STATS_NAME, *stats)
                result = RunResult(
                    codec=codec, label=codec, dataset="uvg", sequence=seq, rate_point=f"r{i}", bpp=float(rate),
                    metrics={"psnr": 30.0 + 4 * i - scale, "fid": _numpy_fid(real, fake)},
                    frames=FRAMES, width=WIDTH, height=HEIGHT, config={"fid_stats": FID_STATS_NAME},
                )
                write_result(result, run_dir)
                points[(codec, seq, i)] = (float(rate), real, fake)
    return points


def _pooled_curve(points: dict, codec: str, sequences: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """Mean bpp and the FID of all sequences' features pooled, per rate point (computed independently)."""
    bpp = [np.mean([points[(codec, s, i)][0] for s in sequences]) for i in range(4)]
    fid = [
        _numpy_fid(*(np.concatenate([points[(codec, s, i)][k] for s in sequences]) for k in (1, 2)))
        for i in range(4)
    ]
    return bpp, fid


def _expected_bd(anchor: tuple[list[float], list[float]], test: tuple[list[float], list[float]]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(*anchor, *test, "akima"))


def _remove_stats(root: Path, codec: str, sequence: str, rate_point: str) -> None:
    run_dir = root / codec / sequence / rate_point
    (run_dir / FID_STATS_NAME).unlink()
    stored = read_result(run_dir / "results.json")
    stored.config = {}
    write_result(stored, run_dir)


def test_table1_uses_pooled_fid_when_every_point_has_stats(tmp_path: Path) -> None:
    points = _write_stats_results(tmp_path / "runs")
    table, _ = run_table1(tmp_path / "runs", tmp_path / "out")
    assert table.fid == "pooled" and table.columns[("uvg", "fid")].method == "pooled"
    cell = table.cells[("x265", "uvg", "fid")]
    assert cell.basis == "pooled" and cell.sequences == ("A", "B")
    both = ("A", "B")
    assert cell.value == pytest.approx(_expected_bd(_pooled_curve(points, "divinr", both),
                                                    _pooled_curve(points, "x265", both)), rel=1e-6)
    assert "FID: pooled, BD between dataset curves" in (tmp_path / "out" / "table1.md").read_text()

    mean, _ = run_table1(tmp_path / "runs", tmp_path / "out", fid="mean")
    assert mean.fid == "mean" and mean.cells[("x265", "uvg", "fid")].basis == "per-sequence"
    assert "PSNR, FID: per-sequence, BD on each of divinr's 2 sequences (A, B), then the mean" in to_markdown(mean)


def test_column_methods_are_recorded_in_json_csv_and_caption(tmp_path: Path) -> None:
    _write_stats_results(tmp_path / "runs")
    run_table1(tmp_path / "runs", tmp_path / "out")
    data = json.loads((tmp_path / "out" / "table1.json").read_text())
    assert [(c["metric"], c["method"], c["sequences"]) for c in data["columns"]] == [
        ("psnr", "per-sequence", ["A", "B"]), ("lpips", "per-sequence", []), ("dists", "per-sequence", []),
        ("fid", "pooled", ["A", "B"]),
    ]
    fid_cell = next(c for c in data["cells"] if c["codec"] == "x265" and c["metric"] == "fid")
    assert fid_cell["basis"] == "pooled" and fid_cell["sequences"] == ["A", "B"]
    assert next(c for c in data["cells"] if c["metric"] == "lpips")["value"] is None  # NaN is null
    with (tmp_path / "out" / "table1.csv").open() as handle:
        (row,) = csv.DictReader(handle)
    assert (row["uvg_psnr_bd"], row["uvg_lpips_bd"], row["uvg_fid_bd"]) == ("per-sequence", "missing", "pooled")
    caption = (tmp_path / "out" / "table1.md").read_text().splitlines()[0]
    assert caption == data["caption"]
    assert "UVG PSNR: per-sequence, BD on each of divinr's 2 sequences (A, B), then the mean; " in caption
    assert "LPIPS, DISTS: per-sequence, no divinr values; FID: pooled" in caption


def test_an_imported_fid_point_does_not_change_the_fid_column(tmp_path: Path) -> None:
    _write_stats_results(tmp_path / "runs")
    alone, _ = run_table1(tmp_path / "runs", tmp_path / "out")
    rows = [
        f"DCVC-FM,UVG,{seq},{b},{30 + 3 * i},{60 - 10 * i},{WIDTH},{HEIGHT},{FRAMES},Fig. 4,Li et al. 2024"
        for seq in BPP for i, b in enumerate(BPP[seq] * 1.1)
    ]
    csv_path = _imported_csv(tmp_path / "dcvc.csv", rows)
    with pytest.warns(BDWarning, match="DCVC-FM vs divinr on UVG, fid: .*cannot be pooled"):
        table, _ = run_table1(tmp_path / "runs", tmp_path / "out2", imported=[csv_path])
    assert table.fid == "pooled" and table.columns[("uvg", "fid")].method == "pooled"
    assert table.cells[("x265", "uvg", "fid")] == alone.cells[("x265", "uvg", "fid")]
    dcvc = table.cells[("DCVC-FM", "uvg", "fid")]
    assert dcvc.basis == "no-stats" and math.isnan(dcvc.value)
    assert table.cells[("DCVC-FM", "uvg", "psnr")].basis == "per-sequence"
    markdown = to_markdown(table)
    assert "| n/a\u2021 |" in markdown and "\u2021 no FID statistics for this codec" in markdown


def test_pooled_fid_needs_the_anchors_stats_and_marks_other_codecs_without(tmp_path: Path) -> None:
    _write_stats_results(tmp_path / "runs")
    _remove_stats(tmp_path / "runs", "x265", "B", "r2")
    with pytest.warns(BDWarning, match="x265 vs divinr on UVG, fid: .*no FID statistics"):
        table, _ = run_table1(tmp_path / "runs", tmp_path / "out")
    assert table.fid == "pooled" and table.cells[("x265", "uvg", "fid")].basis == "no-stats"
    assert table.cells[("x265", "uvg", "psnr")].basis == "per-sequence"
    _remove_stats(tmp_path / "runs", "divinr", "A", "r0")
    with pytest.raises(DivinrError, match="FID points of divinr have no FID statistics.*use --fid mean"):
        run_table1(tmp_path / "runs", tmp_path / "out")
    mean, _ = run_table1(tmp_path / "runs", tmp_path / "out", fid="mean")
    assert mean.cells[("x265", "uvg", "fid")].basis == "per-sequence"


def test_every_codec_of_a_column_covers_the_anchors_sequences(tmp_path: Path) -> None:
    """A codec with fewer sequences neither shrinks the others' cells nor hides it: it is marked partial."""
    baseline = _write_stats_results(tmp_path / "two")
    points = _write_stats_results(tmp_path / "three", (*STATS_CODECS, ("hinerv", 1.3, ("A",))))
    assert all(points[k][0] == baseline[k][0] and np.array_equal(points[k][2], baseline[k][2]) for k in baseline)
    two, _ = run_table1(tmp_path / "two", tmp_path / "out2")
    with pytest.warns(BDWarning, match="hinerv lacks B of the column's sequences"):
        three, _ = run_table1(tmp_path / "three", tmp_path / "out3")
    for metric in ("psnr", "fid"):
        assert three.cells[("x265", "uvg", metric)] == two.cells[("x265", "uvg", metric)]
        assert three.cells[("hinerv", "uvg", metric)].basis == "partial"
        assert three.cells[("hinerv", "uvg", metric)].sequences == ("A",)
    # The partial pooled cell compares like with like: the anchor pooled over the same sequence only.
    expected = _expected_bd(_pooled_curve(points, "divinr", ("A",)), _pooled_curve(points, "hinerv", ("A",)))
    assert three.cells[("hinerv", "uvg", "fid")].value == pytest.approx(expected, rel=1e-6)
    markdown = to_markdown(three)
    assert "\u2020 hinerv, UVG PSNR, FID: the column's method on the sequences both codecs have; hinerv lacks B." in (
        markdown)
    hinerv_row = next(line for line in markdown.splitlines() if line.startswith("| hinerv |"))
    assert hinerv_row.count("\u2020") == 2


def test_imported_geometry_must_match_the_measured_points(tmp_path: Path) -> None:
    root = _write_results(tmp_path / "runs", _results())
    seq_row = "DCVC-FM,UVG,A,{b},{p},,{w},{h},{f},Table 3,Li et al. 2024"
    good = [seq_row.format(b=b, p=26 + 2 * i, w=WIDTH, h=HEIGHT, f=FRAMES) for i, b in enumerate(BPP["A"])]
    table, _ = run_table1(root, tmp_path / "out", imported=[_imported_csv(tmp_path / "good.csv", good)], fid="mean")
    assert table.cells[("DCVC-FM", "uvg", "psnr")].basis == "partial"  # measured on A only

    hd = [seq_row.format(b=b, p=26 + 2 * i, w=1920, h=1080, f=FRAMES) for i, b in enumerate(BPP["A"])]
    with pytest.raises(DivinrError) as info:
        run_table1(root, tmp_path / "out", imported=[_imported_csv(tmp_path / "hd.csv", hd)], fid="mean")
    message = str(info.value)
    assert "imported DCVC-FM point UVG/A" in message and "8 frames of 1920x1080" in message
    assert "measured points of UVG/A are 8 frames of 64x32" in message and "\n" not in message

    average = [f"Relic,UVG,average,{b},{26 + 2 * i},,{WIDTH},{HEIGHT},600,Fig. 5,Relic et al. 2025"
               for i, b in enumerate(BPP["A"])]
    with pytest.raises(DivinrError, match=r"imported Relic point UVG/average .* is 600 frames of 64x32 in all but "
                                          r"divinr's 2 measured UVG sequences are 16 frames of 64x32"):
        run_table1(root, tmp_path / "out", imported=[_imported_csv(tmp_path / "avg.csv", average)], fid="mean")


def test_imported_points_require_their_geometry(tmp_path: Path) -> None:
    header = "codec,dataset,sequence,bpp,psnr,source,reference"
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{header}\nDCVC-FM,UVG,average,0.01,33,Fig. 5,Li 2024\n")
    with pytest.raises(AnchorError, match="row 2: missing geometry 'width'; every point must give width, height"):
        load_imported_points(bad)
    for width, problem in (("1024x576", "is not a whole number"), ("0", "must be positive"), ("7.5", "whole")):
        bad.write_text(f"{header},width,height,frames\nDCVC-FM,UVG,average,0.01,33,Fig. 5,Li 2024,{width},576,96\n")
        with pytest.raises(AnchorError, match=f"row 2: width '{re.escape(width)}' .*{problem}"):
            load_imported_points(bad)
    shared = {"source": "Table 2", "reference": "Li 2024", "width": 1024, "height": 576, "frames": 600,
              "points": [{"codec": "DCVC-FM", "dataset": "UVG", "sequence": "Beauty", "bpp": 0.01},
                         {"codec": "DCVC-FM", "dataset": "UVG", "sequence": "ShakeNDry", "bpp": 0.01, "frames": 300}]}
    (tmp_path / "pts.json").write_text(json.dumps(shared))
    first, second = load_imported_points(tmp_path / "pts.json")
    assert (first.width, first.height, first.frames, second.frames) == (1024, 576, 600, 300)
    shared["width"] = True
    (tmp_path / "pts.json").write_text(json.dumps(shared))
    with pytest.raises(AnchorError, match="point 1: width True is not a whole number"):
        load_imported_points(tmp_path / "pts.json")

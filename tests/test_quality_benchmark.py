"""The CPU quality benchmark's bookkeeping: resumable points and BD against DiV-INR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality import bd_table, cached
from divinr.metrics.bd import bd_metric


def _curve(codec: str, rates: list[float], offset: float) -> list[dict]:
    return [{"codec": codec, "bpp": r, "psnr": 20 + 3 * np.log10(r) + offset, "ms_ssim": None} for r in rates]


def test_bd_table_is_curve_minus_divinr_and_skips_rateless_points() -> None:
    points = [
        *_curve("divinr", [0.01, 0.02, 0.04], 0.0),
        *_curve("x265", [0.01, 0.02, 0.04, 0.08], 2.5),
        {"codec": "vae_ceiling", "bpp": None, "psnr": 30.0, "ms_ssim": 0.9},
        *_curve("lonely", [0.02], 1.0),
    ]
    table = bd_table(points)
    assert set(table) == {"x265"}  # no rate: no curve; one point: no curve
    assert table["x265"]["psnr"] == pytest.approx(2.5, abs=1e-3)
    assert table["x265"]["ms_ssim"] is None
    div, x265 = points[:3], points[3:7]
    reference = bd_metric([p["bpp"] for p in div], [p["psnr"] for p in div],
                          [p["bpp"] for p in x265], [p["psnr"] for p in x265], "pchip", min_overlap=0.0)
    assert table["x265"]["psnr"] == pytest.approx(round(reference, 3))


def test_cached_points_are_computed_once(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"codec": "x", "bpp": 0.1, "psnr": 20.0}

    first = cached(tmp_path / "p.json", compute)
    second = cached(tmp_path / "p.json", compute)
    assert len(calls) == 1 and first == second == json.loads((tmp_path / "p.json").read_text())
    assert "seconds" in first

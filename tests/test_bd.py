"""BD-rate / BD-metric against the bjontegaard package, analytic cases and bad curves."""

from __future__ import annotations

import warnings

import bjontegaard
import numpy as np
import pytest

from divinr.errors import PresetError
from divinr.metrics.bd import METHODS, BDWarning, bd_metric, bd_rate

# The bjontegaard package's README example (libx265 presets, measured with ffmpeg).
RATE_ANCHOR = [9487.76, 4593.60, 2486.44, 1358.24]
PSNR_ANCHOR = [40.037, 38.615, 36.845, 34.851]
RATE_TEST = [9787.80, 4469.00, 2451.52, 1356.24]
PSNR_TEST = [40.121, 38.651, 36.970, 34.987]


def _reference(fn, *curves, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*curves, method, require_matching_points=False)


def _ours(fn, *curves, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BDWarning)
        return fn(*curves, method)


@pytest.mark.parametrize("method", METHODS)
def test_package_example(method):
    curves = (RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    expected_rate = _reference(bjontegaard.bd_rate, *curves, method=method)
    expected_psnr = _reference(bjontegaard.bd_psnr, *curves, method=method)
    assert bd_rate(*curves, method) == pytest.approx(expected_rate, abs=1e-6)
    assert bd_metric(*curves, method) == pytest.approx(expected_psnr, abs=1e-6)


def _random_curve(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    rates = np.sort(rng.uniform(0.002, 0.2, n))
    while np.any(np.diff(rates) < 1e-4):
        rates = np.sort(rng.uniform(0.002, 0.2, n))
    psnr = 28 + np.cumsum(rng.uniform(0.3, 2.5, n))
    return rates, psnr


@pytest.mark.parametrize("method", METHODS)
def test_random_monotone_curves_match_bjontegaard(method):
    rng = np.random.default_rng(2024)
    for _ in range(50):
        n_anchor, n_test = rng.integers(4, 8, size=2)
        ra, pa = _random_curve(rng, n_anchor)
        rt, pt = _random_curve(rng, n_test)
        # bjontegaard walks each curve in the given order; give it decreasing rates too.
        if rng.random() < 0.5:
            ra, pa = ra[::-1], pa[::-1]
        curves = (ra, pa, rt, pt)
        expected_rate = _reference(bjontegaard.bd_rate, *curves, method=method)
        expected_metric = _reference(bjontegaard.bd_psnr, *curves, method=method)
        if np.isnan(expected_rate):
            assert np.isnan(_ours(bd_rate, *curves, method=method))
        else:
            assert _ours(bd_rate, *curves, method=method) == pytest.approx(expected_rate, abs=1e-6)
        if np.isnan(expected_metric):
            assert np.isnan(_ours(bd_metric, *curves, method=method))
        else:
            assert _ours(bd_metric, *curves, method=method) == pytest.approx(expected_metric, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_lower_is_better_metric(method):
    """LPIPS-like curves (falling with rate): bjontegaard handles them in decreasing-rate order."""
    rates_a = np.array([0.08, 0.04, 0.02, 0.01])
    lpips_a = np.array([0.10, 0.16, 0.25, 0.37])
    rates_t = np.array([0.09, 0.05, 0.025, 0.012])
    lpips_t = np.array([0.09, 0.14, 0.22, 0.35])
    curves = (rates_a, lpips_a, rates_t, lpips_t)
    expected = _reference(bjontegaard.bd_rate, *curves, method=method)
    assert _ours(bd_rate, *curves, method=method) == pytest.approx(expected, abs=1e-6)
    shuffled = (rates_a[[2, 0, 3, 1]], lpips_a[[2, 0, 3, 1]], rates_t[::-1], lpips_t[::-1])
    assert _ours(bd_rate, *shuffled, method=method) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_analytic_shift(method):
    """Metric linear in log-rate: every interpolant is exact, so BD values are known in closed form."""
    rates = np.array([0.005, 0.01, 0.02, 0.04, 0.08])
    slope = 3.0
    metric = 30 + slope * np.log10(rates / 0.005)
    # The test reaches the same metric at half the rate: -50 % rate, +slope*log10(2) metric.
    assert bd_rate(rates, metric, rates / 2, metric, method, min_overlap=0) == pytest.approx(-50.0, abs=1e-9)
    assert bd_metric(rates, metric, rates / 2, metric, method, min_overlap=0) == pytest.approx(
        slope * np.log10(2), abs=1e-9
    )


@pytest.mark.parametrize("fn", [bd_rate, bd_metric])
def test_non_overlapping_curves_warn_and_return_nan(fn):
    with pytest.warns(BDWarning, match="do not overlap"):
        value = fn([1, 2, 3, 4], [30, 31, 32, 33], [10, 20, 30, 40], [40, 41, 42, 43])
    assert np.isnan(value)


@pytest.mark.parametrize("fn", [bd_rate, bd_metric])
@pytest.mark.parametrize(
    "curves, message",
    [
        (([1.0], [30.0], [1.0, 2.0], [30.0, 31.0]), "needs at least 2"),
        (([1, 2, 2, 3], [30, 31, 32, 33], [1, 2, 3, 4], [30, 31, 32, 33]), "duplicate rates"),
        (([1, 2, 3], [30, 31], [1, 2, 3], [30, 31, 32]), "3 rates but 2"),
        (([1, 2, 3], [30, np.nan, 32], [1, 2, 3], [30, 31, 32]), "non-finite"),
        (([0, 2, 3], [30, 31, 32], [1, 2, 3], [30, 31, 32]), "non-positive"),
    ],
)
def test_bad_curves_warn_and_return_nan(fn, curves, message):
    with pytest.warns(BDWarning, match=message):
        assert np.isnan(fn(*curves))


@pytest.mark.parametrize("fn", [bd_rate, bd_metric])
def test_cubic_needs_four_points(fn):
    curves = ([1, 2, 4], [30, 32, 34], [1.1, 2.1, 4.1], [30.5, 32.5, 34.5])
    with pytest.warns(BDWarning, match="needs at least 4"):
        assert np.isnan(fn(*curves, "cubic"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BDWarning)
        assert np.isfinite(fn(*curves, "akima"))


def test_non_monotone_curve():
    rates, metric = [0.01, 0.02, 0.04, 0.08], [30.0, 32.0, 31.5, 34.0]
    test = ([0.011, 0.021, 0.041, 0.081], [30.2, 31.0, 32.7, 33.9])
    with pytest.warns(BDWarning, match="not strictly monotone"):
        assert np.isnan(bd_rate(rates, metric, *test))
    # BD-metric integrates the metric over rate, which stays defined (bjontegaard agrees).
    expected = _reference(bjontegaard.bd_psnr, rates, metric, *test, method="akima")
    assert bd_metric(rates, metric, *test) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_small_overlap_warns_but_computes(method):
    anchor = ([1, 2, 4, 8], [30, 32, 34, 36])
    test = ([5, 10, 20, 40], [35, 37, 39, 41])
    with pytest.warns(BDWarning, match="overlap"):
        value = bd_metric(*anchor, *test, method)
    expected = _reference(bjontegaard.bd_psnr, *anchor, *test, method=method)
    assert np.isfinite(value) and value == pytest.approx(expected, abs=1e-6)


def test_unknown_method_is_a_preset_error():
    with pytest.raises(PresetError, match="akima"):
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, "spline")

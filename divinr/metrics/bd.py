"""Bjøntegaard-delta metrics between two rate-distortion curves.

Same definitions, argument order and numbers as the ``bjontegaard`` package (FAU-LMS, 1.3):

- :func:`bd_metric` (``bjontegaard.bd_psnr``, for any metric): the metric interpolated as a
  function of log10(rate), integrated exactly over the overlap of the two log-rate ranges;
  returns the mean of test minus anchor.
- :func:`bd_rate`: log10(rate) interpolated as a function of the metric, integrated over the
  overlap of the two metric ranges; the mean log-rate gap d is returned as
  ``(10**d - 1) * 100`` percent (negative: the test needs fewer bits).

Interpolants: ``"akima"`` (scipy's Akima spline), ``"pchip"`` (monotone piecewise cubic
Hermite, the JVET CTC sheet), ``"cubic"`` (one least-squares third-order polynomial over the
whole curve: the original VCEG-M33 method). Splines and the polynomial are integrated in
closed form, so no quadrature error enters.

Differences from ``bjontegaard``: points may come in any order (each curve is sorted by
rate), anchor and test may have different point counts, and problems with a curve (too few
points, duplicate rates, non-finite values, no overlap) give a :class:`BDWarning` and NaN
instead of an exception, so one bad curve does not stop a whole results table.

>>> rates = [100.0, 200.0, 400.0, 800.0]
>>> round(bd_rate(rates, [30, 33, 36, 39], [r / 2 for r in rates], [30, 33, 36, 39]), 6)
-50.0
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import Akima1DInterpolator, PchipInterpolator

from divinr.errors import unknown_choice

METHODS = ("akima", "pchip", "cubic")
#: Fewest points each interpolant is defined by: a cubic fit is underdetermined below 4.
MIN_POINTS = {"akima": 2, "pchip": 2, "cubic": 4}

_Values = Sequence[float] | np.ndarray


class BDWarning(UserWarning):
    """A BD value could not be computed reliably (NaN returned) or rests on little overlap."""


def _warn(message: str, stacklevel: int = 3) -> float:
    warnings.warn(message, BDWarning, stacklevel=stacklevel)
    return float("nan")


def _curve(rate: _Values, metric: _Values, label: str, method: str) -> tuple[np.ndarray, np.ndarray] | str:
    """The curve's points sorted by rate, or a description of why it cannot be used."""
    r, m = np.asarray(rate, dtype=np.float64).ravel(), np.asarray(metric, dtype=np.float64).ravel()
    if r.shape != m.shape:
        return f"{label} has {r.size} rates but {m.size} metric values"
    if r.size < MIN_POINTS[method]:
        return f"{label} has {r.size} points; method {method!r} needs at least {MIN_POINTS[method]}"
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(m))):
        return f"{label} has non-finite rate or metric values"
    if np.any(r <= 0):
        return f"{label} has non-positive rates (log-rate undefined)"
    order = np.argsort(r, kind="stable")
    r, m = r[order], m[order]
    if np.any(np.diff(r) == 0):
        return f"{label} has duplicate rates"
    return r, m


def _integral(x: np.ndarray, y: np.ndarray, method: str, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] of the interpolant through strictly increasing ``x``."""
    if method == "cubic":
        antiderivative = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    spline = Akima1DInterpolator(x, y) if method == "akima" else PchipInterpolator(x, y)
    return float(spline.integrate(lo, hi))


def _mean_gap(
    x_anchor: np.ndarray, y_anchor: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, method: str, min_overlap: float
) -> float:
    """Mean of (test - anchor) interpolants over the overlap of the two x ranges."""
    lo, hi = max(x_anchor[0], x_test[0]), min(x_anchor[-1], x_test[-1])
    span = max(x_anchor[-1], x_test[-1]) - min(x_anchor[0], x_test[0])
    overlap = max(hi - lo, 0.0) / span
    if overlap == 0:
        return _warn("the anchor and test curves do not overlap; BD is undefined", stacklevel=4)
    if overlap < min_overlap:
        warnings.warn(
            f"the curves overlap over {overlap:.0%} of their range, less than min_overlap={min_overlap:.0%}; "
            "the BD value extrapolates little but rests on a narrow interval",
            BDWarning,
            stacklevel=3,
        )
    gap = _integral(x_test, y_test, method, lo, hi) - _integral(x_anchor, y_anchor, method, lo, hi)
    return gap / (hi - lo)


def _prepare(
    rate_anchor: _Values, metric_anchor: _Values, rate_test: _Values, metric_test: _Values, method: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | str:
    if method not in METHODS:
        raise unknown_choice("BD interpolation method", method, METHODS)
    anchor = _curve(rate_anchor, metric_anchor, "the anchor curve", method)
    test = _curve(rate_test, metric_test, "the test curve", method)
    for curve in (anchor, test):
        if isinstance(curve, str):
            return curve
    return anchor, test  # type: ignore[return-value]


def bd_metric(
    rate_anchor: _Values,
    metric_anchor: _Values,
    rate_test: _Values,
    metric_test: _Values,
    method: str = "akima",
    *,
    min_overlap: float = 0.75,
) -> float:
    """Mean metric difference (test minus anchor) at equal log-rate (BD-PSNR for PSNR).

    Args:
        rate_anchor: anchor rates (e.g. bpp), any order.
        metric_anchor: anchor metric values, aligned with ``rate_anchor``.
        rate_test: test rates.
        metric_test: test metric values.
        method: ``"akima"``, ``"pchip"`` or ``"cubic"``.
        min_overlap: warn when the log-rate ranges overlap over less than this fraction of
            their union (the value is still computed, as ``bjontegaard`` does).

    Returns:
        The BD metric in the metric's unit, or NaN (with a :class:`BDWarning`) when a curve
        is unusable or the log-rate ranges do not overlap.

    Raises:
        PresetError: unknown ``method``.
    """
    curves = _prepare(rate_anchor, metric_anchor, rate_test, metric_test, method)
    if isinstance(curves, str):
        return _warn(f"BD metric not computed: {curves}")
    (ra, ma), (rt, mt) = curves
    return float(_mean_gap(np.log10(ra), ma, np.log10(rt), mt, method, min_overlap))


def bd_rate(
    rate_anchor: _Values,
    metric_anchor: _Values,
    rate_test: _Values,
    metric_test: _Values,
    method: str = "akima",
    *,
    min_overlap: float = 0.75,
) -> float:
    """Mean rate difference (test vs anchor) at equal metric, in percent.

    Works for higher-is-better and lower-is-better metrics alike: each curve only has to be
    strictly monotone (rate as a function of the metric must exist).

    Args:
        rate_anchor: anchor rates (e.g. bpp), any order.
        metric_anchor: anchor metric values, aligned with ``rate_anchor``.
        rate_test: test rates.
        metric_test: test metric values.
        method: ``"akima"``, ``"pchip"`` or ``"cubic"``.
        min_overlap: warn when the metric ranges overlap over less than this fraction of
            their union (the value is still computed, as ``bjontegaard`` does).

    Returns:
        BD-rate in percent (negative: the test saves bits), or NaN (with a
        :class:`BDWarning`) when a curve is unusable or the metric ranges do not overlap.

    Raises:
        PresetError: unknown ``method``.
    """
    curves = _prepare(rate_anchor, metric_anchor, rate_test, metric_test, method)
    if isinstance(curves, str):
        return _warn(f"BD rate not computed: {curves}")
    by_metric = []
    for (rates, values), label in zip(curves, ("anchor", "test")):
        steps = np.diff(values)
        if not (np.all(steps > 0) or np.all(steps < 0)):
            return _warn(f"BD rate not computed: the {label} metric is not strictly monotone in rate")
        order = np.argsort(values)
        by_metric.append((values[order], np.log10(rates[order])))
    (xa, ya), (xt, yt) = by_metric
    gap = _mean_gap(xa, ya, xt, yt, method, min_overlap)
    return float((10.0**gap - 1.0) * 100.0)

"""Rate-distortion curves from results files: averaging, figures and tables, nothing else.

Sweeps, the experiment runner and Table 1 all draw their curves from :class:`RunResult`
records through here, so every figure and table averages the same way:

    results.json ... --sequence_curves--> per (dataset, codec, sequence): [(bpp, value)]
                     --rd_points--------> per (dataset, codec): mean over sequences at each
                                          rate point of bpp and of the metric (FID: optionally
                                          the pooled FID of those sequences' patches, from the
                                          fid_stats.npz beside each results.json)
                     --plot_rd_curves---> rd_<dataset>.png / .pdf (one subplot per metric)
                     --point_rows-------> one table row per point (POINT_COLUMNS)

Averaging at equal rate point (not at equal bpp) is what the benchmark papers plot: each
codec setting (QP, INR preset) gives one point per sequence, and the dataset point is the mean
of their bpp and their metric values (per-frame -> per-sequence -> per-dataset, as in
BENCHMARKS.md). Only ``status == "ok"`` results with a positive finite bpp and a finite value
of the metric count. A rate point missing on some sequence is left out of the dataset average
(with a warning), since averaging it over fewer sequences would mix different content.

Figures need only matplotlib (Agg canvas, no pyplot state). Results go in, curves, figures
and rows come out: sending them anywhere (Weights & Biases: ``experiments.wandb_logging``) is
the caller's business.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from divinr.atomic import atomic_path
from divinr.data.datasets import DATASETS, dataset_key, dataset_title
from divinr.errors import DivinrError, unknown_choice
from divinr.metrics.names import HIGHER_IS_BETTER, METRIC_LABELS, REPORTED_METRICS
from divinr.results import RESULTS_NAME, RunResult, read_result

if TYPE_CHECKING:
    from divinr.metrics.perceptual import FeatureStats

ANCHOR_CODEC = "divinr"
FIGURE_FORMATS = ("png", "pdf", "svg")
POINT_COLUMNS = ("dataset", "sequence", "codec", "rate_point", "bpp", *REPORTED_METRICS)
#: Sequence name of points that are already dataset averages (imported from papers).
AVERAGE_SEQUENCE = "average"

Curve = list[tuple[float, float]]
#: (dataset key, codec, sequence, rate point) -> (real, fake) ``FeatureStats`` of that point.
FidStats = dict[tuple[str, str, str, str], tuple["FeatureStats", "FeatureStats"]]


class RDWarning(UserWarning):
    """Some results could not enter a curve (incomplete rate points)."""


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _points_by_sequence(
    results: Iterable[RunResult], metric: str
) -> dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]]:
    """(dataset, codec) -> sequence -> rate point -> (bpp, value), usable results only."""
    table: dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    geometry: dict[tuple[str, str], tuple[str, tuple[int, int, int]]] = {}
    for result in results:
        bpp, value = _finite(result.bpp), _finite(result.metrics.get(metric))
        if result.status != "ok" or bpp is None or bpp <= 0 or value is None:
            continue
        key = (dataset_key(result.dataset), result.codec)
        shape = (result.frames, result.width, result.height)
        if all(shape):  # imported points may not state their geometry
            seen = geometry.setdefault((key[0], result.sequence), (result.codec, shape))
            if seen[1] != shape:
                raise DivinrError(
                    f"{result.dataset}/{result.sequence}: {seen[0]} was coded as {seen[1][0]} frames of "
                    f"{seen[1][1]}x{seen[1][2]} but {result.codec} as {shape[0]} of {shape[1]}x{shape[2]}; "
                    "compare codecs on the same frames (same data.width/height/max_frames)"
                )
        points = table[key][result.sequence]
        if result.rate_point in points:
            raise DivinrError(
                f"two results for codec {result.codec!r}, {result.dataset}/{result.sequence}, rate point "
                f"{result.rate_point!r}; remove the stale run directory"
            )
        points[result.rate_point] = (bpp, value)
    return table


def sequence_curves(results: Iterable[RunResult], metric: str) -> dict[tuple[str, str, str], Curve]:
    """Per-sequence RD curves of one metric.

    Args:
        results: run results (failed ones and missing values are skipped).
        metric: a key of ``RunResult.metrics``.

    Returns:
        ``(dataset key, codec, sequence) -> [(bpp, value), ...]`` sorted by bpp.
    """
    return {
        (dataset, codec, sequence): sorted(points.values())
        for (dataset, codec), by_sequence in _points_by_sequence(results, metric).items()
        for sequence, points in by_sequence.items()
    }


def load_point_fid_stats(root: str | Path) -> FidStats:
    """The FID statistics of every finished point below ``root`` whose results record them.

    Args:
        root: folder searched recursively for ``results.json``.

    Returns:
        Statistics by (dataset key, codec, sequence, rate point).

    Raises:
        DivinrError: a results file names a statistics file that cannot be read.
    """
    # Imported here: the statistics need torch, which tables and figures otherwise do not.
    from divinr.metrics.perceptual import load_fid_stats

    stats: FidStats = {}
    for path in sorted(Path(root).rglob(RESULTS_NAME)):
        result = read_result(path)
        if result.status == "ok" and result.config.get("fid_stats"):
            key = (dataset_key(result.dataset), result.codec, result.sequence, result.rate_point)
            stats[key] = load_fid_stats(path.parent / result.config["fid_stats"])
    return stats


def missing_fid_stats(results: Iterable[RunResult], stats: FidStats) -> list[RunResult]:
    """The usable FID points (ok, finite FID) that have no statistics in ``stats``."""
    return [
        r for r in results
        if r.status == "ok" and _finite(r.metrics.get("fid")) is not None
        and (dataset_key(r.dataset), r.codec, r.sequence, r.rate_point) not in stats
    ]


def rd_points(
    results: Iterable[RunResult], metric: str, fid_stats: FidStats | None = None
) -> dict[tuple[str, str], Curve]:
    """Dataset-average RD curves: at each rate point, mean bpp and mean metric over sequences.

    Only the sequences every codec of the dataset has are averaged, so curves are comparable;
    rate points that not every sequence of a (dataset, codec) has are dropped. Both come with
    an :class:`RDWarning`. Codecs coded at different geometries on one sequence raise
    :class:`DivinrError`. Points whose sequence is ``"average"`` (imported
    dataset averages) are taken as they are.

    Args:
        results: run results (failed ones and missing values are skipped).
        metric: a key of ``RunResult.metrics``.
        fid_stats: with ``metric="fid"``, the value of a rate point is the pooled FID of the
            averaged sequences (:func:`~divinr.metrics.perceptual.pooled_fid`) instead of the
            mean of their FIDs; every such point needs statistics (see :func:`missing_fid_stats`).

    Returns:
        ``(dataset key, codec) -> [(mean bpp, mean value), ...]`` sorted by bpp.
    """
    pooled = metric == "fid" and fid_stats is not None
    table = _points_by_sequence(results, metric)
    common: dict[str, set[str]] = {}
    for (dataset, _), by_sequence in table.items():
        sequences = set(by_sequence) - {AVERAGE_SEQUENCE}
        if sequences:
            common[dataset] = common[dataset] & sequences if dataset in common else sequences
    curves: dict[tuple[str, str], Curve] = {}
    for (dataset, codec), by_sequence in table.items():
        extra = set(by_sequence) - common.get(dataset, set()) - {AVERAGE_SEQUENCE}
        if extra:
            warnings.warn(
                f"{codec} on {dataset_title(dataset)}, {metric}: sequences {sorted(extra)} are not available for "
                "every codec and are left out so all curves average the same sequences",
                RDWarning,
                stacklevel=2,
            )
            by_sequence = {s: p for s, p in by_sequence.items() if s not in extra}
            if not by_sequence:
                continue
        if AVERAGE_SEQUENCE in by_sequence and len(by_sequence) > 1:
            warnings.warn(
                f"{codec} on {dataset_title(dataset)}, {metric}: both per-sequence and {AVERAGE_SEQUENCE!r} points; "
                "the per-sequence points are averaged and the given average is ignored",
                RDWarning,
                stacklevel=2,
            )
            by_sequence = {s: p for s, p in by_sequence.items() if s != AVERAGE_SEQUENCE}
        rate_sets = [set(points) for points in by_sequence.values()]
        complete = set.intersection(*rate_sets)
        dropped = set.union(*rate_sets) - complete
        if dropped:
            warnings.warn(
                f"{codec} on {dataset_title(dataset)}, {metric}: rate points {sorted(dropped)} are missing on some "
                f"sequences and are left out of the dataset average",
                RDWarning,
                stacklevel=2,
            )
        n = len(by_sequence)
        curves[(dataset, codec)] = sorted(
            (
                sum(points[rp][0] for points in by_sequence.values()) / n,
                _pooled(fid_stats, dataset, codec, by_sequence, rp) if pooled
                else sum(points[rp][1] for points in by_sequence.values()) / n,
            )
            for rp in complete
        )
    return curves


def _pooled(stats: FidStats | None, dataset: str, codec: str, sequences: Iterable[str], rate_point: str) -> float:
    from divinr.metrics.perceptual import pooled_fid

    keys = [(dataset, codec, s, rate_point) for s in sequences]
    lacking = [k for k in keys if k not in (stats or {})]
    if lacking:
        raise DivinrError(
            f"{codec} on {dataset_title(dataset)}, rate point {rate_point!r}: no FID statistics for "
            f"{', '.join(k[2] for k in lacking)}; re-run those points or use the mean of per-sequence FIDs"
        )
    return pooled_fid((stats or {})[k] for k in keys)


def codec_labels(results: Iterable[RunResult]) -> dict[str, str]:
    """The first label each codec carries (the honest description of its settings)."""
    labels: dict[str, str] = {}
    for result in results:
        labels.setdefault(result.codec, result.label or result.codec)
    return labels


def dataset_order(datasets: Iterable[str]) -> list[str]:
    """Registry datasets in registry order (UVG, JVET-B, MCL-JCV), then the others sorted."""
    present = set(datasets)
    return [d for d in DATASETS if d in present] + sorted(present - set(DATASETS))


# ---------------------------------------------------------------------------- figures


def _atomic_savefig(figure: Any, path: Path, fmt: str) -> None:
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        figure.savefig(tmp, format=fmt, dpi=150)


def plot_rd_curves(
    results: Sequence[RunResult],
    out_dir: str | Path,
    metrics: Sequence[str] = REPORTED_METRICS,
    formats: Sequence[str] = ("png", "pdf"),
    *,
    anchor: str = ANCHOR_CODEC,
    log_x: bool = False,
    fid_stats: FidStats | None = None,
    title: str | None = None,
) -> list[Path]:
    """Draw one figure per dataset, one subplot per metric, one line per codec (Fig. 4 style).

    Lines are the dataset averages of :func:`rd_points`; the ``anchor`` codec (DiV-INR) is
    drawn on top, thicker and in its own colour. Metrics without any point are left out;
    a dataset without any point gets no figure.

    Args:
        results: run results.
        out_dir: folder for ``rd_<dataset>.<format>`` (created).
        metrics: metrics to plot, in subplot order.
        formats: file formats, any of ``png``, ``pdf``, ``svg``.
        anchor: codec to highlight.
        log_x: logarithmic bpp axis.
        fid_stats: draw the pooled per-dataset FID instead of the mean FID (see :func:`rd_points`).
        title: the figures' title instead of the dataset's name (e.g. the one clip they show).

    Returns:
        The written files.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    for fmt in formats:
        if fmt not in FIGURE_FORMATS:
            raise unknown_choice("figure format", fmt, FIGURE_FORMATS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = codec_labels(results)
    curves = {metric: rd_points(results, metric, fid_stats) for metric in metrics}
    datasets = dataset_order(d for by_key in curves.values() for d, _ in by_key)
    codecs = sorted({c for by_key in curves.values() for _, c in by_key}, key=lambda c: (c != anchor, c))
    others = [c for c in codecs if c != anchor]
    palette = [f"C{i}" for i in range(10) if i != 3]  # C3 (red) is reserved for the anchor
    markers = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
    style = {c: {"color": palette[i % len(palette)], "marker": markers[i % len(markers)]} for i, c in enumerate(others)}
    style[anchor] = {"color": "C3", "marker": "*", "linewidth": 2.6, "markersize": 10, "zorder": 10}

    written: list[Path] = []
    for dataset in datasets:
        shown = [m for m in metrics if any(d == dataset for d, _ in curves[m])]
        figure = Figure(figsize=(3.4 * len(shown), 3.6), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, len(shown), squeeze=False)[0]
        handles: dict[str, Any] = {}
        for ax, metric in zip(axes, shown):
            for codec in codecs:
                points = curves[metric].get((dataset, codec))
                if not points:
                    continue
                kwargs = {"linewidth": 1.3, "markersize": 5, "alpha": 0.9, **style[codec]}
                (line,) = ax.plot(*zip(*points), label=labels.get(codec, codec), **kwargs)
                handles.setdefault(codec, line)
            arrow = "\u2191" if HIGHER_IS_BETTER.get(metric, True) else "\u2193"
            ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} {arrow}")
            ax.set_xlabel("bpp")
            if log_x:
                ax.set_xscale("log")
                # rates often span less than a decade: label 1, 1.5, 2, 3, 5, 7 x 10^k, never the minor ticks
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
                ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, alpha=0.3)
        figure.suptitle(title or dataset_title(dataset))
        ordered = [handles[c] for c in codecs if c in handles]
        figure.legend(
            ordered, [h.get_label() for h in ordered], loc="outside lower center", ncols=1,
            fontsize="small", frameon=False,
        )
        for fmt in formats:
            path = out_dir / f"rd_{dataset}.{fmt}"
            _atomic_savefig(figure, path, fmt)
            written.append(path)
    return written


def point_rows(results: Iterable[RunResult]) -> list[list[Any]]:
    """One row per ok result with the columns of :data:`POINT_COLUMNS` (non-finite values as None)."""
    rows = []
    for r in results:
        if r.status != "ok":
            continue
        metrics = [_finite(r.metrics.get(m)) for m in REPORTED_METRICS]
        rows.append([dataset_key(r.dataset), r.sequence, r.codec, r.rate_point, _finite(r.bpp), *metrics])
    return rows


def plot_comparison(
    reference: torch.Tensor, decoded: torch.Tensor, path: str | Path, count: int = 3, gain: float = 4.0
) -> Path:
    """Write a picture a person can judge: original, decoded and error image of ``count`` frames.

    Frames are picked evenly over the clip. The error image is the per-pixel mean absolute RGB
    error times ``gain`` (so a 1/gain error saturates); each row's title gives the frame's PSNR.

    Args:
        reference: (T, 3, H, W) original frames in [0, 1].
        decoded: (T, 3, H, W) decoded frames in [0, 1].
        path: the PNG to write (atomically).
        count: frames to show.
        gain: amplification of the error image.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from divinr.metrics.functional import psnr_rgb

    if reference.shape != decoded.shape or reference.ndim != 4:
        raise ValueError(f"frames differ in shape: {tuple(reference.shape)} vs {tuple(decoded.shape)}")
    picks = torch.linspace(0, reference.shape[0] - 1, min(count, reference.shape[0])).round().long().unique()
    psnr = psnr_rgb(reference[picks], decoded[picks])
    height, width = reference.shape[2:]
    figure = Figure(figsize=(3 * width / 100 + 0.6, len(picks) * (height / 100 + 0.5)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(picks), 3, squeeze=False)
    for row, index, score in zip(axes, picks.tolist(), psnr.tolist()):
        error = (decoded[index] - reference[index]).abs().mean(0) * gain
        images = [reference[index].permute(1, 2, 0), decoded[index].permute(1, 2, 0), error.clamp(0, 1)]
        titles = [f"original, frame {index}", f"decoded, {score:.2f} dB", f"|error| x {gain:g}"]
        for ax, image, title in zip(row, images, titles):
            ax.imshow(image.clamp(0, 1).numpy(), cmap="inferno" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    _atomic_savefig(figure, path, "png")
    return path

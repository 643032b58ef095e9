"""Table 1 of the paper: BD-metric of each codec minus DiV-INR, per dataset, plus the RD figures.

    python -m benchmarks.table1 --results runs/ [anchors/ ...] --out reports/table1 [--method akima|pchip|cubic]
        [--anchor divinr] [--fid pooled|mean] [--imported dcvc_fm.csv ...] [--wandb]

Reads every ``results.json`` below the ``--results`` folders (and imported points of codecs that cannot run
here), and writes ``table1.md``, ``table1.json``, ``table1.csv``, ``table1.tex``,
``table1_per_sequence.csv`` and ``figures/rd_<dataset>.{png,pdf}`` into ``--out``; the Markdown
table is also printed.

Each cell is ``bd_metric(anchor bpp, anchor metric, codec bpp, codec metric)`` with DiV-INR as
the anchor, i.e. BD-metric(codec) - BD-metric(DiV-INR), the paper's orientation: PSNR positive
means the codec is better, LPIPS/DISTS/FID positive means it is worse.

Every column (dataset, metric) has one named BD method and one sequence set, recorded in
``table1.json``, in the ``<column>_bd`` fields of ``table1.csv`` and in the caption:

- the sequence set is the anchor's sequences with values of that metric in that dataset;
- ``per-sequence`` (every column but a pooled FID): BD on each sequence, then the mean over the
  set (per frame -> per sequence -> per dataset, as BENCHMARKS.md averages); a cell is NaN if
  any of its sequences is (no overlap, too few points);
- ``pooled`` (the FID column with ``--fid pooled``, the default): BD between dataset curves of
  the FID/256 of all patches of the set's sequences at each rate point (from the
  ``fid_stats.npz`` beside each results file) against mean bpp, because one short sequence has
  fewer patches than Inception has feature dimensions. ``--fid mean`` makes it ``per-sequence``.

A cell that cannot follow its column says so instead of changing the column: ``partial``
(the column's method on the subset of its sequences the codec has, the anchor restricted to the
same ones), ``average`` (a codec known only by imported ``sequence = average`` points, against
the anchor's average curve over the column's sequences), ``no-stats`` (a pooled column and a
codec without FID statistics, e.g. imported FIDs: NaN) or ``missing`` (no points).

Imported points carry their geometry and must match the measured points they are compared
with (the same sequence's, or for an ``average`` point the anchor's sequences of the dataset:
their resolution and total frames); otherwise the table is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from divinr.data.datasets import dataset_key, dataset_title
from divinr.errors import EXIT_USER_ERROR, DivinrError, unknown_choice
from divinr.metrics.bd import METHODS, BDWarning, bd_metric
from divinr.metrics.names import HIGHER_IS_BETTER, REPORTED_METRICS
from divinr.reporting import (
    ANCHOR_CODEC,
    AVERAGE_SEQUENCE,
    FidStats,
    RDWarning,
    codec_labels,
    dataset_order,
    load_point_fid_stats,
    missing_fid_stats,
    plot_rd_curves,
    rd_points,
    sequence_curves,
)
from divinr.results import RunResult, atomic_write_text, load_results

TABLE_METRICS = ("psnr", "lpips", "dists", "fid")
METRIC_NAMES = {"psnr": "PSNR", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID"}
DECIMALS = {"psnr": 2, "lpips": 3, "dists": 3, "fid": 2}  # as printed in the paper
# Row order of the paper (HEVC, VVC, DCVC-FM, Relic et al., HiNeRV); other codecs follow by name.
PAPER_ORDER = ("x265", "hevc", "vtm", "vvc", "vvenc", "dcvc-fm", "relic", "hinerv")
FID_KINDS = ("pooled", "mean")
# Column methods.
PER_SEQUENCE, POOLED = "per-sequence", "pooled"
# Cells that cannot follow their column's method (see the module doc).
PARTIAL, AVERAGE, NO_STATS, MISSING = "partial", "average", "no-stats", "missing"
MARKS = {AVERAGE: "*", PARTIAL: "\u2020", NO_STATS: "\u2021"}
TEX_MARKS = {AVERAGE: "*", PARTIAL: r"\dagger", NO_STATS: r"\ddagger"}
# Column captions name their sequences up to this many, else only count them (table1.json lists all).
NAMED_SEQUENCES = 8
# Config key of results made from imported points (holds the file they came from).
IMPORTED_FROM = "imported_from"


@dataclass(frozen=True)
class Column:
    """One dataset/metric column of Table 1: how every cell in it is computed.

    Attributes:
        dataset, metric: what the column holds.
        method: ``"per-sequence"`` or ``"pooled"`` (see the module doc).
        sequences: the anchor's sequences with values of the metric; every regular cell covers them.
    """

    dataset: str
    metric: str
    method: str
    sequences: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One Table 1 entry.

    Attributes:
        value: BD-metric(codec) - BD-metric(anchor); NaN when undefined.
        basis: the column's method when the cell follows it, else ``"partial"``, ``"average"``,
            ``"no-stats"`` or ``"missing"`` (see the module doc).
        sequences: the sequences the value covers (the column's for ``average`` cells).
    """

    value: float
    basis: str
    sequences: tuple[str, ...] = ()


@dataclass
class Table1:
    """Table 1 and everything needed to print it.

    Attributes:
        anchor: the codec every cell is relative to.
        method: BD interpolation method.
        datasets: dataset keys (columns), in registry order.
        codecs: row codecs.
        labels: codec -> honest description.
        cells: (codec, dataset, metric) -> :class:`Cell`.
        columns: (dataset, metric) -> :class:`Column`.
        per_sequence: (dataset, sequence, codec, metric, BD value) behind the per-sequence cells.
        metrics: metric columns per dataset.
        fid: ``"pooled"`` (per-dataset FID of all patches) or ``"mean"`` (mean of per-sequence FIDs).
    """

    anchor: str
    method: str
    datasets: list[str]
    codecs: list[str]
    labels: dict[str, str]
    cells: dict[tuple[str, str, str], Cell]
    columns: dict[tuple[str, str], Column] = field(default_factory=dict)
    per_sequence: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    metrics: tuple[str, ...] = TABLE_METRICS
    fid: str = "mean"


# ---------------------------------------------------------------------------- inputs


def results_from_imported(points: Iterable[Any], source_file: str | Path | None = None) -> list[RunResult]:
    """Turn imported RD points (``divinr.anchors.imported.ImportedPoint``) into RunResults.

    Rate points are numbered by increasing bpp within each (codec, dataset, sequence), which
    lines them up across sequences the way a QP sweep would.

    Args:
        points: imported points.
        source_file: the file they came from, recorded in each result's config.

    Returns:
        One ``status="ok"`` result per point, with its geometry and provenance (``config``).
    """
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for point in points:
        groups[(point.codec, dataset_key(point.dataset), point.sequence)].append(point)
    results = []
    for (codec, dataset, sequence), group in groups.items():
        for index, point in enumerate(sorted(group, key=lambda p: p.bpp)):
            results.append(
                RunResult(
                    codec=codec,
                    label=f"{codec} (imported: {point.source})",
                    dataset=dataset,
                    sequence=sequence,
                    rate_point=str(index),
                    bpp=point.bpp,
                    frames=point.frames,
                    width=point.width,
                    height=point.height,
                    metrics={m: getattr(point, m) for m in REPORTED_METRICS},
                    config={
                        IMPORTED_FROM: str(source_file) if source_file is not None else None,
                        "source": point.source,
                        "reference": point.reference,
                        "notes": point.notes,
                    },
                )
            )
    return results


def _load_imported(path: str | Path) -> list[RunResult]:
    # Imported lazily: only this option needs the anchors package.
    from divinr.anchors.imported import load_imported_points

    return results_from_imported(load_imported_points(path), path)


def _geometry_text(frames: int, sizes: Iterable[tuple[int, int]]) -> str:
    return f"{frames} frames of {' / '.join(f'{w}x{h}' for w, h in sorted(set(sizes)))}"


def check_imported_geometry(results: Sequence[RunResult], anchor: str = ANCHOR_CODEC) -> None:
    """Refuse imported points measured on other frames than the measured points they meet.

    A per-sequence imported point must match the measured points of its sequence; an
    ``average`` point must have the resolution of the anchor's sequences of its dataset and
    their total frame count. Points with nothing measured to meet are left alone.

    Raises:
        DivinrError: naming the codec, the sequence and both geometries.
    """
    measured: dict[tuple[str, str], tuple[int, int, int]] = {}
    anchor_sequences: dict[str, set[str]] = defaultdict(set)
    for r in results:
        if IMPORTED_FROM not in r.config and all((r.frames, r.width, r.height)):
            measured.setdefault((dataset_key(r.dataset), r.sequence), (r.frames, r.width, r.height))
            if r.codec == anchor:
                anchor_sequences[dataset_key(r.dataset)].add(r.sequence)
    fix = "import numbers measured at the geometry of the measured runs, or run those at the imported geometry"
    for r in results:
        if IMPORTED_FROM not in r.config:
            continue
        dataset = dataset_key(r.dataset)
        where = f"imported {r.codec} point {dataset_title(dataset)}/{r.sequence} at {r.bpp} bpp ({r.config['source']})"
        if r.sequence != AVERAGE_SEQUENCE:
            frames, width, height = measured.get((dataset, r.sequence), (r.frames, r.width, r.height))
            if (frames, width, height) != (r.frames, r.width, r.height):
                raise DivinrError(
                    f"{where} is {_geometry_text(r.frames, [(r.width, r.height)])} but the measured points of "
                    f"{dataset_title(dataset)}/{r.sequence} are {_geometry_text(frames, [(width, height)])}; {fix}"
                )
            continue
        sequences = anchor_sequences.get(dataset)
        if not sequences:
            continue
        shapes = [measured[(dataset, s)] for s in sequences]
        total, sizes = sum(f for f, _, _ in shapes), {(w, h) for _, w, h in shapes}
        if (total, sizes) != (r.frames, {(r.width, r.height)}):
            raise DivinrError(
                f"{where} is {_geometry_text(r.frames, [(r.width, r.height)])} in all but {anchor}'s "
                f"{len(sequences)} measured {dataset_title(dataset)} "
                f"{'sequence is' if len(sequences) == 1 else 'sequences are'} {_geometry_text(total, sizes)} "
                f"in all; {fix}"
            )


# ---------------------------------------------------------------------------- computation


def _bd(anchor: list[tuple[float, float]], test: list[tuple[float, float]], method: str, context: str) -> float:
    """bd_metric with any warning re-issued with the codec, dataset and metric it concerns."""
    if not anchor or not test:
        warnings.warn(f"{context}: an average curve has no complete rate point; BD is NaN", BDWarning, stacklevel=3)
        return math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = bd_metric(*zip(*anchor), *zip(*test), method=method)
    for warning in caught:
        warnings.warn(f"{context}: {warning.message}", warning.category, stacklevel=3)
    return value


def _row_order(codecs: Iterable[str]) -> list[str]:
    def rank(codec: str) -> tuple[int, str]:
        lowered = codec.lower()
        return (PAPER_ORDER.index(lowered) if lowered in PAPER_ORDER else len(PAPER_ORDER), lowered)

    return sorted(set(codecs), key=rank)


def compute_table1(
    results: Sequence[RunResult],
    anchor: str = ANCHOR_CODEC,
    method: str = "akima",
    metrics: Sequence[str] = TABLE_METRICS,
    fid_stats: FidStats | None = None,
) -> Table1:
    """Compute Table 1 from run results (see the module doc for orientation and column methods).

    Args:
        results: run results of every codec (failed runs are ignored).
        anchor: the reference codec (DiV-INR).
        method: ``"akima"``, ``"pchip"`` or ``"cubic"``.
        metrics: metric columns.
        fid_stats: per-point FID statistics; given, the FID columns are ``pooled`` (every anchor
            FID point needs statistics; other codecs without them get ``no-stats`` cells), else
            ``per-sequence``.

    Returns:
        The table; cells that cannot be computed are NaN, with a :class:`BDWarning` that
        names the codec, dataset, sequence and metric.

    Raises:
        DivinrError: no usable results, none of the anchor codec, imported points whose geometry
            differs from the measured ones, or anchor FID points without statistics when
            ``fid_stats`` is given.
    """
    if method not in METHODS:
        raise unknown_choice("BD interpolation method", method, METHODS)
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        raise DivinrError("no successful results to tabulate; run the sweeps first or check the results folder")
    check_imported_geometry(ok, anchor)
    per_seq = {m: sequence_curves(ok, m) for m in metrics}
    anchor_datasets = {d for m in metrics for d, c, _ in per_seq[m] if c == anchor}
    if not anchor_datasets:
        found = ", ".join(sorted({r.codec for r in ok}))
        raise DivinrError(
            f"anchor codec {anchor!r} has no results with {'/'.join(metrics)} values (codecs found: {found}); "
            "pass --anchor or add its runs"
        )
    pooled = fid_stats is not None and "fid" in metrics
    if pooled:
        lacking = [r for r in missing_fid_stats(ok, fid_stats or {}) if r.codec == anchor]
        if lacking:
            raise DivinrError(
                f"--fid pooled: {len(lacking)} FID points of {anchor} have no FID statistics (e.g. "
                f"{lacking[0].dataset}/{lacking[0].sequence} {lacking[0].rate_point}); re-run those points "
                "(force=true) so their fid_stats.npz is written, or use --fid mean"
            )
    datasets = dataset_order(anchor_datasets)
    codecs = _row_order(r.codec for r in ok if r.codec != anchor and dataset_key(r.dataset) in anchor_datasets)
    table = Table1(
        anchor, method, datasets, codecs, codec_labels(ok), {}, metrics=tuple(metrics),
        fid="pooled" if pooled else "mean",
    )
    for dataset in datasets:
        for metric in metrics:
            sequences = sorted(s for d, c, s in per_seq[metric] if d == dataset and c == anchor)
            column_method = POOLED if pooled and metric == "fid" else PER_SEQUENCE
            column = Column(dataset, metric, column_method, tuple(s for s in sequences if s != AVERAGE_SEQUENCE))
            table.columns[(dataset, metric)] = column
            for codec in codecs:
                table.cells[(codec, dataset, metric)] = _cell(table, column, per_seq[metric], ok, fid_stats, codec)
    return table


def _dataset_curve(
    results: Sequence[RunResult], codec: str, dataset: str, sequences: Iterable[str], metric: str,
    fid_stats: FidStats | None = None,
) -> list[tuple[float, float]]:
    """The codec's dataset-average curve over exactly ``sequences`` (pooled FID with ``fid_stats``)."""
    chosen = set(sequences)
    subset = [r for r in results if r.codec == codec and dataset_key(r.dataset) == dataset and r.sequence in chosen]
    return rd_points(subset, metric, fid_stats).get((dataset, codec), [])


def _cell(
    table: Table1,
    column: Column,
    curves: dict[tuple[str, str, str], list[tuple[float, float]]],
    results: Sequence[RunResult],
    fid_stats: FidStats | None,
    codec: str,
) -> Cell:
    """The codec's cell of ``column``, by the column's method over the column's sequences when it can."""
    dataset, metric = column.dataset, column.metric
    have = {s for d, c, s in curves if d == dataset and c == codec}
    if not column.sequences or not have:
        return Cell(math.nan, MISSING)
    where = f"{codec} vs {table.anchor} on {dataset_title(dataset)}, {metric}"
    extra = have - set(column.sequences) - {AVERAGE_SEQUENCE}
    if extra:
        warnings.warn(
            f"{where}: sequences {', '.join(sorted(extra))} have no {table.anchor} points and are left out",
            BDWarning,
            stacklevel=3,
        )
    covered = tuple(s for s in column.sequences if s in have)
    if not covered:
        if AVERAGE_SEQUENCE not in have:
            warnings.warn(f"{where}: no sequence has results of both codecs; the cell is NaN", BDWarning, stacklevel=3)
            return Cell(math.nan, MISSING)
        if column.method == POOLED:
            return _no_stats(where)
        anchor_curve = _dataset_curve(results, table.anchor, dataset, column.sequences, metric)
        codec_curve = _dataset_curve(results, codec, dataset, [AVERAGE_SEQUENCE], metric)
        return Cell(_bd(anchor_curve, codec_curve, table.method, where), AVERAGE, column.sequences)
    if column.method == POOLED:
        stats = fid_stats or {}
        if missing_fid_stats(
            [r for r in results if r.codec == codec and dataset_key(r.dataset) == dataset and r.sequence in covered],
            stats,
        ):
            return _no_stats(where)
        value = _bd(
            _dataset_curve(results, table.anchor, dataset, covered, metric, stats),
            _dataset_curve(results, codec, dataset, covered, metric, stats),
            table.method,
            f"{where} (pooled)",
        )
    else:
        values = []
        for sequence in covered:
            bd = _bd(curves[(dataset, table.anchor, sequence)], curves[(dataset, codec, sequence)], table.method,
                     f"{where}, {sequence}")
            table.per_sequence.append((dataset, sequence, codec, metric, bd))
            values.append(bd)
        value = sum(values) / len(values)  # NaN if any sequence is NaN
    if len(covered) < len(column.sequences):
        lacking = ", ".join(s for s in column.sequences if s not in covered)
        warnings.warn(
            f"{where}: {codec} lacks {lacking} of the column's sequences; the cell covers the other "
            f"{len(covered)} only (both codecs) and is marked {MARKS[PARTIAL]}",
            BDWarning,
            stacklevel=3,
        )
        return Cell(value, PARTIAL, covered)
    return Cell(value, column.method, covered)


def _no_stats(where: str) -> Cell:
    warnings.warn(
        f"{where}: the codec's FID points have no FID statistics (imported or older points) and cannot be pooled; "
        f"the cell is n/a{MARKS[NO_STATS]} (--fid mean compares per-sequence FIDs)",
        BDWarning,
        stacklevel=4,
    )
    return Cell(math.nan, NO_STATS)


# ---------------------------------------------------------------------------- formatting


def _format(value: float, metric: str) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{DECIMALS.get(metric, 3)}f}"


def _arrow(metric: str, latex: bool = False) -> str:
    up = HIGHER_IS_BETTER.get(metric, True)
    if latex:
        return r"$\uparrow$" if up else r"$\downarrow$"
    return "\u2191" if up else "\u2193"


def _sequence_text(anchor: str, sequences: tuple[str, ...]) -> str:
    names = f" ({', '.join(sequences)})" if len(sequences) <= NAMED_SEQUENCES else ""
    return f"{anchor}'s {len(sequences)} sequence{'s' if len(sequences) != 1 else ''}{names}"


def _column_text(table: Table1, column: Column) -> str:
    if not column.sequences:
        return f"{column.method}, no {table.anchor} values"
    over = _sequence_text(table.anchor, column.sequences)
    if column.method == POOLED:
        return f"pooled, BD between dataset curves of the FID/256 pooled over all patches of {over} against mean bpp"
    return f"per-sequence, BD on each of {over}, then the mean"


def _caption(table: Table1) -> str:
    """The caption: sign convention and, per dataset, each column's method and sequences."""
    parts = []
    for dataset in table.datasets:
        groups: dict[str, list[str]] = defaultdict(list)
        for metric in table.metrics:
            groups[_column_text(table, table.columns[(dataset, metric)])].append(METRIC_NAMES.get(metric, metric))
        described = "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())
        parts.append(f"{dataset_title(dataset)} {described}.")
    return (
        f"BD-metric of each codec minus {table.anchor} (the anchor), {table.method} interpolation over log10(bpp). "
        "PSNR: positive = the codec is better; LPIPS, DISTS, FID: positive = the codec is worse. "
        "Column methods: " + " ".join(parts) + " Every cell of a column is computed that way unless marked."
    )


def _mark(cell: Cell) -> str:
    return MARKS.get(cell.basis, "")


def _legend(table: Table1) -> list[str]:
    """Footnotes for the marks used, naming each partial cell's missing sequences."""
    bases = {cell.basis for cell in table.cells.values()}
    lines = []
    if AVERAGE in bases:
        lines.append(
            f"- {MARKS[AVERAGE]} BD between dataset-average curves (the codec is known only by averages; "
            f"{table.anchor} averaged over the column's sequences)."
        )
    partial: dict[tuple[str, str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (codec, dataset, metric), cell in table.cells.items():
        if cell.basis == PARTIAL:
            lacking = tuple(s for s in table.columns[(dataset, metric)].sequences if s not in cell.sequences)
            partial[(codec, dataset, lacking)].append(METRIC_NAMES.get(metric, metric))
    for (codec, dataset, lacking), names in partial.items():
        lines.append(
            f"- {MARKS[PARTIAL]} {codec}, {dataset_title(dataset)} {', '.join(names)}: the column's method on the "
            f"sequences both codecs have; {codec} lacks {', '.join(lacking)}."
        )
    if NO_STATS in bases:
        lines.append(
            f"- {MARKS[NO_STATS]} no FID statistics for this codec (imported FIDs cannot be pooled); "
            "`--fid mean` compares per-sequence FIDs."
        )
    return lines


def to_markdown(table: Table1) -> str:
    """The table as GitHub Markdown with a caption, a codec legend and footnotes."""
    header = ["Codec"] + [
        f"{dataset_title(d)} {METRIC_NAMES.get(m, m)} {_arrow(m)}" for d in table.datasets for m in table.metrics
    ]
    lines = [_caption(table), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for codec in table.codecs:
        cells = []
        for dataset in table.datasets:
            for metric in table.metrics:
                cell = table.cells[(codec, dataset, metric)]
                cells.append(_format(cell.value, metric) + _mark(cell))
        lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- `{codec}`: {table.labels.get(codec, codec)}" for codec in (table.anchor, *table.codecs))
    lines.extend(_legend(table))
    lines.append("- n/a: no points on one side, or curves that cannot be compared (see the warnings).")
    return "\n".join(lines) + "\n"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def to_json(table: Table1) -> str:
    """Everything the table states: columns with their method and sequences, cells with their basis."""
    data = {
        "anchor": table.anchor,
        "interpolation": table.method,
        "fid": table.fid,
        "caption": _caption(table),
        "codecs": [{"codec": c, "label": table.labels.get(c, c)} for c in table.codecs],
        "columns": [
            {"dataset": c.dataset, "metric": c.metric, "method": c.method, "sequences": list(c.sequences)}
            for c in (table.columns[(d, m)] for d in table.datasets for m in table.metrics)
        ],
        "cells": [
            {"codec": codec, "dataset": d, "metric": m, "value": _json_number(cell.value), "basis": cell.basis,
             "sequences": list(cell.sequences)}
            for codec in table.codecs for d in table.datasets for m in table.metrics
            for cell in [table.cells[(codec, d, m)]]
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def to_csv(table: Table1) -> str:
    """One row per codec; per dataset/metric its value (full precision, ``nan`` where undefined) and,
    in ``<dataset>_<metric>_bd``, how it was computed (the column's method, or the cell's basis)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [(d, m) for d in table.datasets for m in table.metrics]
    writer.writerow(["codec", "label"] + [name for d, m in columns for name in (f"{d}_{m}", f"{d}_{m}_bd")])
    for codec in table.codecs:
        cells = [table.cells[(codec, d, m)] for d, m in columns]
        writer.writerow([codec, table.labels.get(codec, codec), *(x for c in cells for x in (repr(c.value), c.basis))])
    return buffer.getvalue()


def per_sequence_csv(table: Table1) -> str:
    """The per-sequence BD values that the per-sequence cells average."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "sequence", "codec", "metric", "bd"])
    for row in sorted(table.per_sequence):
        writer.writerow([*row[:4], repr(row[4])])
    return buffer.getvalue()


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table1) -> str:
    """A booktabs ``tabular`` in the paper's layout (signed values, paper precision)."""
    n = len(table.metrics)
    lines = [f"% {_caption(table)}"]
    lines += [f"% {codec}: {table.labels.get(codec, codec)}" for codec in (table.anchor, *table.codecs)]
    lines += [f"% {line}" for line in _legend(table)]
    lines += [
        r"\begin{tabular}{l" + (" " + "c" * n) * len(table.datasets) + "}",
        r"\toprule",
        "BD-Metric & "
        + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex(dataset_title(d))}}}" for d in table.datasets)
        + r" \\",
        " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(table.datasets))),
        "Codec & "
        + " & ".join(f"{METRIC_NAMES.get(m, m)} {_arrow(m, latex=True)}" for _ in table.datasets for m in table.metrics)
        + r" \\",
        r"\midrule",
    ]
    for codec in table.codecs:
        cells = []
        for dataset in table.datasets:
            for metric in table.metrics:
                cell = table.cells[(codec, dataset, metric)]
                mark = rf"$^{{{TEX_MARKS[cell.basis]}}}$" if cell.basis in TEX_MARKS else ""
                cells.append(("--" if math.isnan(cell.value) else f"${_format(cell.value, metric)}$") + mark)
        lines.append(f"{_tex(codec)} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table1(table: Table1, out_dir: str | Path) -> list[Path]:
    """Write ``table1.{md,json,csv,tex}`` and ``table1_per_sequence.csv`` atomically."""
    out_dir = Path(out_dir)
    outputs = {
        "table1.md": to_markdown(table),
        "table1.json": to_json(table),
        "table1.csv": to_csv(table),
        "table1.tex": to_latex(table),
        "table1_per_sequence.csv": per_sequence_csv(table),
    }
    for name, text in outputs.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in outputs]


# ---------------------------------------------------------------------------- CLI


def run_table1(
    results_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    anchor: str = ANCHOR_CODEC,
    method: str = "akima",
    imported: Sequence[str | Path] = (),
    use_wandb: bool = False,
    fid: str = "pooled",
) -> tuple[Table1, list[Path]]:
    """Load results, compute Table 1, write the tables and figures (and log to W&B).

    Args:
        results_dir: folder (or folders, e.g. a sweep's and the anchors' results roots)
            searched recursively for ``results.json``.
        out_dir: output folder (created).
        anchor: reference codec.
        method: BD interpolation method.
        imported: CSV/JSON files of imported RD points.
        use_wandb: also log to a W&B run (offline without an API key).
        fid: ``"pooled"`` (the FID columns pool the ``fid_stats.npz`` of the points) or ``"mean"``
            (per-sequence FIDs); never chosen from the data, so one point cannot change a column.

    Returns:
        The table and the written files.
    """
    if fid not in FID_KINDS:
        raise unknown_choice("FID kind", fid, FID_KINDS)
    roots = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(r) for r in results_dir]
    out_dir = Path(out_dir)
    results: list[RunResult] = []
    point_stats: FidStats = {}
    for root in roots:
        if not root.is_dir():
            raise DivinrError(f"results folder {root} does not exist; pass the folder the sweeps wrote to")
        results.extend(load_results(root))
        point_stats.update(load_point_fid_stats(root))
    for path in imported:
        results.extend(_load_imported(path))
    if not results:
        where = ", ".join(map(str, roots))
        raise DivinrError(f"no results.json found below {where}; run the sweeps first or check --results")
    fid_stats = point_stats if fid == "pooled" else None
    table = compute_table1(results, anchor=anchor, method=method, fid_stats=fid_stats)
    written = write_table1(table, out_dir)
    if fid_stats is not None:  # the figures draw pooled FID too, without the points the table marks n/a
        lacking = {id(r) for r in missing_fid_stats(results, fid_stats)}
        results = [replace(r, metrics={**r.metrics, "fid": None}) if id(r) in lacking else r for r in results]
    written += plot_rd_curves(results, out_dir / "figures", anchor=anchor, fid_stats=fid_stats)
    if use_wandb:
        from experiments.wandb_logging import log_table1

        log_table1(table, results, out_dir, fid_stats)
    return table, written


def _print_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    print(f"table1: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; user errors print one line and return exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table1", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", required=True, nargs="+", metavar="DIR", help="folders searched recursively for results.json"
    )
    parser.add_argument("--out", required=True, help="output folder for tables and figures")
    parser.add_argument("--method", default="akima", choices=METHODS, help="BD interpolation (default: akima)")
    parser.add_argument("--anchor", default=ANCHOR_CODEC, help="codec every cell is relative to (default: divinr)")
    parser.add_argument(
        "--imported", action="append", default=[], metavar="FILE", help="CSV/JSON of imported RD points (repeatable)"
    )
    parser.add_argument(
        "--fid", choices=FID_KINDS, default="pooled",
        help="FID columns: BD between curves of the pooled per-dataset FID (default; codecs without "
        "fid_stats.npz get marked n/a cells) or mean of per-sequence BDs of per-sequence FIDs",
    )
    parser.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # Every undefined cell should be reported, each on one line, not only the first per call site.
            warnings.simplefilter("always", BDWarning)
            warnings.simplefilter("always", RDWarning)
            warnings.showwarning = _print_warning
            table, _ = run_table1(
                args.results, args.out, anchor=args.anchor, method=args.method, imported=args.imported,
                use_wandb=args.wandb, fid=args.fid,
            )
    except DivinrError as exc:
        print(f"table1: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(to_markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Table 1 of the paper: BD-metric of each codec minus DiV-INR, per dataset, plus the RD figures.

    python -m benchmarks.table1 --results runs/ [anchors/ ...] --out reports/table1 [--method akima|pchip|cubic]
        [--anchor divinr] [--fid pooled|mean] [--imported dcvc_fm.csv ...] [--wandb]

Reads every ``results.json`` below the ``--results`` folders (and imported points of codecs that cannot run
here), and writes ``table1.md``, ``table1.csv``, ``table1.tex``, ``table1_per_sequence.csv`` and
``figures/rd_<dataset>.{png,pdf}`` into ``--out``; the Markdown table is also printed.

Each cell is ``bd_metric(anchor bpp, anchor metric, codec bpp, codec metric)`` with DiV-INR as
the anchor, i.e. BD-metric(codec) - BD-metric(DiV-INR), the paper's orientation: PSNR positive
means the codec is better, LPIPS/DISTS/FID positive means it is worse. Averaging follows
BENCHMARKS.md (per frame -> per sequence -> per dataset): BD values are computed per sequence
on the sequences both codecs have and averaged; a cell is NaN if any of its sequences is
(no overlap, too few points), so a number always covers every common sequence. Codecs known
only by dataset averages (imported ``sequence = average`` points) are compared against the
anchor's dataset-average curve (mean bpp and metric per rate point); such cells are marked.
FID comes in two kinds (``--fid``; the table caption says which one it holds). ``pooled``:
the FID/256 of all patches of a dataset's sequences at a rate point (from the
``fid_stats.npz`` beside each results file), against mean bpp, so the FID cell is a BD between
dataset curves; this is the default when every FID point has statistics, because one short
sequence has fewer patches than Inception has feature dimensions. ``mean``: per-sequence FIDs
treated like the other metrics (the fallback, with a warning, when statistics are missing,
e.g. for imported points). The RD figures use the same kind.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
    log_rd_to_wandb,
    missing_fid_stats,
    plot_rd_curves,
    rd_points,
    sequence_curves,
    wandb_mode,
)
from divinr.results import RunResult, atomic_write_text, load_results

TABLE_METRICS = ("psnr", "lpips", "dists", "fid")
METRIC_NAMES = {"psnr": "PSNR", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID"}
DECIMALS = {"psnr": 2, "lpips": 3, "dists": 3, "fid": 2}  # as printed in the paper
# Row order of the paper (HEVC, VVC, DCVC-FM, Relic et al., HiNeRV); other codecs follow by name.
PAPER_ORDER = ("x265", "hevc", "vtm", "vvc", "vvenc", "dcvc-fm", "relic", "hinerv")
AVERAGE_MARK = "*"
FID_KINDS = ("pooled", "mean")


@dataclass(frozen=True)
class Cell:
    """One Table 1 entry.

    Attributes:
        value: BD-metric(codec) - BD-metric(anchor); NaN when undefined.
        sequences: number of per-sequence BD values averaged (0 for the other bases).
        basis: ``"sequences"`` (per-sequence BD, then mean), ``"average"`` (BD between
            dataset-average curves, for codecs known only by averages), ``"pooled"`` (BD between
            dataset curves of pooled FID) or ``"missing"`` (a side has no points).
    """

    value: float
    sequences: int
    basis: str


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
        per_sequence: (dataset, sequence, codec, metric, BD value) behind the ``sequences`` cells.
        metrics: metric columns per dataset.
        fid: ``"pooled"`` (per-dataset FID of all patches) or ``"mean"`` (mean of per-sequence FIDs).
    """

    anchor: str
    method: str
    datasets: list[str]
    codecs: list[str]
    labels: dict[str, str]
    cells: dict[tuple[str, str, str], Cell]
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
        One ``status="ok"`` result per point, with provenance in ``config``.
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
                    metrics={m: getattr(point, m) for m in REPORTED_METRICS},
                    config={
                        "imported_from": str(source_file) if source_file is not None else None,
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
    """Compute Table 1 from run results (see the module doc for orientation and averaging).

    Args:
        results: run results of every codec (failed runs are ignored).
        anchor: the reference codec (DiV-INR).
        method: ``"akima"``, ``"pchip"`` or ``"cubic"``.
        metrics: metric columns.
        fid_stats: per-point FID statistics; given, the FID column is the BD between curves of
            pooled per-dataset FID (every FID point needs statistics), else per-sequence FIDs.

    Returns:
        The table; cells that cannot be computed are NaN, with a :class:`BDWarning` that
        names the codec, dataset, sequence and metric.

    Raises:
        DivinrError: no usable results, none of the anchor codec, or FID points without statistics
            when ``fid_stats`` is given.
    """
    if method not in METHODS:
        raise unknown_choice("BD interpolation method", method, METHODS)
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        raise DivinrError("no successful results to tabulate; run the sweeps first or check the results folder")
    per_seq = {m: sequence_curves(ok, m) for m in metrics}
    averages = {m: rd_points(ok, m) for m in metrics}
    anchor_datasets = {d for m in metrics for d, c, _ in per_seq[m] if c == anchor}
    if not anchor_datasets:
        found = ", ".join(sorted({r.codec for r in ok}))
        raise DivinrError(
            f"anchor codec {anchor!r} has no results with {'/'.join(metrics)} values (codecs found: {found}); "
            "pass --anchor or add its runs"
        )
    datasets = dataset_order(anchor_datasets)
    codecs = _row_order(r.codec for r in ok if r.codec != anchor and dataset_key(r.dataset) in anchor_datasets)
    pooled = fid_stats is not None and "fid" in metrics
    table = Table1(
        anchor, method, datasets, codecs, codec_labels(ok), {}, metrics=tuple(metrics),
        fid="pooled" if pooled else "mean",
    )
    if pooled:
        lacking = missing_fid_stats(ok, fid_stats)
        if lacking:
            raise DivinrError(
                f"{len(lacking)} FID points have no FID statistics (e.g. {lacking[0].codec} "
                f"{lacking[0].dataset}/{lacking[0].sequence} {lacking[0].rate_point}); use --fid mean"
            )
        averages["fid"] = rd_points(ok, "fid", fid_stats)
    for codec in codecs:
        for dataset in datasets:
            for metric in metrics:
                if pooled and metric == "fid":
                    cell = _pooled_cell(table, averages[metric], codec, dataset)
                else:
                    cell = _cell(table, per_seq[metric], averages[metric], codec, dataset, metric)
                table.cells[(codec, dataset, metric)] = cell
    return table


def _pooled_cell(
    table: Table1, curves: dict[tuple[str, str], list[tuple[float, float]]], codec: str, dataset: str
) -> Cell:
    anchor_curve, codec_curve = curves.get((dataset, table.anchor)), curves.get((dataset, codec))
    if not anchor_curve or not codec_curve:
        return Cell(math.nan, 0, "missing")
    where = f"{codec} vs {table.anchor} on {dataset_title(dataset)}, pooled fid"
    return Cell(_bd(anchor_curve, codec_curve, table.method, where), 0, "pooled")


def _cell(
    table: Table1,
    curves: dict[tuple[str, str, str], list[tuple[float, float]]],
    averages: dict[tuple[str, str], list[tuple[float, float]]],
    codec: str,
    dataset: str,
    metric: str,
) -> Cell:
    def of(name: str) -> dict[str, list[tuple[float, float]]]:
        return {s: pts for (d, c, s), pts in curves.items() if d == dataset and c == name}

    anchor_curves, codec_curves = of(table.anchor), of(codec)
    if not anchor_curves or not codec_curves:
        return Cell(math.nan, 0, "missing")
    where = f"{codec} vs {table.anchor} on {dataset_title(dataset)}, {metric}"
    if set(anchor_curves) == {AVERAGE_SEQUENCE} or set(codec_curves) == {AVERAGE_SEQUENCE}:
        value = _bd(averages.get((dataset, table.anchor), []), averages.get((dataset, codec), []), table.method, where)
        return Cell(value, 0, "average")
    common = sorted((set(anchor_curves) & set(codec_curves)) - {AVERAGE_SEQUENCE})
    if not common:
        warnings.warn(f"{where}: no sequence has results of both codecs; the cell is NaN", BDWarning, stacklevel=3)
        return Cell(math.nan, 0, "missing")
    every = (set(anchor_curves) | set(codec_curves)) - {AVERAGE_SEQUENCE}
    if len(common) < len(every):
        warnings.warn(
            f"{where}: averaged over the {len(common)} sequences both codecs have; missing on one side: "
            f"{', '.join(sorted(every - set(common)))}",
            BDWarning,
            stacklevel=3,
        )
    values = []
    for sequence in common:
        value = _bd(anchor_curves[sequence], codec_curves[sequence], table.method, f"{where}, {sequence}")
        table.per_sequence.append((dataset, sequence, codec, metric, value))
        values.append(value)
    return Cell(sum(values) / len(values), len(values), "sequences")  # NaN if any sequence is NaN


# ---------------------------------------------------------------------------- formatting


def _format(value: float, metric: str) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{DECIMALS.get(metric, 3)}f}"


def _arrow(metric: str, latex: bool = False) -> str:
    up = HIGHER_IS_BETTER.get(metric, True)
    if latex:
        return r"$\uparrow$" if up else r"$\downarrow$"
    return "\u2191" if up else "\u2193"


def _caption(table: Table1) -> str:
    return (
        f"BD-metric of each codec minus {table.anchor} (the anchor), {table.method} interpolation over log10(bpp); "
        "BD per sequence, then the mean over a dataset's sequences. PSNR: positive = the codec is better; "
        "LPIPS, DISTS, FID: positive = the codec is worse. "
        + (
            "FID: pooled per-dataset FID/256 (all patches of a dataset's sequences at each rate point) "
            "against mean bpp, BD between the dataset curves."
            if table.fid == "pooled"
            else "FID: per-sequence FID/256, BD per sequence like the other metrics."
        )
    )


def to_markdown(table: Table1) -> str:
    """The table as GitHub Markdown with a caption, a codec legend and footnotes."""
    header = ["Codec"] + [
        f"{dataset_title(d)} {METRIC_NAMES.get(m, m)} {_arrow(m)}" for d in table.datasets for m in table.metrics
    ]
    lines = [_caption(table), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marked = False
    for codec in table.codecs:
        cells = []
        for dataset in table.datasets:
            for metric in table.metrics:
                cell = table.cells[(codec, dataset, metric)]
                mark = AVERAGE_MARK if cell.basis == "average" and not math.isnan(cell.value) else ""
                marked = marked or bool(mark)
                cells.append(_format(cell.value, metric) + mark)
        lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- `{codec}`: {table.labels.get(codec, codec)}" for codec in (table.anchor, *table.codecs))
    if marked:
        lines.append(f"- {AVERAGE_MARK} BD between dataset-average curves (the codec is known only by averages).")
    lines.append("- n/a: no points on one side, or curves that cannot be compared (see the warnings).")
    return "\n".join(lines) + "\n"


def to_csv(table: Table1) -> str:
    """One row per codec, one column per dataset/metric, full precision (``nan`` where undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["codec", "label"] + [f"{d}_{m}" for d in table.datasets for m in table.metrics])
    for codec in table.codecs:
        values = [repr(table.cells[(codec, d, m)].value) for d in table.datasets for m in table.metrics]
        writer.writerow([codec, table.labels.get(codec, codec), *values])
    return buffer.getvalue()


def per_sequence_csv(table: Table1) -> str:
    """The per-sequence BD values that the ``sequences`` cells average."""
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
                if math.isnan(cell.value):
                    cells.append("--")
                else:
                    mark = rf"$^{{{AVERAGE_MARK}}}$" if cell.basis == "average" else ""
                    cells.append(f"${_format(cell.value, metric)}${mark}")
        lines.append(f"{_tex(codec)} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table1(table: Table1, out_dir: str | Path) -> list[Path]:
    """Write ``table1.md``, ``table1.csv``, ``table1.tex`` and ``table1_per_sequence.csv`` atomically."""
    out_dir = Path(out_dir)
    outputs = {
        "table1.md": to_markdown(table),
        "table1.csv": to_csv(table),
        "table1.tex": to_latex(table),
        "table1_per_sequence.csv": per_sequence_csv(table),
    }
    for name, text in outputs.items():
        atomic_write_text(out_dir / name, text)
    return [out_dir / name for name in outputs]


# ---------------------------------------------------------------------------- W&B and CLI


def _log_wandb(table: Table1, results: Sequence[RunResult], out_dir: Path, fid_stats: FidStats | None) -> None:
    """Log the table and the RD curves to a new W&B run; failures only warn."""
    try:
        import wandb
    except ImportError:
        warnings.warn("--wandb: the wandb package is not installed; nothing logged", UserWarning, stacklevel=2)
        return
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "divinr"),
            job_type="table1",
            dir=str(out_dir),
            mode=wandb_mode(out_dir),
            config={"anchor": table.anchor, "method": table.method, "fid": table.fid},
        )
    except Exception as exc:  # noqa: BLE001 - W&B must never cost the tables already written
        warnings.warn(f"--wandb: could not start a W&B run ({type(exc).__name__}: {exc})", UserWarning, stacklevel=2)
        return
    try:
        columns = ["codec"] + [f"{d}/{m}" for d in table.datasets for m in table.metrics]
        rows = [
            [c] + [table.cells[(c, d, m)].value for d in table.datasets for m in table.metrics] for c in table.codecs
        ]
        run.log({"table1": wandb.Table(columns=columns, data=rows)})
        log_rd_to_wandb(results, run, anchor=table.anchor, figure_dir=out_dir / "figures", fid_stats=fid_stats)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"--wandb: logging failed ({type(exc).__name__}: {exc})", UserWarning, stacklevel=2)
    finally:
        run.finish()


def run_table1(
    results_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    anchor: str = ANCHOR_CODEC,
    method: str = "akima",
    imported: Sequence[str | Path] = (),
    use_wandb: bool = False,
    fid: str | None = None,
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
        fid: ``"pooled"``, ``"mean"``, or None: pooled when every FID point has statistics,
            else mean with a warning.

    Returns:
        The table and the written files.
    """
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
    fid_stats, fallback = _choose_fid(results, point_stats, fid)
    table = compute_table1(results, anchor=anchor, method=method, fid_stats=fid_stats)
    if fallback:  # only once the table exists: a failed table needs just its error
        warnings.warn(fallback, RDWarning, stacklevel=2)
    written = write_table1(table, out_dir)
    written += plot_rd_curves(results, out_dir / "figures", anchor=anchor, fid_stats=fid_stats)
    if use_wandb:
        _log_wandb(table, results, out_dir, fid_stats)
    return table, written


def _choose_fid(
    results: Sequence[RunResult], stats: FidStats, fid: str | None
) -> tuple[FidStats | None, str | None]:
    """The statistics to pool FID with (None: mean of per-sequence FIDs) and, when the default
    had to fall back to the mean, the warning to give."""
    if fid is not None and fid not in FID_KINDS:
        raise unknown_choice("FID kind", fid, FID_KINDS)
    if fid == "mean":
        return None, None
    lacking = missing_fid_stats(results, stats)
    if fid is None and lacking:
        return None, (
            f"{len(lacking)} FID points have no fid_stats.npz (e.g. {lacking[0].codec} {lacking[0].dataset}/"
            f"{lacking[0].sequence}); the FID column is the mean of per-sequence FIDs, not the pooled dataset FID"
        )
    return stats, None  # with fid="pooled" and points lacking statistics, compute_table1 names them


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
        "--fid", choices=FID_KINDS, default=None,
        help="FID column: pooled per-dataset FID or mean of per-sequence FIDs "
        "(default: pooled when every FID point has fid_stats.npz, else mean with a warning)",
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

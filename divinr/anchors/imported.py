"""RD points of codecs that cannot be run here (DCVC-FM, Relic et al., ...), with provenance.

DCVC-FM publishes PSNR/MS-SSIM only and Relic et al. has no public code, so their Table 1
entries are numbers copied from papers or obtained from authors. Every number must say where
it came from: a point without ``source`` and ``reference`` is rejected. Every number must also
say what it was measured on (``width``, ``height``, ``frames``): published numbers are often at
1920x1080 while the paper's Table 1 is at 1024x576, and Table 1 refuses to compare points of
different geometry. No data ship with divinr; users supply the files.

Schema (one point per CSV row or JSON object)

=============  ========  ==========================================================
key            required  meaning
=============  ========  ==========================================================
codec          yes       codec name, e.g. ``DCVC-FM``
dataset        yes       e.g. ``UVG``, ``MCL-JCV``, ``JVET-B``
sequence       yes       sequence name, or ``average`` for a dataset mean
bpp            yes       bits per pixel, a finite number >= 0
psnr           no        dB, RGB, per frame then averaged (BENCHMARKS.md)
ms_ssim        no        RGB MS-SSIM in [0, 1]
lpips          no        LPIPS (AlexNet, v0.1)
dists          no        DISTS
fid            no        FID/256 patches
source         yes       where the numbers come from (table/figure of a paper, a URL)
reference      yes       citation of the work
width          yes       coded width in pixels, e.g. ``1024``
height         yes       coded height in pixels, e.g. ``576``
frames         yes       frames coded of the sequence; for an ``average`` point, the total
                         over the sequences it averages (all of UVG: 3900)
notes          no        anything a reader should know (rerun settings, intra period)
=============  ========  ==========================================================

A CSV has these as columns (empty metric cells mean "not reported"). A JSON file is either a
list of such objects, or ``{"source": ..., "reference": ..., "width": ..., "height": ...,
"frames": ..., "points": [...]}`` whose provenance and geometry apply to every point (a point
may override them). Any other key or column is an error, so a misspelt metric cannot be
silently dropped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divinr.anchors.base import AnchorError
from divinr.metrics.names import REPORTED_METRICS

REQUIRED = ("codec", "dataset", "sequence", "bpp", "source", "reference")
PROVENANCE = ("source", "reference")
#: What the numbers were measured on; checked after the other fields, each a positive integer.
GEOMETRY = ("width", "height", "frames")
#: Keys a JSON file may set once for all of its points.
SHARED = PROVENANCE + GEOMETRY
ALLOWED = frozenset(REQUIRED + GEOMETRY + REPORTED_METRICS + ("notes",))


@dataclass(frozen=True)
class ImportedPoint:
    """One RD point of a codec we cannot run, with where it came from.

    Attributes:
        codec, dataset, sequence: what was coded (``sequence`` may be ``"average"``).
        bpp: bits per pixel.
        source: where the numbers come from.
        reference: citation.
        width, height: the coded resolution the numbers were measured at.
        frames: frames coded (for an ``"average"`` point, the total over its sequences).
        psnr, ms_ssim, lpips, dists, fid: reported metrics; None where not reported.
        notes: free text.
    """

    codec: str
    dataset: str
    sequence: str
    bpp: float
    source: str
    reference: str
    width: int
    height: int
    frames: int
    psnr: float | None = None
    ms_ssim: float | None = None
    lpips: float | None = None
    dists: float | None = None
    fid: float | None = None
    notes: str = ""


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool):
        raise AnchorError(f"{where}: {what} {value!r} is not a number; write a decimal number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnchorError(f"{where}: {what} {value!r} is not a number; write a decimal number") from None
    if not math.isfinite(number):
        raise AnchorError(f"{where}: {what} {value!r} is not finite; write a finite number")
    return number


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _geometry(record: dict[str, Any], where: str) -> dict[str, int]:
    """Width, height and frames as positive integers (CSV cells are digit strings)."""
    geometry = {}
    for key in GEOMETRY:
        value = record.get(key)
        if _blank(value):
            raise AnchorError(
                f"{where}: missing geometry {key!r}; every point must give width, height and frames "
                "(the coded resolution and frame count the numbers were measured at, e.g. 1024, 576, 600)"
            )
        text = value.strip() if isinstance(value, str) else value
        whole = isinstance(text, int) and not isinstance(text, bool)
        if not (whole or (isinstance(text, str) and text.isascii() and text.isdigit())):
            raise AnchorError(f"{where}: {key} {value!r} is not a whole number; write e.g. 1024")
        if int(text) <= 0:
            raise AnchorError(f"{where}: {key} {value!r} must be positive")
        geometry[key] = int(text)
    return geometry


def _point(record: dict[str, Any], where: str) -> ImportedPoint:
    unknown = sorted(set(record) - ALLOWED)
    if unknown:
        raise AnchorError(f"{where}: unknown column {unknown[0]!r}; allowed: {', '.join(sorted(ALLOWED))}")
    for key in REQUIRED:
        if _blank(record.get(key)):
            kind = "provenance " if key in PROVENANCE else ""
            raise AnchorError(f"{where}: missing {kind}{key!r}; every point must give {', '.join(REQUIRED)}")
    for key in ("codec", "dataset", "sequence", "source", "reference", "notes"):
        if key in record and not isinstance(record[key], str):
            raise AnchorError(f"{where}: {key} must be text, got {record[key]!r}")
    bpp = _number(record["bpp"], "bpp", where)
    if bpp < 0:
        raise AnchorError(f"{where}: bpp {bpp} is negative; bits per pixel must be >= 0")
    metrics = {
        name: _number(record[name], name, where)
        for name in REPORTED_METRICS
        if not _blank(record.get(name))
    }
    geometry = _geometry(record, where)
    return ImportedPoint(
        codec=record["codec"].strip(),
        dataset=record["dataset"].strip(),
        sequence=record["sequence"].strip(),
        bpp=bpp,
        source=record["source"].strip(),
        reference=record["reference"].strip(),
        notes=record.get("notes", "").strip(),
        **geometry,
        **metrics,
    )


def _json_records(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AnchorError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
    if isinstance(data, list):
        records, shared = data, {}
    elif isinstance(data, dict) and isinstance(data.get("points"), list):
        shared = {k: v for k, v in data.items() if k != "points"}
        extra = sorted(set(shared) - set(SHARED))
        if extra:
            raise AnchorError(f"{path}: unknown top-level key {extra[0]!r}; allowed: points, {', '.join(SHARED)}")
        records = data["points"]
    else:
        raise AnchorError(f"{path}: expected a list of points or an object with a 'points' list")
    if not all(isinstance(r, dict) for r in records):
        raise AnchorError(f"{path}: every point must be a JSON object")
    return [{**shared, **record} for record in records]


def load_imported_points(path: str | Path) -> list[ImportedPoint]:
    """Read and validate imported RD points from a CSV or JSON file (schema in the module doc).

    Args:
        path: a ``.csv`` or ``.json`` file.

    Returns:
        The points, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise AnchorError(f"imported RD points file {str(path)!r} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _json_records(path)
        where = [f"{path}: point {i + 1}" for i in range(len(records))]
    elif suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise AnchorError(f"{path}: empty CSV; write a header row with {', '.join(REQUIRED + GEOMETRY)}")
            records = list(reader)
        if any(None in record for record in records):
            raise AnchorError(f"{path}: a row has more cells than the header; fix the row")
        where = [f"{path}: row {i + 2}" for i in range(len(records))]  # row 1 is the header
    else:
        raise AnchorError(f"{path}: unsupported file type {suffix!r}; use .csv or .json")
    if not records:
        raise AnchorError(f"{path}: no RD points in the file")
    return [_point(record, w) for record, w in zip(records, where)]

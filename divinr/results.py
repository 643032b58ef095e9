"""Results of one (sequence, rate point) run: the record every sweep, anchor and table reads.

One ``results.json`` per run directory, written atomically next to the bitstream and the
decoded video. Its ``bpp`` is always the size of a real bitstream file that the decoder reads
(bits x 8 / pixels of the real frames), never an estimate.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from divinr.atomic import atomic_write_bytes, atomic_write_text
from divinr.errors import DivinrError

__all__ = ["RunResult", "atomic_write_bytes", "atomic_write_text", "write_result", "read_result", "is_finished", "load_results", "git_commit"]

RESULTS_NAME = "results.json"
SCHEMA_VERSION = 1


@dataclass
class RunResult:
    """One rate-distortion point of one codec on one sequence.

    Args:
        codec: short key of the codec (``divinr``, ``x265``, ``vvenc``, ``vtm``, ``hinerv``, or an
            imported codec's name).
        label: honest human-readable description of the codec and its settings.
        dataset, sequence: where the frames came from (``dataset`` may be ``"clip"`` for a single file).
        rate_point: the sweep parameter (INR preset, QP, ...) as a string.
        bpp: bits of the bitstream file / (frames x width x height).
        bits: bits by part; ``total`` equals the file size x 8 and the parts add up to it.
        frames, width, height: the real (unpadded) frames that were coded, at coding resolution.
        metrics: psnr, psnr_y, ms_ssim, lpips, dists, fid (None where weights were missing).
        status: ``"ok"`` or ``"failed"`` (then ``error`` holds the one-line reason).
    """

    codec: str
    label: str
    dataset: str
    sequence: str
    rate_point: str
    bpp: float | None = None
    bits: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    metrics: dict[str, float | None] = field(default_factory=dict)
    skipped_metrics: dict[str, str] = field(default_factory=dict)
    encode_seconds: float | None = None
    decode_seconds: float | None = None
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)
    backbone: str | None = None
    bitstream: str | None = None
    decoded: str | None = None
    git_commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise DivinrError(f"results file has unknown keys {sorted(unknown)}; was it written by a newer divinr?")
        return cls(**data)


def write_result(result: RunResult, run_dir: str | Path) -> Path:
    """Write ``run_dir/results.json`` atomically and return its path."""
    path = Path(run_dir) / RESULTS_NAME
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_result(path: str | Path) -> RunResult:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DivinrError(f"cannot read results file {path}: {exc}") from None
    return RunResult.from_dict(data)


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished when its results file exists and records success."""
    path = Path(run_dir) / RESULTS_NAME
    if not path.exists():
        return False
    try:
        return read_result(path).status == "ok"
    except DivinrError:
        return False


def load_results(root: str | Path) -> list[RunResult]:
    """Every ``results.json`` below ``root`` (sorted by path for stable tables)."""
    return [read_result(p) for p in sorted(Path(root).rglob(RESULTS_NAME))]


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the installed divinr checkout, or None outside a git work tree."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None

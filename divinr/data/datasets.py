"""Registry of the benchmark datasets (UVG, JVET Class B, MCL-JCV) and checks of local copies.

No data ship with divinr: the registry says which raw 4:2:0 files each dataset consists of,
with their exact byte sizes, so a user can verify a local copy before hours of encoding are
spent on a truncated or mislabelled file. UVG is public and :mod:`divinr.data.download` fetches
it (``divinr data download uvg``); the others are obtained as each ``download`` field says. Facts follow
BENCHMARKS.md (UVG and MCL-JCV from DCVC's dataset configs, JVET-B from VTM-23.11's
per-sequence configs).

Layout on disk: ``<root>/<dataset key>/<raw file>``, with ``root`` passed explicitly or taken
from ``$DIVINR_DATA_ROOT``:

    $DIVINR_DATA_ROOT/uvg/Beauty_1920x1080_120fps_420_8bit_YUV.yuv
    $DIVINR_DATA_ROOT/jvetb/MarketPlace_1920x1080_60fps_10bit_420.yuv
    $DIVINR_DATA_ROOT/mcl_jcv/videoSRC01_1920x1080_30.yuv

>>> DATASETS["mcl_jcv"].total_frames
4115
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divinr.data.video import Video, read_video
from divinr.errors import DivinrError, unknown_choice

DATA_ROOT_ENV = "DIVINR_DATA_ROOT"
#: (width, height) the paper codes every benchmark sequence at, and the default coding resolution.
CODING_SIZE = (1024, 576)
#: YUV -> RGB convention of the benchmark sequences: BT.709 read as full range, as CompressAI and
#: DCVC convert UVG / MCL-JCV / HEVC-B, so imported learned-codec points share our reference frames.
FULL_RANGE = True


class DatasetError(DivinrError):
    """A dataset or one of its files is unknown, missing or not the expected size."""


@dataclass(frozen=True, kw_only=True)
class SequenceInfo:
    """One raw planar 4:2:0 test sequence (BT.709, converted as full range: see :data:`FULL_RANGE`).

    Attributes:
        name: sequence name as papers use it (``Beauty``, ``videoSRC01``).
        filename: the raw file's name inside the dataset folder.
        width, height: luma size in pixels.
        frames: number of frames in the file.
        fps: frame rate.
        bit_depth: bits per sample (8: one byte per sample; 10: little-endian uint16).
        archive: name of the 7z archive the dataset's site publishes it in (None: no public download).
    """

    name: str
    filename: str
    width: int = 1920
    height: int = 1080
    frames: int
    fps: float
    bit_depth: int = 8
    archive: str | None = None

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame: luma plus two quarter-size chroma planes."""
        chroma = ((self.width + 1) // 2) * ((self.height + 1) // 2)
        return (self.width * self.height + 2 * chroma) * (1 if self.bit_depth <= 8 else 2)

    @property
    def expected_bytes(self) -> int:
        """Exact size of the complete raw file."""
        return self.frame_bytes * self.frames

    def describe(self) -> str:
        return (
            f"{self.filename} ({self.frames} frames, {self.width}x{self.height}, {self.bit_depth}-bit 4:2:0, "
            f"{self.fps:g} fps, {self.expected_bytes:,} bytes)"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark dataset: its sequences and where a user can obtain them.

    Attributes:
        name: registry key and folder name under the data root (``uvg``).
        title: the name papers print (``UVG``).
        sequences: the sequences in the dataset's usual order.
        download: where and how to obtain the raw files.
        notes: facts a user should know (archive quirks, variants not to confuse it with).
    """

    name: str
    title: str
    sequences: tuple[SequenceInfo, ...]
    download: str
    notes: str = ""

    @property
    def downloadable(self) -> bool:
        """Whether every sequence has a public archive that :mod:`divinr.data.download` can fetch."""
        return all(seq.archive is not None for seq in self.sequences)

    @property
    def total_frames(self) -> int:
        return sum(s.frames for s in self.sequences)

    def sequence(self, name: str) -> SequenceInfo:
        """The sequence called ``name`` (case-insensitive)."""
        for seq in self.sequences:
            if seq.name.lower() == name.lower():
                return seq
        raise unknown_choice(f"{self.title} sequence", name, tuple(s.name for s in self.sequences))


def _uvg() -> DatasetInfo:
    names = ("Beauty", "Bosphorus", "HoneyBee", "Jockey", "ReadySteadyGo", "ShakeNDry", "YachtRide")
    return DatasetInfo(
        name="uvg",
        title="UVG",
        sequences=tuple(
            SequenceInfo(
                name=n,
                filename=f"{n}_1920x1080_120fps_420_8bit_YUV.yuv",
                frames=300 if n == "ShakeNDry" else 600,
                fps=120.0,
                archive=f"{'ReadySetGo' if n == 'ReadySteadyGo' else n}_1920x1080_120fps_420_8bit_YUV_RAW.7z",
            )
            for n in names
        ),
        download=(
            "UVG site https://ultravideo.fi/dataset.html: download <Name>_1920x1080_120fps_420_8bit_YUV_RAW.7z "
            "(https://ultravideo.fi/video/<archive>) and extract the .yuv with 7z"
        ),
        notes=(
            "the archive of ReadySteadyGo is named ReadySetGo_1920x1080_120fps_420_8bit_YUV_RAW.7z but the file "
            "inside is ReadySteadyGo_1920x1080_120fps_420_8bit_YUV.yuv; use the 1080p 8-bit versions, not 4K"
        ),
    )


def _jvetb() -> DatasetInfo:
    rows = (
        ("MarketPlace", "MarketPlace_1920x1080_60fps_10bit_420.yuv", 60.0, 600, 10),
        ("RitualDance", "RitualDance_1920x1080_60fps_10bit_420.yuv", 60.0, 600, 10),
        ("Cactus", "Cactus_1920x1080_50.yuv", 50.0, 500, 8),
        ("BasketballDrive", "BasketballDrive_1920x1080_50.yuv", 50.0, 500, 8),
        ("BQTerrace", "BQTerrace_1920x1080_60.yuv", 60.0, 600, 8),
    )
    return DatasetInfo(
        name="jvetb",
        title="JVET-B",
        sequences=tuple(
            SequenceInfo(name=n, filename=f, fps=fps, frames=frames, bit_depth=bits) for n, f, fps, frames, bits in rows
        ),
        download=(
            "the JVET common-test-condition sequences are distributed to JVET participants through the JVET's "
            "ftp/test-sequence server; no public download URL has been verified, so obtain them through a JVET "
            "member and check the file names and sizes listed here"
        ),
        notes=(
            "VVC CTC class B as in VTM-23.11 cfg/per-sequence; not the older HEVC class B (Kimono, ParkScene) "
            "that learned-codec papers often use; MarketPlace and RitualDance are 10-bit"
        ),
    )


def _mcl_jcv() -> DatasetInfo:
    groups = (
        (30.0, 150, (1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 19, 26, 27, 28, 30)),
        (25.0, 125, (5, 6, 7, 8, 9, 18, 20)),
        (24.0, 120, (17, 21, 22, 23, 24, 25, 29)),
    )
    by_index = {i: (fps, frames) for fps, frames, indices in groups for i in indices}
    return DatasetInfo(
        name="mcl_jcv",
        title="MCL-JCV",
        sequences=tuple(
            SequenceInfo(
                name=f"videoSRC{i:02d}",
                filename=f"videoSRC{i:02d}_1920x1080_{by_index[i][0]:.0f}.yuv",
                fps=by_index[i][0],
                frames=by_index[i][1],
            )
            for i in sorted(by_index)
        ),
        download='USC MCL lab, "MCL-JCV dataset" page https://mcl.usc.edu/mcl-jcv-dataset/ (the 30 source videos)',
        notes="5 s per sequence at 24, 25 or 30 fps (the number in the file name)",
    )


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (_uvg(), _jvetb(), _mcl_jcv())}
# Spellings other code and imported tables use for the same datasets.
_EXTRA_ALIASES = {"jvetclassb": "jvetb", "vvcclassb": "jvetb", "mcljcv": "mcl_jcv"}


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def dataset_key(name: str) -> str:
    """Map any common spelling of a registered dataset to its key; other names pass through.

    Results and imported tables write ``UVG``, ``JVET-B``, ``MCL-JCV`` or the keys; grouping by
    this key makes them one dataset. Unregistered names (``clip``) are returned stripped.

    >>> dataset_key("MCL-JCV"), dataset_key("JVET Class B"), dataset_key("clip")
    ('mcl_jcv', 'jvetb', 'clip')

    Args:
        name: a dataset name.

    Returns:
        The registry key, or ``name`` stripped of surrounding whitespace.
    """
    squashed = _squash(name)
    for info in DATASETS.values():
        if squashed in (_squash(info.name), _squash(info.title)):
            return info.name
    return _EXTRA_ALIASES.get(squashed, name.strip())


def dataset_title(name: str) -> str:
    """The printed name of a dataset (``UVG``), or ``name`` itself when it is not registered."""
    key = dataset_key(name)
    return DATASETS[key].title if key in DATASETS else key


def get_dataset(dataset: str | DatasetInfo) -> DatasetInfo:
    """Look a dataset up by any spelling :func:`dataset_key` accepts; a DatasetInfo passes through."""
    if isinstance(dataset, DatasetInfo):
        return dataset
    key = dataset_key(dataset)
    if key not in DATASETS:
        raise unknown_choice("dataset", dataset, tuple(DATASETS))
    return DATASETS[key]


def dataset_root(name: str | DatasetInfo, root: str | Path | None = None) -> Path:
    """The folder holding a dataset's raw files: ``<root>/<key>``.

    Args:
        name: dataset key, title, or a :class:`DatasetInfo`.
        root: folder that holds one sub-folder per dataset; None uses ``$DIVINR_DATA_ROOT``.

    Returns:
        ``<root>/<key>`` (not checked for existence).
    """
    info = get_dataset(name)
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV) or None
    if root is None:
        raise DatasetError(
            f"no data root for {info.title}: pass root or set {DATA_ROOT_ENV} to the folder that holds {info.name}/"
        )
    return Path(root).expanduser() / info.name


def raw_file_problem(seq: SequenceInfo, path: Path) -> str | None:
    """One line describing what is wrong with ``path``, or None when it is complete."""
    if not path.is_file():
        return f"missing {path}: expected {seq.describe()}"
    size = path.stat().st_size
    if size != seq.expected_bytes:
        frames = size / seq.frame_bytes
        return f"wrong size {path}: {size:,} bytes ({frames:.2f} frames), expected {seq.describe()}"
    return None


def check_dataset(
    dataset: str | DatasetInfo, root: str | Path | None = None, sequences: list[str] | tuple[str, ...] | None = None
) -> list[Path]:
    """Verify that every raw file of a dataset exists with its exact size.

    Args:
        dataset: dataset key, title, or a :class:`DatasetInfo`.
        root: data root (see :func:`dataset_root`).
        sequences: check only these sequences (default: all).

    Returns:
        The paths of the checked files, in registry order.

    Raises:
        DatasetError: a file is missing or wrongly sized. The first line summarises; one line
            per problem follows (expected file, size, frames, bit depth and full path), then
            where to obtain the data.
    """
    info = get_dataset(dataset)
    folder = dataset_root(info, root)
    chosen = info.sequences if sequences is None else tuple(info.sequence(s) for s in sequences)
    paths = [folder / seq.filename for seq in chosen]
    problems = [p for p in (raw_file_problem(seq, path) for seq, path in zip(chosen, paths)) if p is not None]
    if problems:
        lines = [
            f"{info.title}: {len(problems)} of {len(chosen)} raw files missing or incomplete in {folder}; "
            f"obtain them as described below and place them there",
            *(f"  {p}" for p in problems),
            f"  obtain: {info.download}",
        ]
        if info.notes:
            lines.append(f"  note: {info.notes}")
        raise DatasetError("\n".join(lines))
    return paths


def locate_sequence(dataset: str | DatasetInfo, sequence: str, root: str | Path | None = None) -> Path:
    """The checked path of one sequence's raw file.

    Args:
        dataset: dataset key, title, or a :class:`DatasetInfo`.
        sequence: sequence name (case-insensitive).
        root: data root (see :func:`dataset_root`).

    Returns:
        The path of the complete raw file.

    Raises:
        DatasetError: missing or wrongly sized file (message as in :func:`check_dataset`).
    """
    return check_dataset(dataset, root, (sequence,))[0]


def sequence_source(
    dataset: str | DatasetInfo,
    sequence: str,
    root: str | Path | None = None,
    *,
    width: int = CODING_SIZE[0],
    height: int = CODING_SIZE[1],
    max_frames: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The file of a benchmark sequence and the ``read_video`` arguments that give its coded frames.

    Separate from :func:`load_sequence` so that a recorded command can re-read the same frames.
    """
    info = get_dataset(dataset)
    seq = info.sequence(sequence)
    path = locate_sequence(info, seq.name, root)
    if max_frames is not None and max_frames < 1:
        raise DatasetError(f"max_frames must be >= 1 or None, got {max_frames}")
    return path, {
        "width": seq.width,
        "height": seq.height,
        "bit_depth": seq.bit_depth,
        "fps": seq.fps,
        "max_frames": max_frames,
        "full_range": FULL_RANGE,
        "resize": (width, height),
    }


def load_sequence(
    dataset: str | DatasetInfo,
    sequence: str,
    root: str | Path | None = None,
    *,
    width: int = CODING_SIZE[0],
    height: int = CODING_SIZE[1],
    max_frames: int | None = None,
) -> Video:
    """Read a benchmark sequence at native size and resize it to the coding resolution.

    Frames are resized as they are read, so peak memory is set by the output, not by the
    1080p input.

    Args:
        dataset: dataset key, title, or a :class:`DatasetInfo`.
        sequence: sequence name.
        root: data root (see :func:`dataset_root`).
        width: output width (the paper's 1024).
        height: output height (the paper's 576).
        max_frames: at most this many frames from the start (None: all).

    Returns:
        :class:`Video` with (T, 3, height, width) RGB in [0, 1] and the sequence's frame rate.
    """
    path, kwargs = sequence_source(dataset, sequence, root, width=width, height=height, max_frames=max_frames)
    return read_video(path, **kwargs)

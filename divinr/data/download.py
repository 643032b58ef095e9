"""Fetch the public benchmark datasets into the layout :mod:`divinr.data.datasets` checks.

UVG publishes one 7z archive per sequence. Each is downloaded resumably and extracted, and the
raw file is checked against the registry's name and byte size::

    <base_url>/<archive> --HTTP, Range resume--> <root>/uvg/<archive>.part --rename--> <archive>
    <archive> --py7zr, the registry's member only--> <raw>.part --size check, rename--> <raw>

Nothing partial ever carries a final name: an interrupted transfer stays in ``.part`` (and is
resumed by the next run), a corrupt archive is deleted. MCL-JCV and JVET-B have no public direct
download; :func:`download_dataset` raises with the registry's instructions for them.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import py7zr
from py7zr.exceptions import ArchiveError
from tqdm import tqdm

from divinr.data.datasets import DatasetError, DatasetInfo, SequenceInfo, dataset_root, get_dataset, raw_file_problem

UVG_BASE_URL = "https://ultravideo.fi/video/"
_CHUNK = 1 << 20


def download_file(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a previous partial transfer.

    Args:
        url: http(s) address of the file.
        dest: final path; it appears only once the whole body arrived.
        progress: show a tqdm bar.
        timeout: seconds without data before the transfer counts as interrupted.

    Returns:
        ``dest``.

    Raises:
        DatasetError: the server refused the file or the transfer broke off (the partial file
            is kept, so running the command again resumes it).
    """
    if dest.is_file():  # final names only ever hold complete files
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: the part already holds the whole file
            raise DatasetError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL or try later") from None
        total = offset
    except (OSError, http.client.HTTPException) as exc:
        raise DatasetError(f"cannot reach {url} ({exc}): check the connection and run the command again") from None
    else:
        with response:
            resumed = offset > 0 and response.status == 206
            offset = offset if resumed else 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with part.open("ab" if resumed else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException):
                    pass  # reported below from the size actually written
    # Without a Content-Length a cut transfer looks complete here; the archive's own CRCs and the
    # registry's member sizes catch it at extraction, which then deletes the archive.
    size = part.stat().st_size
    if total is not None and size != total:
        raise DatasetError(
            f"download of {url} stopped at {size:,} of {total:,} bytes (kept in {part}): run the command again to resume"
        )
    os.replace(part, dest)
    return dest


def extract_sequence(archive: Path, seq: SequenceInfo, folder: Path) -> Path:
    """Extract ``seq``'s raw file from ``archive`` into ``folder`` and check its size.

    Raises:
        DatasetError: the archive is corrupt or lacks the file, or the file has the wrong size.
            The archive is deleted in the first case, so a new run downloads it again.
    """
    final = folder / seq.filename
    work = Path(tempfile.mkdtemp(dir=folder, prefix=f".{seq.filename}.", suffix=".part"))
    try:
        try:
            with py7zr.SevenZipFile(archive) as z:
                members = [f for f in z.list() if not f.is_directory and Path(f.filename).name == seq.filename]
                if not members:
                    raise DatasetError(
                        f"{archive.name} does not hold {seq.filename} (it holds {', '.join(z.getnames())}): "
                        f"check the archive name in the registry against the dataset site"
                    )
                member = members[0]
                if member.uncompressed != seq.expected_bytes:
                    raise DatasetError(
                        f"{seq.filename} in {archive.name} is {member.uncompressed:,} bytes, expected {seq.describe()}: "
                        f"the site may have changed the file; do not use it for benchmarks"
                    )
                try:
                    z.extract(path=work, targets=[member.filename])
                except OSError as exc:  # a full disk or a permission: the archive itself may be fine
                    raise DatasetError(
                        f"cannot extract {seq.filename} into {folder} ({exc}); free space or fix permissions and run "
                        "the command again (the archive is kept)"
                    ) from None
        except (ArchiveError, EOFError, ValueError, KeyError) as exc:
            archive.unlink(missing_ok=True)
            raise DatasetError(
                f"archive {archive.name} is corrupt ({type(exc).__name__}: {exc}); it was deleted: run the command "
                f"again to download it anew"
            ) from None
        extracted = work / member.filename
        problem = raw_file_problem(seq, extracted)
        if problem is not None:
            archive.unlink(missing_ok=True)
            raise DatasetError(f"{archive.name} extracted badly ({problem}); it was deleted: run the command again")
        os.replace(extracted, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def download_dataset(
    dataset: str | DatasetInfo,
    root: str | Path | None = None,
    *,
    base_url: str = UVG_BASE_URL,
    progress: bool = True,
    keep_archives: bool = False,
) -> list[Path]:
    """Download and extract every missing raw file of a dataset that has public archives.

    Complete raw files are left alone, so an interrupted run continues where it stopped.

    Args:
        dataset: dataset key, title, or a :class:`DatasetInfo` whose sequences name archives.
        root: data root (see :func:`~divinr.data.datasets.dataset_root`).
        base_url: folder URL the archives are fetched from (a mirror, or a test server).
        progress: show progress bars.
        keep_archives: keep the 7z files after extraction (deleted by default: they double the space).

    Returns:
        The checked paths of the raw files, in registry order.

    Raises:
        DatasetError: the dataset has no public download (the message says how to obtain it), or
            a download or extraction failed.
    """
    info = get_dataset(dataset)
    if not info.downloadable:
        raise DatasetError(f"{info.title} has no public direct download: {info.download}")
    folder = dataset_root(info, root)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seq in info.sequences:
        final = folder / seq.filename
        if raw_file_problem(seq, final) is not None:
            archive = download_file(base_url.rstrip("/") + "/" + seq.archive, folder / seq.archive, progress=progress)
            extract_sequence(archive, seq, folder)
            if not keep_archives:
                archive.unlink()
        paths.append(final)
    return paths

"""Atomic file writes: results, bitstreams, videos and figures appear whole or not at all.

An interrupted run (Ctrl-C, a SLURM time-out, a crash) must never leave a truncated file that
a resumed sweep would take for finished work.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from divinr.errors import DivinrError


def _temp_beside(path: Path, suffix: str) -> Path:
    """Create an empty temporary file in ``path``'s folder (same file system, so rename is atomic)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".part{suffix}")
    except OSError as exc:
        raise DivinrError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: the destination.
        suffix: extension for the temporary file (writers such as PyAV pick the format from it).
    """
    path = Path(path)
    tmp = _temp_beside(path, suffix)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp creates 0600; give the result the usual mode
    try:
        yield tmp
        with tmp.open("rb+") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_writable(path: str | Path) -> None:
    """Fail now, not after hours of work, if ``path``'s folder cannot take a new file."""
    _temp_beside(Path(path), "").unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))

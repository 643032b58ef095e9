"""The UVG downloader against a local HTTP server with Range support, serving small 7z archives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import py7zr
import pytest

from divinr.cli import main
from divinr.data.datasets import DATASETS, DatasetError, DatasetInfo, SequenceInfo, check_dataset
from divinr.data.download import download_dataset, download_file


@dataclass
class Server:
    """Files by URL path; ``cut_after`` bytes into the next response the connection is dropped."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    cut_after: int | None = None
    ignore_range: bool = False
    url: str = ""


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            header = None if state.ignore_range else self.headers.get("Range")
            state.ranges.append(header)
            start = int(header.removeprefix("bytes=").removesuffix("-")) if header else 0
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206 if header else 200)
            if header:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if state.cut_after is not None:
                payload, state.cut_after = payload[: state.cut_after], None
                self.close_connection = True
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/video/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _dataset(frames: tuple[int, ...] = (3, 2)) -> DatasetInfo:
    """A UVG-like registry of tiny 32x16 sequences, one archive each (UVG's own names and quirk)."""
    names = (("Beauty", "Beauty"), ("ReadySteadyGo", "ReadySetGo"))
    return DatasetInfo(
        name="uvg",
        title="UVG",
        sequences=tuple(
            SequenceInfo(name=n, filename=f"{n}_32x16.yuv", width=32, height=16, frames=f, fps=120.0,
                         archive=f"{a}_1920x1080_120fps_420_8bit_YUV_RAW.7z")  # fmt: skip
            for (n, a), f in zip(names, frames)
        ),
        download="test",
    )


def _archive(tmp: Path, seq: SequenceInfo, data: bytes, *, member: str | None = None) -> bytes:
    raw = tmp / (member or seq.filename)
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(data)
    path = tmp / seq.archive
    with py7zr.SevenZipFile(path, "w") as z:
        z.write(raw, arcname=f"{seq.name}/{raw.name}")  # the real archives may hold a folder
    return path.read_bytes()


def _raw(seq: SequenceInfo, salt: int) -> bytes:
    return bytes((i * 7 + salt) % 251 for i in range(seq.expected_bytes))


def _serve(server: Server, info: DatasetInfo, tmp: Path) -> dict[str, bytes]:
    raws = {}
    for salt, seq in enumerate(info.sequences):
        raws[seq.filename] = _raw(seq, salt)
        server.files[f"/video/{seq.archive}"] = _archive(tmp / f"build{salt}", seq, raws[seq.filename])
    return raws


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_uvg_registry_names_seven_archives() -> None:
    uvg = DATASETS["uvg"]
    assert uvg.downloadable and len(uvg.sequences) == 7
    assert uvg.sequence("ReadySteadyGo").archive == "ReadySetGo_1920x1080_120fps_420_8bit_YUV_RAW.7z"
    assert uvg.sequence("Beauty").archive == "Beauty_1920x1080_120fps_420_8bit_YUV_RAW.7z"
    assert not DATASETS["mcl_jcv"].downloadable and not DATASETS["jvetb"].downloadable


def test_full_download_extracts_checks_and_cleans_up(server: Server, tmp_path: Path) -> None:
    info = _dataset()
    raws = _serve(server, info, tmp_path)
    paths = download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert [p.read_bytes() for p in paths] == [raws[s.filename] for s in info.sequences]
    assert check_dataset(info, tmp_path / "data") == paths
    assert _names(tmp_path / "data" / "uvg") == sorted(s.filename for s in info.sequences)  # no archive, no .part
    assert server.ranges == [None, None]
    # A second run finds everything complete and downloads nothing.
    download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert len(server.ranges) == 2


def test_interrupted_transfer_resumes_with_a_range_request(server: Server, tmp_path: Path) -> None:
    info = _dataset(frames=(40,))
    info = DatasetInfo(name="uvg", title="UVG", sequences=info.sequences[:1], download="test")
    raws = _serve(server, info, tmp_path)
    body = server.files[f"/video/{info.sequences[0].archive}"]
    cut = len(body) // 3
    server.cut_after = cut
    folder = tmp_path / "data" / "uvg"
    with pytest.raises(DatasetError, match=f"stopped at {cut:,} of {len(body):,} bytes.*resume") as err:
        download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert "\n" not in str(err.value)
    assert _names(folder) == [info.sequences[0].archive + ".part"]  # nothing under a final name
    assert (folder / (info.sequences[0].archive + ".part")).stat().st_size == cut
    [path] = download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert path.read_bytes() == raws[info.sequences[0].filename]
    assert _names(folder) == [info.sequences[0].filename]


@pytest.mark.parametrize("honours_range", [True, False])
def test_partial_file_is_resumed_or_replaced_by_the_servers_answer(
    tmp_path: Path, server: Server, honours_range: bool
) -> None:
    body = bytes(range(256)) * 10
    server.files["/video/x.bin"] = body
    server.ignore_range = not honours_range
    (tmp_path / "x.bin.part").write_bytes(body[:100] if honours_range else b"stale")
    dest = download_file(server.url + "x.bin", tmp_path / "x.bin", progress=False)
    assert dest.read_bytes() == body and not (tmp_path / "x.bin.part").exists()


def test_corrupt_archive_is_deleted_and_nothing_final_is_left(server: Server, tmp_path: Path) -> None:
    info = _dataset()
    _serve(server, info, tmp_path)
    good = server.files[f"/video/{info.sequences[1].archive}"]
    server.files[f"/video/{info.sequences[1].archive}"] = good[:40] + bytes(len(good) - 40)  # right size, bad data
    folder = tmp_path / "data" / "uvg"
    with pytest.raises(DatasetError, match="ReadySetGo.*corrupt.*deleted.*again") as err:
        download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert "\n" not in str(err.value)
    assert _names(folder) == [info.sequences[0].filename]  # the good one only: no archive, .part or raw


def test_archive_with_a_wrongly_sized_member_is_refused(server: Server, tmp_path: Path) -> None:
    info = _dataset()
    seq = info.sequences[0]
    server.files[f"/video/{seq.archive}"] = _archive(tmp_path / "b", seq, _raw(seq, 0)[:-10])
    with pytest.raises(DatasetError, match=f"{seq.filename} in {seq.archive} is .* bytes, expected"):
        download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert not (tmp_path / "data" / "uvg" / seq.filename).exists()


def test_archive_without_the_registry_member_is_refused(server: Server, tmp_path: Path) -> None:
    info = _dataset()
    seq = info.sequences[0]
    server.files[f"/video/{seq.archive}"] = _archive(tmp_path / "b", seq, _raw(seq, 0), member="Other.yuv")
    with pytest.raises(DatasetError, match=f"does not hold {seq.filename}.*Other.yuv"):
        download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)


def test_missing_file_on_the_server_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="HTTP 404"):
        download_dataset(_dataset(), tmp_path / "data", base_url=server.url, progress=False)
    assert _names(tmp_path / "data" / "uvg") == []


def test_cli_downloads_uvg_and_explains_the_others(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _dataset()
    _serve(server, info, tmp_path)
    monkeypatch.setitem(DATASETS, "uvg", info)
    root = tmp_path / "data"
    assert main(["data", "download", "uvg", "--root", str(root), "--base-url", server.url]) == 0
    assert "2 raw files complete" in capsys.readouterr().out
    check_dataset("uvg", root)
    for name, where in (("mcl_jcv", "mcl.usc.edu"), ("JVET-B", "JVET")):
        assert main(["data", "download", name, "--root", str(root)]) == 0
        assert where in capsys.readouterr().out


def test_a_failure_to_write_the_extracted_file_keeps_the_archive(server: Server, tmp_path: Path, monkeypatch) -> None:
    """A full disk is not a corrupt archive: the multi-GB download must survive it."""
    info = _dataset(frames=(3,))
    info = DatasetInfo(name="uvg", title="UVG", sequences=info.sequences[:1], download="test")
    _serve(server, info, tmp_path)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(py7zr.SevenZipFile, "extract", full_disk)
    with pytest.raises(DatasetError, match="No space left on device.*archive is kept"):
        download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert _names(tmp_path / "data" / "uvg") == [info.sequences[0].archive]  # kept, nothing partial
    monkeypatch.undo()
    download_dataset(info, tmp_path / "data", base_url=server.url, progress=False)
    assert len(server.ranges) == 1  # the second run extracted the kept archive without downloading

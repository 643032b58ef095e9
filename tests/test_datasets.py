"""Dataset registry facts, data-root resolution and checks of a tiny fake dataset on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from divinr.data.datasets import (
    DATA_ROOT_ENV,
    DATASETS,
    DatasetError,
    DatasetInfo,
    SequenceInfo,
    check_dataset,
    dataset_key,
    dataset_root,
    load_sequence,
    locate_sequence,
)
from divinr.data.video import read_video, resize_frames
from divinr.errors import DivinrError, PresetError


def test_registry_counts_and_frames() -> None:
    assert set(DATASETS) == {"uvg", "jvetb", "mcl_jcv"}
    uvg, jvetb, mcl = DATASETS["uvg"], DATASETS["jvetb"], DATASETS["mcl_jcv"]
    assert (len(uvg.sequences), len(jvetb.sequences), len(mcl.sequences)) == (7, 5, 30)
    assert mcl.total_frames == 4115
    assert sum(s.frames for s in mcl.sequences) == 4115
    assert uvg.total_frames == 6 * 600 + 300
    assert uvg.sequence("shakendry").frames == 300
    assert all(s.fps == 120 and s.bit_depth == 8 for s in uvg.sequences)
    assert all(s.width == 1920 and s.height == 1080 for d in DATASETS.values() for s in d.sequences)
    assert {s.name for s in jvetb.sequences if s.bit_depth == 10} == {"MarketPlace", "RitualDance"}
    assert {(s.name, s.fps, s.frames) for s in jvetb.sequences if s.fps == 50} == {
        ("Cactus", 50, 500),
        ("BasketballDrive", 50, 500),
    }


def test_mcl_jcv_file_names_follow_fps_groups() -> None:
    mcl = DATASETS["mcl_jcv"]
    assert [s.name for s in mcl.sequences] == [f"videoSRC{i:02d}" for i in range(1, 31)]
    for seq in mcl.sequences:
        assert seq.filename == f"{seq.name}_1920x1080_{int(seq.fps)}.yuv"
        assert seq.frames == int(seq.fps * 5)  # 5 s each
    assert {s.name for s in mcl.sequences if s.fps == 24} == {f"videoSRC{i}" for i in (17, 21, 22, 23, 24, 25, 29)}


def test_uvg_download_mentions_readysetgo_quirk() -> None:
    uvg = DATASETS["uvg"]
    assert "ReadySetGo" in uvg.notes and "ReadySteadyGo" in uvg.notes
    assert uvg.sequence("ReadySteadyGo").filename.startswith("ReadySteadyGo_")
    assert "public" in DATASETS["jvetb"].download  # says honestly that no public URL is known


def test_expected_bytes() -> None:
    beauty = DATASETS["uvg"].sequence("Beauty")
    assert beauty.expected_bytes == int(1920 * 1080 * 1.5) * 600
    market = DATASETS["jvetb"].sequence("MarketPlace")
    assert market.expected_bytes == int(1920 * 1080 * 1.5) * 600 * 2
    odd = SequenceInfo(name="o", filename="o.yuv", width=5, height=3, frames=2, fps=25)
    assert odd.expected_bytes == (15 + 2 * 3 * 2) * 2  # chroma rounds up, as read_video reads it


def test_dataset_key_aliases() -> None:
    assert dataset_key("UVG") == "uvg"
    assert dataset_key("JVET-B") == "jvetb"
    assert dataset_key("MCL-JCV") == "mcl_jcv"
    assert dataset_key(" clip ") == "clip"


def test_dataset_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert dataset_root("uvg") == tmp_path / "env" / "uvg"
    assert dataset_root("MCL-JCV", tmp_path / "arg") == tmp_path / "arg" / "mcl_jcv"  # argument wins
    monkeypatch.delenv(DATA_ROOT_ENV)
    with pytest.raises(DivinrError, match=DATA_ROOT_ENV):
        dataset_root("uvg")
    with pytest.raises(PresetError, match="unknown dataset"):
        dataset_root("kodak", tmp_path)


# ---------------------------------------------------------------------------- a tiny fake dataset

TINY = DatasetInfo(
    name="tiny",
    title="Tiny",
    sequences=(
        SequenceInfo(name="A", filename="A_64x32.yuv", width=64, height=32, frames=3, fps=30.0),
        SequenceInfo(name="B", filename="B_64x32_10bit.yuv", width=64, height=32, frames=3, fps=60.0, bit_depth=10),
    ),
    download="ask the test",
)


def _write_sequence(folder: Path, seq: SequenceInfo, seed: int, extra_bytes: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    samples = seq.expected_bytes // (1 if seq.bit_depth == 8 else 2)
    if seq.bit_depth == 8:
        data = rng.integers(16, 236, samples, dtype=np.uint8).tobytes()
    else:
        data = rng.integers(64, 941, samples).astype("<u2").tobytes()
    path = folder / seq.filename
    path.write_bytes(data + b"\0" * extra_bytes)
    return path


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i, seq in enumerate(TINY.sequences):
        _write_sequence(folder, seq, seed=i)
    return tmp_path


def test_fake_dataset_checks_and_loads(tiny_root: Path) -> None:
    paths = check_dataset(TINY, tiny_root)
    assert paths == [tiny_root / "tiny" / s.filename for s in TINY.sequences]
    for seq in TINY.sequences:
        video = load_sequence(TINY, seq.name, tiny_root, width=32, height=16)
        assert video.frames.shape == (3, 3, 16, 32)
        assert video.fps == seq.fps
        # Chunked decoding must equal decoding everything at once and resizing it.
        whole = read_video(locate_sequence(TINY, seq.name, tiny_root), width=64, height=32, bit_depth=seq.bit_depth, full_range=True)
        torch.testing.assert_close(video.frames, resize_frames(whole.frames, 32, 16))
    first = load_sequence(TINY, "B", tiny_root, width=64, height=32, max_frames=2)
    assert first.frames.shape[0] == 2


def test_env_root_used_by_locate(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tiny_root))
    assert locate_sequence(TINY, "a") == tiny_root / "tiny" / "A_64x32.yuv"


def test_wrong_size_names_expected_path_and_size(tiny_root: Path) -> None:
    seq = TINY.sequence("A")
    _write_sequence(tiny_root / "tiny", seq, seed=3, extra_bytes=7)
    with pytest.raises(DatasetError) as info:
        locate_sequence(TINY, "A", tiny_root)
    message = str(info.value)
    summary, *details = message.splitlines()
    assert "1 of 1" in summary and str(tiny_root / "tiny") in summary
    expected_path = str(tiny_root / "tiny" / seq.filename)
    assert any(expected_path in line and f"{seq.expected_bytes:,} bytes" in line for line in details)
    assert f"{seq.expected_bytes + 7:,} bytes" in message
    assert "ask the test" in message


def test_missing_file_listed_with_its_facts(tiny_root: Path) -> None:
    seq = TINY.sequence("B")
    (tiny_root / "tiny" / seq.filename).unlink()
    with pytest.raises(DatasetError) as info:
        check_dataset(TINY, tiny_root)
    lines = str(info.value).splitlines()
    assert "1 of 2" in lines[0]
    problem = next(line for line in lines[1:] if "missing" in line)
    expected_path = str(tiny_root / "tiny" / seq.filename)
    assert expected_path in problem and "10-bit" in problem and "3 frames" in problem
    assert f"{seq.expected_bytes:,} bytes" in problem
    with pytest.raises(DatasetError, match="missing"):
        load_sequence(TINY, "B", tiny_root)
    assert check_dataset(TINY, tiny_root, sequences=["A"]) == [tiny_root / "tiny" / "A_64x32.yuv"]


def test_real_dataset_missing_lists_every_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        check_dataset("uvg", tmp_path)
    message = str(info.value)
    assert message.splitlines()[0].startswith("UVG: 7 of 7")
    assert str(tmp_path / "uvg" / "Beauty_1920x1080_120fps_420_8bit_YUV.yuv") in message
    assert "https://ultravideo.fi/dataset.html" in message

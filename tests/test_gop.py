"""GoP splitting for the Wan VAE's 1 + 4k frame constraint."""

from __future__ import annotations

import pytest
import torch

from divinr.rate import pixel_count
from divinr.data.gop import GoP, latent_coordinates, latent_frame_count, merge_gops, split_gops
from divinr.errors import PresetError, VideoFormatError


def numbered(n: int) -> torch.Tensor:
    """Frames whose every pixel holds its frame index, so padding is easy to trace."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 3).clone()


def test_latent_frame_count() -> None:
    # Wan VAE: first frame alone, then one latent frame per 4 frames.
    expected = {1: 1, 2: 1, 4: 1, 5: 2, 9: 3, 13: 4, 24: 6, 25: 7, 81: 21}
    assert {n: latent_frame_count(n) for n in expected} == expected
    with pytest.raises(ValueError, match=">= 1"):
        latent_frame_count(0)


def test_split_60_frames() -> None:
    frames = numbered(60)
    gops = split_gops(frames)
    assert [g.frames.shape[0] for g in gops] == [25, 25, 13]
    assert [(g.index, g.start, g.num_real) for g in gops] == [(0, 0, 25), (1, 25, 25), (2, 50, 10)]
    assert [(g.latent_start, g.num_latent) for g in gops] == [(0, 7), (7, 7), (14, 4)]
    tail = gops[2].frames
    assert torch.equal(tail[:10], frames[50:60])
    assert torch.equal(tail[10:], frames[59:60].expand(3, -1, -1, -1))  # last real frame repeated


def test_split_pads_only_to_next_valid_length() -> None:
    gops = split_gops(numbered(27))
    assert [(g.num_real, g.frames.shape[0], g.num_latent) for g in gops] == [(25, 25, 7), (2, 5, 2)]
    assert gops[1].frames[:, 0, 0, 0].tolist() == [25, 26, 26, 26, 26]


def test_one_frame_tail_is_a_gop() -> None:
    gops = split_gops(numbered(26))
    assert [(g.num_real, g.frames.shape[0], g.num_latent) for g in gops] == [(25, 25, 7), (1, 1, 1)]
    single = split_gops(numbered(1))
    assert len(single) == 1 and single[0].frames.shape[0] == 1


@pytest.mark.parametrize("gop_size", [1, 5, 9, 17, 33])
def test_split_other_gop_sizes(gop_size: int) -> None:
    gops = split_gops(numbered(40), gop_size=gop_size)
    for g in gops:
        assert (g.frames.shape[0] - 1) % 4 == 0 and g.frames.shape[0] <= gop_size
        assert g.num_latent == latent_frame_count(g.frames.shape[0])
    assert sum(g.num_real for g in gops) == 40


@pytest.mark.parametrize("gop_size", [0, 24, 26, 16])
def test_gop_size_must_be_1_plus_4k(gop_size: int) -> None:
    with pytest.raises(PresetError, match=f"gop_size {gop_size} is not 1 \\+ 4k"):
        split_gops(numbered(30), gop_size=gop_size)


def test_empty_video() -> None:
    with pytest.raises(VideoFormatError, match="no frames"):
        split_gops(torch.zeros(0, 3, 2, 2))


@pytest.mark.parametrize("n", [1, 13, 25, 27, 60])
def test_merge_inverts_split(n: int) -> None:
    frames = torch.rand(n, 3, 4, 5)
    gops = split_gops(frames)
    assert torch.equal(merge_gops([g.frames for g in gops], gops), frames)


def test_merge_rejects_mismatch() -> None:
    gops = split_gops(numbered(30))
    with pytest.raises(ValueError, match="frames for 1 GoPs but 2"):
        merge_gops([gops[0].frames], gops)
    with pytest.raises(ValueError, match="fewer than its 5 real frames"):
        merge_gops([gops[0].frames, gops[1].frames[:3]], gops)
    with pytest.raises(ValueError, match="in order"):
        merge_gops([g.frames for g in gops[::-1]], gops[::-1])


def test_latent_coordinates_tile_unit_interval() -> None:
    gops = split_gops(numbered(60))
    coords = latent_coordinates(gops)
    assert [c.shape[0] for c in coords] == [7, 7, 4]
    assert torch.allclose(torch.cat(coords), torch.linspace(0, 1, 18))
    assert coords[1][0].item() == pytest.approx(7 / 17)


def test_latent_coordinates_single_latent_frame() -> None:
    coords = latent_coordinates(split_gops(numbered(1)))
    assert len(coords) == 1 and coords[0].tolist() == [0.0]


def test_gop_is_frozen() -> None:
    gop = split_gops(numbered(5))[0]
    assert isinstance(gop, GoP)
    with pytest.raises(AttributeError):
        gop.start = 3  # type: ignore[misc]


def test_pixel_count() -> None:
    assert pixel_count(25, 1024, 576) == 25 * 1024 * 576
    gops = split_gops(numbered(27))
    assert pixel_count(sum(g.num_real for g in gops), 3, 2) == 27 * 6  # padding frames not counted
    with pytest.raises(ValueError):
        pixel_count(-1, 4, 4)

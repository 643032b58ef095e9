"""Rate control: the rate model against real streams, the size search, and --target-bpp end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.rate_control import CALIBRATION_STREAMS, REPO, TOLERANCE
from divinr.cli import main
from divinr.codec import DiVINRCodec, load_clip
from divinr.codec.divinr import plan_header
from divinr.compression.bitstream import StreamHeader, unpack
from divinr.data.samples import sample_clip_path
from divinr.data.video import Video
from divinr.errors import PresetError
from divinr.inference.sampler import SamplerConfig
from divinr.models.inr import fit_strides, inr_config
from divinr.rate import bits_per_pixel
from divinr.rate_control import (
    adapter_shapes,
    fit_rate_model,
    scaled_inr,
    shipped_rate_model,
    size_for_target,
)
from divinr.training.encoder import EncoderConfig
from divinr.training.stages import paper_phases

VALIDATION = REPO / "benchmarks/results/rate-control"
STREAMS = {p.name + p.parent.name: p.read_bytes() for p in CALIBRATION_STREAMS}


def planned(width: int, height: int, frames: int, layers: int = 13, **config: object) -> StreamHeader:
    video = Video(frames=torch.zeros(frames, 3, height, width), fps=25.0)
    return replace(plan_header(video, EncoderConfig(backbone="mini", **config)), nola_layers=layers)


def test_the_calibration_streams_exist_and_span_sizes() -> None:
    sizes = {unpack(d).header.inr.channels for d in STREAMS.values()}
    assert len(STREAMS) >= 6 and len(sizes) >= 3


@pytest.mark.parametrize("held_out", sorted(STREAMS))
def test_a_model_fitted_without_a_stream_predicts_its_file_size(held_out: str) -> None:
    """Leave one out: the fit never saw the stream whose real size it predicts."""
    model = fit_rate_model({k: v for k, v in STREAMS.items() if k != held_out}, prune_fraction=0.15)
    header = unpack(STREAMS[held_out]).header
    predicted = model.predict(header, adapter_shapes(header)).total
    assert predicted == pytest.approx(8 * len(STREAMS[held_out]), rel=0.03)


def test_the_shipped_model_is_the_fit_of_its_listed_streams() -> None:
    shipped = shipped_rate_model()
    refit = fit_rate_model({p: (REPO / p).read_bytes() for p in (s.split(":")[0] for s in shipped.streams)}, prune_fraction=0.15)
    assert refit.inr == shipped.inr and refit.adapter == shipped.adapter and refit.streams == shipped.streams


def test_the_predicted_header_is_the_written_one() -> None:
    """Exact, not fitted: the header costs what the container writes for it."""
    header = unpack(STREAMS["divinr-xxs.dvrbikes"]).header
    estimate = shipped_rate_model().predict(header, [])
    from divinr.compression.bitstream import bits_breakdown, pack

    empty = pack(header, {"w": torch.zeros(1)}, {"a": torch.zeros(1)})
    assert estimate.header == bits_breakdown(empty)["header"]


def test_targets_are_hit_by_the_prediction_and_sizes_grow_with_them() -> None:
    header = planned(320, 176, 49)
    targets = [0.05, 0.07, 0.1, 0.18, 0.24, 0.35, 0.7, 1.5]
    choices = [size_for_target(t, header, adapter_shapes(header)) for t in targets]
    for target, choice in zip(targets, choices):
        assert choice.estimate.bpp == pytest.approx(target, rel=0.02)
        assert choice.parameters == sum(p.numel() for p in _built(choice.config, header).parameters())
    assert [c.parameters for c in choices] == sorted(c.parameters for c in choices)
    # between presets: the smaller one's depth, wider
    between = choices[targets.index(0.18)]
    assert between.preset == "xxs" and between.scale > 1 and between.config.blocks == inr_config("xxs").blocks


def _built(config, header):
    from divinr.models.inr import LatentINR

    with torch.device("meta"):
        return LatentINR(config, header.latent_size)


def test_scale_one_is_the_preset_itself() -> None:
    config = inr_config("s", num_latent_frames=13)
    assert scaled_inr(config, 1.0) == config
    assert scaled_inr(config, 0.5).stage_channels == (48, 28, 16)


def test_an_unreachable_target_names_the_reachable_range() -> None:
    header = planned(320, 176, 49)
    with pytest.raises(PresetError, match=r"outside what the INR sizes reach here, 0\.04\d*\.\.\d+.*header and adapters alone"):
        size_for_target(0.01, header, adapter_shapes(header))
    with pytest.raises(PresetError, match="positive"):
        size_for_target(0.0, header, adapter_shapes(header))


def test_settings_the_calibration_never_saw_are_refused() -> None:
    model = shipped_rate_model()
    model.check_applies(6, 0.15)
    with pytest.raises(PresetError, match="calibrated at 6-bit codes and 15% pruning, not 4 bits"):
        model.check_applies(4, 0.15)
    with pytest.raises(PresetError, match="recalibrate"):
        model.check_applies(6, 0.3)


def test_the_paper_backbone_sweep_targets_are_reachable() -> None:
    """uvg_sweep_bpp's targets at 1024x576, 600 frames, with Wan2.1's 91 adapted layers."""
    header = planned(1024, 576, 600, layers=91)
    for target in (0.005, 0.01, 0.02, 0.03, 0.05):
        assert size_for_target(target, header, adapter_shapes(header)).estimate.bpp == pytest.approx(target, rel=0.02)


def test_strides_fit_latents_smaller_than_the_presets_upsampling() -> None:
    assert fit_strides(inr_config("xxs"), (2, 2)).strides == (1, 1, 2)
    assert fit_strides(inr_config("xxs"), (4, 6)).strides == (1, 2, 2)
    assert fit_strides(inr_config("xxs"), (9, 16)).strides == (2, 2, 2)
    assert planned(10, 6, 5).inr.strides == (1, 1, 2)
    assert planned(10, 6, 5, inr_overrides={"strides": (1, 1, 1)}).inr.strides == (1, 1, 1)


# -- end to end: the encoder sizes the INR before training ----------------------------------------
@pytest.fixture(scope="module")
def targeted() -> tuple[float, object]:
    video = load_clip(sample_clip_path("bikes"), width=64, height=48, max_frames=5)
    config = EncoderConfig(
        target_bpp=8.0, phases=paper_phases(1, 0, 0), sampler=SamplerConfig(steps=1), gop_size=5,
        device="cpu",
    )
    return 8.0, DiVINRCodec(config, progress=False).encode(video)  # tiny frames: NOLA alone is 2.7 bpp


def test_the_encoder_codes_the_size_the_rate_model_picks(targeted) -> None:
    target, encoded = targeted
    header = replace(encoded.header, inr=inr_config("xxs"))
    choice = size_for_target(target, header, adapter_shapes(encoded.header))
    assert unpack(encoded.data).header.inr == choice.config
    assert encoded.predicted_bpp == pytest.approx(choice.estimate.bpp)
    assert encoded.bpp == bits_per_pixel(len(encoded.data), 5, 64, 48)


def test_the_cli_takes_a_target_instead_of_a_preset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = str(sample_clip_path("bikes"))
    with pytest.raises(SystemExit):
        main(["encode", clip, "-o", str(tmp_path / "x.dvr"), "--target-bpp", "0.1", "--inr-size", "xs"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", clip, "-o", str(tmp_path / "x.dvr"), "--target-bpp", "-1"])
    assert "expected a positive number of bits per pixel" in capsys.readouterr().err
    out = tmp_path / "t.dvr"
    code = main([
        "encode", clip, "-o", str(out), "--target-bpp", "8", "--backbone", "tiny", "--resolution", "64x48", "--frames", "5",
        "--gop", "5",
        "--epochs", "1,0,0", "--steps", "1", "--device", "cpu",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "target 8 bpp: INR" in printed and "(target 8, predicted" in printed


# -- the committed validation: real encodes at target rates -----------------------------------------
def test_the_committed_validation_is_of_real_streams() -> None:
    report = json.loads((VALIDATION / "rate_control.json").read_text())
    points = report["points"]
    assert len(points) >= 6 and len({p["clip"] for p in points}) >= 2
    for point in points:
        data = (VALIDATION / "points" / f"{point['clip']}-{point['target_bpp']:g}.dvr").read_bytes()
        width, height, frames = (int(v) for v in point["geometry"].split("x"))
        assert point["bpp"] == bits_per_pixel(len(data), frames, width, height)
        assert point["error"] == pytest.approx(point["bpp"] / point["target_bpp"] - 1)
        header = unpack(data).header
        # today's search still picks what was coded
        assert size_for_target(point["target_bpp"], header, adapter_shapes(header)).config == header.inr
    assert sum(abs(p["error"]) for p in points) / len(points) <= TOLERANCE

"""HiNeRV baseline: pixel-space loss, clip data, stage contract and a short real training run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from torch.nn.utils import parametrize

from divinr.data.samples import sample_clip_path
from divinr.data.video import read_video, resize_frames
from divinr.errors import DivinrError, PresetError, VideoFormatError
from divinr.models.inr import INRConfig, LatentINR
from divinr.models.pixel_inr import HINERV_PRESETS, SEQUENCE_PRESETS, hinerv_config, render
from divinr.training.hinerv import FrameClips, HiNeRVModule, hinerv_loss, msssim_scales, train_hinerv
from divinr.training.stages import paper_phases, phase_at

# Wang et al. 2003 scale weights, typed in independently of the module's constant.
STANDARD_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
# A tiny INR with the (default) latent head, which the pixel baseline must refuse.
LATENT_HEAD = INRConfig(channels=8, stage_channels=(8,), strides=(2,), blocks=(1,), grid_frames=2, grid_channels=4)


@pytest.fixture(scope="module")
def bikes() -> torch.Tensor:
    """9 real frames of the bikes clip, (9, 3, 272, 640) in [0, 1]."""
    return read_video(sample_clip_path("bikes"), max_frames=9).frames


# ------------------------------------------------------------------ numpy MS-SSIM reference


def _window() -> np.ndarray:
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_and_cs(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    w = _window()
    c1, c2 = 0.01**2, 0.03**2
    mx, my = correlate2d(x, w, mode="valid"), correlate2d(y, w, mode="valid")
    sxx = correlate2d(x * x, w, mode="valid") - mx**2
    syy = correlate2d(y * y, w, mode="valid") - my**2
    sxy = correlate2d(x * y, w, mode="valid") - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
    return float(ssim.mean()), float(cs.mean())


def _pool(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))


def reference_ms_ssim(pred: np.ndarray, target: np.ndarray, scales: int) -> float:
    """pytorch_msssim-style MS-SSIM (valid filtering, relu, per-channel mean), frame mean."""
    weights = STANDARD_WEIGHTS[:scales] / STANDARD_WEIGHTS[:scales].sum()
    frames = []
    for x_frame, y_frame in zip(pred, target):
        channels = []
        for x, y in zip(x_frame, y_frame):
            terms = []
            for scale in range(scales):
                if scale:
                    x, y = _pool(x), _pool(y)
                ssim, cs = _ssim_and_cs(x, y)
                terms.append(ssim if scale == scales - 1 else cs)
            channels.append(np.prod(np.maximum(terms, 0.0) ** weights))
        frames.append(np.mean(channels))
    return float(np.mean(frames))


def numpy_psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((reference.astype(np.float64) - decoded) ** 2)))


# ------------------------------------------------------------------ loss


@pytest.mark.parametrize(("size", "scales"), [((176, 176), 5), ((48, 64), 3)])
@pytest.mark.parametrize(("l1_weight", "msssim_weight"), [(0.7, 0.3), (0.2, 0.8)])
def test_loss_matches_numpy_reference(
    bikes: torch.Tensor, size: tuple[int, int], scales: int, l1_weight: float, msssim_weight: float
) -> None:
    target = resize_frames(bikes[:2], width=size[1], height=size[0])
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    pred = (target + 0.08 * noise).clamp(0, 1)
    assert msssim_scales(*size) == scales
    terms = hinerv_loss(pred, target, l1_weight=l1_weight, msssim_weight=msssim_weight)
    p, t = pred.double().numpy(), target.double().numpy()
    l1 = np.abs(p - t).mean()
    similarity = reference_ms_ssim(p, t, scales)
    assert 0.3 < similarity < 0.99  # a non-trivial operating point
    np.testing.assert_allclose(float(terms.l1), l1, rtol=1e-5)
    np.testing.assert_allclose(float(terms.ms_ssim), similarity, rtol=1e-4)
    np.testing.assert_allclose(float(terms.loss), l1_weight * l1 + msssim_weight * (1 - similarity), rtol=1e-4)


def test_loss_is_differentiable_and_zero_at_target(bikes: torch.Tensor) -> None:
    target = resize_frames(bikes[:2], width=64, height=48)
    assert float(hinerv_loss(target, target).loss) == pytest.approx(0.0, abs=1e-6)
    pred = torch.full_like(target, 0.5, requires_grad=True)
    hinerv_loss(pred, target).loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_msssim_scales_follow_the_valid_filter_rule() -> None:
    # n scales need 10 * 2**(n-1) + 1 px per side, capped at the 5 standard scales.
    for side, scales in [(11, 1), (20, 1), (21, 2), (41, 3), (80, 3), (81, 4), (160, 4), (161, 5), (576, 5)]:
        assert msssim_scales(side, 4 * side) == scales
        assert msssim_scales(4 * side, side) == scales
    with pytest.raises(VideoFormatError):
        msssim_scales(10, 100)


# ------------------------------------------------------------------ data


def test_frame_clips_cover_the_sequence_with_sequence_coordinates(bikes: torch.Tensor) -> None:
    frames = resize_frames(bikes, width=16, height=8)
    clips = FrameClips(frames, clip_len=4)
    items = [clips[i] for i in range(len(clips))]
    assert [item["frames"].shape[0] for item in items] == [4, 4, 1]
    torch.testing.assert_close(torch.cat([item["frames"] for item in items]), frames)
    coords = torch.cat([item["coords"] for item in items]).numpy()
    np.testing.assert_allclose(coords, np.arange(9) / 8, rtol=0, atol=1e-7)
    levels = (frames * 255).round().to(torch.uint8)
    as_uint8 = FrameClips(levels, clip_len=4)[1]["frames"]
    np.testing.assert_allclose(as_uint8.numpy(), levels[4:8].numpy() / 255.0, rtol=1e-6)
    with pytest.raises(IndexError):
        clips[3]
    with pytest.raises(VideoFormatError):
        FrameClips(frames * 2, clip_len=4)
    with pytest.raises(PresetError):
        FrameClips(frames, clip_len=0)


# ------------------------------------------------------------------ presets


def test_presets_reach_pixel_resolution_from_a_9x16_grid() -> None:
    counts = {}
    for name in HINERV_PRESETS:
        config = hinerv_config(name, (576, 1024), 600)
        assert config.head == "rgb" and config.strides == (4, 2, 2, 2, 2)
        assert config.grid_frames == HINERV_PRESETS[name].grid_frames
        with torch.device("meta"):
            inr = LatentINR(config, (576, 1024))
        assert tuple(inr.base_grid.levels[0].shape[-2:]) == (9, 16)
        assert inr.stage_sizes[-1] == (576, 1024)
        counts[name] = inr.num_parameters
    assert list(counts.values()) == sorted(counts.values())
    bpp = {name: n * 5 / (600 * 1024 * 576) for name, n in counts.items()}
    assert bpp["xxs"] < 0.006 and 0.02 < bpp["m"] < 0.1
    assert list(SEQUENCE_PRESETS) == list(HINERV_PRESETS)[-4:]


def test_small_presets_put_a_short_clip_in_the_low_rate_range() -> None:
    """49 frames at 512x288: 4xs..xs at ~5 bits per parameter span 0.005-0.1 bpp, four points."""
    bpp = []
    for name in ("4xs", "3xs", "xxs", "xs"):
        with torch.device("meta"):
            inr = LatentINR(hinerv_config(name, (288, 512), 49), (288, 512))
        bpp.append(inr.num_parameters * 5 / (49 * 288 * 512))
    assert bpp == sorted(bpp) and 0.005 < bpp[0] and bpp[-1] < 0.1


def test_config_scales_grids_with_length_and_strides_with_size() -> None:
    preset = HINERV_PRESETS["s"]
    short = hinerv_config("s", (576, 1024), 25)
    assert short.grid_frames == max(2, round(preset.grid_frames * 25 / 600))
    assert short.local_grid_frames == max(2, round(preset.local_grid_frames * 25 / 600))
    small = hinerv_config("s", (48, 112), 25)
    assert small.total_stride * 4 <= 48
    big_inr, small_inr = LatentINR(short, (576, 1024)), LatentINR(small, (48, 112))
    # Only the strides change: the decoder (what pruning sees) is the same network.
    assert sum(p.numel() for _, p in big_inr.decoder_parameters()) == sum(
        p.numel() for _, p in small_inr.decoder_parameters()
    )
    assert small_inr(torch.tensor([0.0, 1.0])).y.shape == (2, 3, 48, 112)
    with pytest.raises(PresetError):
        hinerv_config("huge", (576, 1024), 25)


# ------------------------------------------------------------------ module contract


def test_module_contract_covers_every_inr_parameter() -> None:
    inr = LatentINR(hinerv_config("xxs", (48, 112), 9), (48, 112))
    module = HiNeRVModule(inr, paper_phases(1, 1, 1))
    quantised = {id(getattr(owner, name)) for owner, name in module.quantised_targets()}
    assert quantised == {id(p) for p in inr.parameters()}
    assert len(module.quantised_targets()) == len(list(inr.parameters()))
    assert [name for name, _ in module.pruning_targets()] == [name for name, _ in inr.decoder_parameters()]
    optimizer = module.configure_optimizers()
    assert [group["name"] for group in optimizer.param_groups] == ["inr"]
    with pytest.raises(PresetError):
        HiNeRVModule(LatentINR(LATENT_HEAD, (8, 8)), paper_phases(1, 1, 1))


def test_render_matches_direct_evaluation_at_frame_coordinates() -> None:
    torch.manual_seed(0)
    inr = LatentINR(hinerv_config("xxs", (48, 112), 5), (48, 112)).train()
    frames = render(inr, 5, batch=2)
    assert frames.shape == (5, 3, 48, 112) and not frames.requires_grad
    assert inr.training
    with torch.no_grad():
        direct = inr(torch.tensor(np.arange(5) / 4, dtype=torch.float32)).y
    torch.testing.assert_close(frames, direct)
    assert frames.min() >= 0 and frames.max() <= 1


# ------------------------------------------------------------------ training


class _Probe(L.Callback):
    """Records pruning masks, Quant-Noise state and learning rates stage by stage."""

    def __init__(self) -> None:
        self.prune_masks: list[list[torch.Tensor]] = []
        self.quant_active: list[bool] = []
        self.first_lr: dict[str, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        stage = pl_module.phases[phase_at(pl_module.phases, trainer.current_epoch)[0]].name
        self.first_lr.setdefault(stage, trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        stage = pl_module.phases[phase_at(pl_module.phases, trainer.current_epoch)[0]].name
        if stage == "prune":
            self.prune_masks.append([w.detach() == 0 for _, w in pl_module.pruning_targets()])
        if stage == "quant":
            # Under Quant-Noise every INR parameter lives on as a parametrization's "original".
            names = [name for name, _ in pl_module.inr.named_parameters()]
            self.quant_active.append(all(name.endswith(".original") for name in names))


def test_three_stage_training_improves_and_keeps_pruned_weights_zero(bikes: torch.Tensor) -> None:
    frames = resize_frames(bikes, width=112, height=48)
    config = hinerv_config("xxs", (48, 112), 9)
    phases = paper_phases(6, 3, 3, inr_lr=1e-2)
    probe = _Probe()
    inr, history = train_hinerv(
        frames, config, phases, clip_len=3, seed=0, device="cpu", enable_progress_bar=False, callbacks=[probe]
    )

    assert history["stage"] == ["dense"] * 6 + ["prune"] * 3 + ["quant"] * 3
    assert len(history["loss"]) == 12 and history["loss"][-1] < history["loss"][0]
    assert probe.first_lr == pytest.approx({"dense": 1e-2, "prune": 1e-2, "quant": 1e-3})

    total = sum(w.numel() for _, w in inr.decoder_parameters())
    assert len(probe.prune_masks) == 3
    for masks in probe.prune_masks:
        assert sum(int(m.sum()) for m in masks) == round(0.15 * total)
        assert all(torch.equal(a, b) for a, b in zip(masks, probe.prune_masks[0]))
    assert probe.quant_active == [True, True, True]

    # Returned INR: plain parameters again, the same weights pruned.
    assert not any(parametrize.is_parametrized(module) for module in inr.modules())
    final = [w.detach() == 0 for _, w in inr.decoder_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(final, probe.prune_masks[0]))

    torch.manual_seed(0)  # train_hinerv builds its INR right after seeding: the same initial weights
    initial = LatentINR(config, (48, 112))
    reference = frames.numpy()
    assert numpy_psnr(reference, render(inr, 9).numpy()) > numpy_psnr(reference, render(initial, 9).numpy()) + 2.0


class _StopAt(L.Callback):
    """Raises at the start of one epoch (a crash or time-out) and records the epochs it saw."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch
        self.seen: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("interrupted")
        self.seen.append(trainer.current_epoch)


def test_interrupted_training_resumes_from_the_last_epoch(tmp_path: Path) -> None:
    frames = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    config = hinerv_config("4xs", (48, 64), 4)
    phases = paper_phases(3, 2, 2)
    common = {"clip_len": 2, "device": "cpu", "enable_progress_bar": False, "workdir": tmp_path}
    crash = _StopAt(4)  # in the pruning stage
    with pytest.raises(RuntimeError, match="interrupted"):
        train_hinerv(frames, config, phases, callbacks=[crash], **common)
    assert crash.seen == [0, 1, 2, 3] and (tmp_path / "checkpoints" / "last.ckpt").is_file()

    other = _StopAt(1)  # another seed is another training: it must not resume this one
    with pytest.raises(RuntimeError, match="interrupted"):
        train_hinerv(frames, config, phases, callbacks=[other], seed=1, **common)
    assert other.seen == [0]
    crash = _StopAt(4)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_hinerv(frames, config, phases, callbacks=[crash], **common)
    assert crash.seen == [0, 1, 2, 3]  # seed 0 again: seed 1's checkpoint is not resumed either

    resumed = _StopAt(None)
    inr, history = train_hinerv(frames, config, phases, callbacks=[resumed], **common)
    assert resumed.seen == [4, 5, 6]  # nothing trained twice
    straight, _ = train_hinerv(frames, config, phases, **{**common, "workdir": None})
    for (name, a), b in zip(inr.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs from the uninterrupted training"  # bit-exact resume
    assert history["stage"] == ["dense"] * 3 + ["prune"] * 2 + ["quant"] * 2 and len(history["loss"]) == 7
    total = sum(w.numel() for _, w in inr.decoder_parameters())
    assert sum(int((w == 0).sum()) for _, w in inr.decoder_parameters()) >= round(0.15 * total)


class _Poison(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == 1:
            with torch.no_grad():
                next(pl_module.inr.parameters()).view(-1)[0] = float("nan")


def test_a_busy_work_folder_is_refused(tmp_path: Path) -> None:
    from divinr.training.resume import workdir_lock

    frames = torch.rand(4, 3, 48, 64)
    with workdir_lock(tmp_path), pytest.raises(DivinrError, match="in use by another encode"):
        train_hinerv(frames, hinerv_config("4xs", (48, 64), 4), paper_phases(1, 0, 0), workdir=tmp_path,
                     clip_len=2, device="cpu", enable_progress_bar=False)


def test_diverged_training_stops_at_the_end_of_the_epoch() -> None:
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="training diverged in epoch 1"):
        train_hinerv(frames, hinerv_config("4xs", (32, 32), 2), paper_phases(3, 0, 0), device="cpu",
                     enable_progress_bar=False, callbacks=[_Poison()])


def test_train_hinerv_rejects_a_latent_head() -> None:
    with pytest.raises(PresetError):
        train_hinerv(torch.rand(3, 3, 16, 16), LATENT_HEAD, paper_phases(1, 0, 0))

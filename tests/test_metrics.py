"""Frame metrics, perceptual metrics on random backbones, FID/256, weight cache and evaluator."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as tF

from divinr.errors import MissingWeightsError, PresetError, VideoFormatError
from divinr.metrics import functional as F
from divinr.metrics.evaluate import METRICS, SequenceEvaluator, available_metrics, evaluate_sequence
from divinr.metrics.perceptual import (
    DISTSMetric,
    FeatureStats,
    FIDMetric,
    LPIPSMetric,
    fid_from_stats,
    load_fid_stats,
    pooled_fid,
    save_fid_stats,
)
from divinr.metrics.weights import WEIGHTS, require_weight, weights_dir

NOISE_LEVELS = (0.02, 0.08, 0.25)


def _frames(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random frames (low-frequency content, like video), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return tF.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _noisy(frames: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (frames + sigma * torch.randn(frames.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def lpips_random() -> LPIPSMetric:
    torch.manual_seed(0)
    return LPIPSMetric(pretrained=False)


@pytest.fixture(scope="module")
def dists_random() -> DISTSMetric:
    torch.manual_seed(0)
    return DISTSMetric(pretrained=False)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVINR_WEIGHTS_DIR", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------- PSNR / MS-SSIM


def _numpy_psnr(ref: np.ndarray, dec: np.ndarray, luma: bool) -> np.ndarray:
    r = np.round(np.clip(ref.astype(np.float64), 0, 1) * 255)
    d = np.round(np.clip(dec.astype(np.float64), 0, 1) * 255)
    if luma:
        w = np.array([0.2126, 0.7152, 0.0722])
        r, d = np.tensordot(w, r, axes=([0], [1])), np.tensordot(w, d, axes=([0], [1]))
    mse = ((r - d) ** 2).reshape(len(ref), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / mse)


def test_psnr_matches_numpy_formula():
    ref = _frames(3)
    dec = _noisy(ref, 0.05) + 0.01  # pushes a few values above 1: they must be clamped
    expected_rgb = _numpy_psnr(ref.numpy(), dec.numpy(), luma=False)
    expected_y = _numpy_psnr(ref.numpy(), dec.numpy(), luma=True)
    np.testing.assert_allclose(F.psnr_rgb(ref, dec).numpy(), expected_rgb, rtol=0, atol=1e-9)
    np.testing.assert_allclose(F.psnr_y(ref, dec).numpy(), expected_y, rtol=0, atol=1e-9)
    assert not np.allclose(expected_rgb, expected_y)


def test_psnr_sees_frames_as_8bit():
    ref = _frames(2)
    as_uint8 = torch.round(ref * 255).to(torch.uint8)
    dec = _noisy(ref, 0.05)
    assert torch.equal(F.psnr_rgb(ref, dec), F.psnr_rgb(as_uint8, dec))
    # A change below half an 8-bit step does not exist in an 8-bit file: the frame is exact.
    assert torch.equal(F.psnr_rgb(as_uint8, as_uint8.double() / 255 + 0.4 / 255), F.psnr_rgb(ref, ref))


def test_identical_frames_score_as_one_level_of_error_in_one_sample():
    ref = _frames(2, size=176)
    levels = np.round(ref.double().numpy() * 255)
    height, width = levels.shape[-2:]
    exact_rgb = 10 * np.log10(255.0**2 * 3 * height * width)
    np.testing.assert_allclose(F.psnr_rgb(ref, ref).numpy(), [exact_rgb] * 2, rtol=1e-12)
    exact_y = 10 * np.log10(255.0**2 * height * width / 0.0722**2)
    np.testing.assert_allclose(F.psnr_y(ref, ref).numpy(), [exact_y] * 2, rtol=1e-12)
    for channel in range(3):  # one level off in one sample: never above the exact frame
        one_off = levels.copy()
        one_off[0, channel, 5, 7] += 1 if one_off[0, channel, 5, 7] < 255 else -1
        off = torch.from_numpy(one_off / 255)
        assert F.psnr_rgb(off, ref)[0] == pytest.approx(exact_rgb, rel=1e-12)
        assert F.psnr_y(off, ref)[0] <= exact_y + 1e-9
    assert F.psnr_y(off, ref)[0] == pytest.approx(exact_y, rel=1e-12)  # blue: the smallest luma step
    assert F.psnr_rgb(ref[:0], ref[:0]).shape == (0,)  # no frames: no scores, no error
    # The mean over a sequence with one exact frame stays finite.
    noisy = _noisy(ref, 0.05)
    mixed = torch.stack([ref[0], noisy[1]])
    assert torch.isfinite(F.psnr_rgb(ref, mixed)).all() and F.psnr_rgb(ref, mixed)[0] > F.psnr_rgb(ref, mixed)[1]
    assert torch.allclose(F.ms_ssim(ref, ref), torch.ones(2), atol=1e-5)


def test_fidelity_metrics_monotone_in_noise():
    ref = _frames(2, size=176)
    psnr = [F.psnr_rgb(ref, _noisy(ref, s)).mean() for s in NOISE_LEVELS]
    psnr_y = [F.psnr_y(ref, _noisy(ref, s)).mean() for s in NOISE_LEVELS]
    msssim = [F.ms_ssim(ref, _noisy(ref, s)).mean() for s in NOISE_LEVELS]
    for values in (psnr, psnr_y, msssim):
        assert values[0] > values[1] > values[2]


# ---------------------------------------------------------------- LPIPS / DISTS


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_perceptual_identity_monotone_symmetric(name, lpips_random, dists_random):
    metric = {"lpips": lpips_random, "dists": dists_random}[name]
    ref = _frames(2)
    assert torch.allclose(metric(ref, ref), torch.zeros(2), atol=1e-6)
    scores = [metric(ref, _noisy(ref, s)) for s in NOISE_LEVELS]
    assert all((a < b).all() for a, b in zip(scores, scores[1:]))
    dec = _noisy(ref, 0.08)
    # Both are symmetric by construction (normalised squared differences; symmetric
    # mean / correlation terms).
    assert torch.allclose(metric(ref, dec), metric(dec, ref), rtol=1e-5, atol=1e-7)


def test_dists_matches_torchmetrics_implementation(dists_random, monkeypatch):
    import torchmetrics.functional.image.dists as tm_dists

    # torchmetrics takes ``vgg16(...).features[i]`` for each non-pool index i; hand it our
    # layers (same torchvision indices) so both implementations share one random backbone.
    monkeypatch.setattr(tm_dists, "vgg16", lambda weights=None: SimpleNamespace(features=dists_random.backbone))
    reference = tm_dists.DISTSNetwork(load_weights=True)
    ref = _frames(2)
    dec = _noisy(ref, 0.08)
    expected = reference(F.to_unit_range(dec), F.to_unit_range(ref))
    torch.testing.assert_close(dists_random(ref, dec), expected, rtol=1e-4, atol=1e-6)


def test_lpips_loads_alexnet_from_cache(standin_alexnet):
    state = standin_alexnet
    metric = LPIPSMetric(pretrained=True)
    convs = [m for m in metric.net.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv, i in zip(convs, (0, 3, 6, 8, 10)):
        assert torch.equal(conv.weight, state[f"features.{i}.weight"])
        assert torch.equal(conv.bias, state[f"features.{i}.bias"])


# ---------------------------------------------------------------- FID/256


def test_fid_patch_layout_1024x576():
    expected = [(y, x) for y in (0, 256) for x in (0, 256, 512, 768)] + [(128, 128), (128, 384), (128, 640)]
    assert F.fid_patch_origins(576, 1024) == expected
    patches = F.fid_patches(torch.zeros(1, 3, 576, 1024))
    assert patches.shape == (11, 3, 256, 256) and patches.dtype == torch.uint8
    assert len(F.fid_patch_origins(300, 300)) == 1  # below 1.5 patches: no shifted pass


def test_fid_patches_match_unfold_reference():
    """Same patches as NeuralCompression's update_patch_fid builds with F.unfold."""
    # Exact 8-bit levels: the test is about patch layout, not about rounding ties.
    frame = torch.randint(0, 256, (1, 3, 80, 112), generator=torch.Generator().manual_seed(0)) / 255.0
    p = 32

    def unfold(x: torch.Tensor) -> torch.Tensor:
        return tF.unfold(x, kernel_size=p, stride=p).permute(0, 2, 1).reshape(-1, 3, p, p)

    expected = torch.cat([unfold(frame), unfold(frame[:, :, p // 2 :, p // 2 :])])
    expected = torch.round(expected * 255).to(torch.uint8)
    assert torch.equal(F.fid_patches(frame, patch=p), expected)


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g, dtype=torch.float64)
    b = torch.randn(150, 16, generator=g, dtype=torch.float64)
    b = b @ torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.5 + 0.3
    mean_a, cov_a, mean_b, cov_b = a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)
    expected = float(_compute_fid(mean_a, cov_a, mean_b, cov_b))
    assert F.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_feature_stats_merge_equals_union():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g)
    merged, part = FeatureStats.empty(5), FeatureStats.empty(5)
    merged.update(x)
    part.update(y)
    merged.merge(part)
    mean, cov = merged.mean_cov()
    both = torch.cat([x, y]).double()
    torch.testing.assert_close(mean, both.mean(0))
    torch.testing.assert_close(cov, torch.cov(both.T))


def test_fid_zero_for_identical_and_grows_with_noise():
    # A small random conv net stands in for Inception (documented test-only extractor):
    # identity and monotonicity hold for any fixed feature map.
    torch.manual_seed(0)
    fid = FIDMetric(pretrained=False, patch=32)
    ref = _frames(16, size=64)

    def score(dec: torch.Tensor) -> float:
        real, fake = FeatureStats.empty(32), FeatureStats.empty(32)
        real.update(fid(ref))
        fake.update(fid(dec))
        return fid_from_stats(real, fake)

    assert fid(ref).shape == (16 * 5, 32)  # 64x64, patch 32: 4 tiles + 1 shifted
    assert abs(score(ref)) < 1e-8
    values = [score(_noisy(ref, s)) for s in NOISE_LEVELS]
    assert 0 < values[0] < values[1] < values[2]


def test_fid_rejects_frames_smaller_than_a_patch():
    with pytest.raises(VideoFormatError, match="FID patch"):
        FIDMetric(pretrained=False)(torch.zeros(1, 3, 200, 300))


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "build, name", [(LPIPSMetric, "alexnet"), (DISTSMetric, "vgg16"), (FIDMetric, "inception_fid")]
)
def test_missing_weights_name_file_path_and_command(empty_cache, build, name):
    expected_path = empty_cache / WEIGHTS[name].filename
    with pytest.raises(MissingWeightsError) as info:
        build()
    message = str(info.value)
    assert str(expected_path) in message
    assert "python -m divinr.metrics.weights download" in message
    assert "\n" not in message


def test_weights_dir_and_shipped_files(empty_cache):
    assert weights_dir() == empty_cache
    assert require_weight("lpips_alex_v0.1").is_file()
    assert require_weight("dists_alpha_beta").is_file()


def test_download_offline_fails_cleanly(empty_cache):
    # The proxy points at a closed local port, so no download happens even on a machine
    # with internet access.
    closed_port = "http://127.0.0.1:9"
    env = {**os.environ, "DIVINR_WEIGHTS_DIR": str(empty_cache), "https_proxy": closed_port, "HTTPS_PROXY": closed_port}
    proc = subprocess.run(
        [sys.executable, "-m", "divinr.metrics.weights", "download", "--timeout", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    cached = [w for w in WEIGHTS.values() if w.url]
    assert len(errors) == len(cached)
    for line, entry in zip(errors, cached):
        assert line.startswith("error:") and entry.filename in line and str(empty_cache) in line
    assert not any(empty_cache.iterdir())  # no partial files left behind


# ---------------------------------------------------------------- evaluator


@pytest.fixture(scope="module")
def random_modules(lpips_random, dists_random):
    torch.manual_seed(0)
    return {"lpips": lpips_random, "dists": dists_random, "fid": FIDMetric(pretrained=False, patch=32)}


def test_evaluate_sequence_means_and_batching(random_modules):
    ref = _frames(3)
    dec = _noisy(ref, 0.08)
    metrics = ("psnr", "psnr_y", "lpips", "dists", "fid")
    one = evaluate_sequence(ref, dec, metrics, device="cpu", batch_size=1, modules=random_modules)
    three = evaluate_sequence(ref, dec, metrics, device="cpu", batch_size=3, modules=random_modules)
    assert one["frames"] == 3 and one["skipped"] == {}
    expected_psnr = float(np.mean(_numpy_psnr(ref.numpy(), dec.numpy(), luma=False)))
    assert one["psnr"] == pytest.approx(expected_psnr, abs=1e-9)
    assert one["lpips"] == pytest.approx(float(random_modules["lpips"](ref, dec).mean()), rel=1e-5)
    for name in metrics:
        assert one[name] == pytest.approx(three[name], rel=1e-5, abs=1e-7)


def _numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID from raw features with numpy/scipy (the textbook formula, independent of FeatureStats)."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


def test_evaluator_returns_per_call_stats_without_pooling(random_modules):
    evaluator = SequenceEvaluator(("fid",), device="cpu", batch_size=4, modules=random_modules)
    a, b = _frames(6, seed=1), _frames(6, seed=2)
    first = evaluator(a, _noisy(a, 0.1))
    evaluator(b, _noisy(b, 0.1, seed=5))
    again = evaluator(a, _noisy(a, 0.1))
    real, fake = again["fid_stats"]
    assert real.count == fake.count == 6 * 5  # this call's patches only: nothing carried over
    assert again["fid"] == pytest.approx(first["fid"], rel=1e-9)
    assert fid_from_stats(real, fake) == pytest.approx(again["fid"], rel=1e-9)
    assert evaluator(a, a)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert evaluate_sequence(a, a, ("psnr",), device="cpu")["fid_stats"] is None


def test_saved_stats_give_the_same_fid(random_modules, tmp_path):
    a = _frames(6, seed=3)
    dec = _noisy(a, 0.1)
    scores = evaluate_sequence(a, dec, ("fid",), device="cpu", modules=random_modules)
    save_fid_stats(tmp_path / "fid_stats.npz", *scores["fid_stats"])
    assert [p.name for p in tmp_path.iterdir()] == ["fid_stats.npz"]  # no temporary file left
    real, fake = load_fid_stats(tmp_path / "fid_stats.npz")
    assert real.total.dtype == torch.float64 and real.count == 30
    torch.testing.assert_close(real.outer, scores["fid_stats"][0].outer, rtol=0, atol=0)
    fid = random_modules["fid"]
    direct = _numpy_fid(fid(a).double().numpy(), fid(dec).double().numpy())
    assert fid_from_stats(real, fake) == pytest.approx(direct, rel=1e-6)
    assert scores["fid"] == pytest.approx(direct, rel=1e-6)


def test_pooled_fid_equals_fid_of_all_patches(random_modules, tmp_path):
    evaluator = SequenceEvaluator(("fid",), device="cpu", batch_size=4, modules=random_modules)
    a, b = _frames(6, seed=1), _frames(6, seed=2)
    da, db = _noisy(a, 0.1), _noisy(b, 0.1, seed=5)
    for name, ref, dec in (("a", a, da), ("b", b, db)):
        save_fid_stats(tmp_path / f"{name}.npz", *evaluator(ref, dec)["fid_stats"])
    pooled = pooled_fid(load_fid_stats(tmp_path / f"{n}.npz") for n in "ab")
    fid = random_modules["fid"]
    real = torch.cat([fid(a), fid(b)]).double().numpy()
    fake = torch.cat([fid(da), fid(db)]).double().numpy()
    assert pooled == pytest.approx(_numpy_fid(real, fake), rel=1e-6)
    assert math.isnan(pooled_fid([]))


def test_evaluator_skip_missing(empty_cache):
    ref = _frames(2)
    with pytest.raises(MissingWeightsError):
        evaluate_sequence(ref, ref, ("psnr", "lpips"), device="cpu")
    result = evaluate_sequence(ref, _noisy(ref, 0.1), ("psnr", "lpips"), device="cpu", skip_missing=True)
    assert result["lpips"] is None and str(empty_cache) in result["skipped"]["lpips"]
    assert np.isfinite(result["psnr"])
    assert available_metrics(check_weights=True) == ("psnr", "psnr_y", "ms_ssim")
    assert available_metrics() == METRICS


def test_every_evaluated_metric_has_a_label_and_a_direction() -> None:
    from divinr.metrics.names import HIGHER_IS_BETTER, METRIC_LABELS, REPORTED_METRICS

    assert set(METRIC_LABELS) == set(HIGHER_IS_BETTER) == set(METRICS)
    assert set(REPORTED_METRICS) <= set(METRICS) and "psnr_y" not in REPORTED_METRICS


def test_evaluator_rejects_bad_input():
    with pytest.raises(PresetError, match="unknown metric"):
        SequenceEvaluator(("psnr", "vmaf"))
    with pytest.raises(VideoFormatError):
        evaluate_sequence(_frames(2), _frames(3), ("psnr",), device="cpu")
    with pytest.raises(VideoFormatError, match="MS-SSIM"):
        evaluate_sequence(_frames(1), _frames(1), ("ms_ssim",), device="cpu")

"""Score a decoded sequence against its reference with the protocol of BENCHMARKS.md.

Per-frame values are averaged over the frames of the sequence (the dataset mean over
sequences is the caller's). FID is the exception: it is a distance between two sets of
patches, so a sequence gets the FID of its own patches, and each call also returns the
feature statistics behind it (``"fid_stats"``). The per-dataset FID of BENCHMARKS.md (2048-d
statistics want more patches than one short sequence has) is
:func:`~divinr.metrics.perceptual.pooled_fid` over the statistics of the sequences the
caller chooses: nothing is pooled implicitly, so rate points never mix.

Frames are moved to the device ``batch_size`` at a time, so a 600-frame 1024x576 sequence
can stay on the CPU (as uint8 it takes ~1 GB).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from divinr.devices import resolve_device
from divinr.errors import MissingWeightsError, VideoFormatError, unknown_choice
from divinr.metrics import functional as F
from divinr.metrics.perceptual import DISTSMetric, FeatureStats, FIDMetric, LPIPSMetric, fid_from_stats
from divinr.metrics.weights import missing_weights

_FRAME_METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "psnr": F.psnr_rgb,
    "psnr_y": F.psnr_y,
    "ms_ssim": F.ms_ssim,
}
# Network metrics: class and the weight files it loads.
_NETWORK_METRICS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "lpips": (LPIPSMetric, ("alexnet", "lpips_alex_v0.1")),
    "dists": (DISTSMetric, ("vgg16", "dists_alpha_beta")),
    "fid": (FIDMetric, ("inception_fid",)),
}
METRICS: tuple[str, ...] = (*_FRAME_METRICS, *_NETWORK_METRICS)


def available_metrics(check_weights: bool = False) -> tuple[str, ...]:
    """Names of the metrics the evaluator knows.

    Args:
        check_weights: only those that can run now, i.e. whose weight files are on disk.

    Returns:
        Metric names in report order.
    """
    if not check_weights:
        return METRICS
    return tuple(m for m in METRICS if m in _FRAME_METRICS or not missing_weights(_NETWORK_METRICS[m][1]))


class SequenceEvaluator:
    """Scores sequences with the networks loaded once; calls are independent of each other.

    Args:
        metrics: names from :data:`METRICS`.
        device: where the computation runs (default: CUDA if present, else CPU).
        batch_size: frames moved to the device at a time.
        skip_missing: a network metric whose weights are missing is reported as None with the
            reason under ``"skipped"`` instead of raising MissingWeightsError.
        modules: ready metric modules by name (e.g. random-backbone ones in tests), used
            instead of building the pretrained ones.

    Raises:
        PresetError: an unknown metric name.
        MissingWeightsError: weights are missing and ``skip_missing`` is False.
    """

    def __init__(
        self,
        metrics: Sequence[str] = METRICS,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        skip_missing: bool = False,
        modules: Mapping[str, nn.Module] | None = None,
    ) -> None:
        for name in metrics:
            if name not in METRICS:
                raise unknown_choice("metric", name, METRICS)
        self.metrics = tuple(metrics)
        self.device = resolve_device(device if device is not None else "auto")
        self.batch_size = batch_size
        self.skipped: dict[str, str] = {}
        self.networks: dict[str, nn.Module] = {}
        given = dict(modules or {})
        for name in self.metrics:
            if name not in _NETWORK_METRICS:
                continue
            try:
                module = given[name] if name in given else _NETWORK_METRICS[name][0]()
            except MissingWeightsError as err:
                if not skip_missing:
                    raise
                self.skipped[name] = str(err)
                continue
            self.networks[name] = module.to(self.device).eval()

    def _check(self, reference: Tensor, decoded: Tensor) -> None:
        if reference.ndim != 4 or reference.shape[1] != 3 or reference.shape != decoded.shape:
            raise VideoFormatError(
                f"reference {tuple(reference.shape)} and decoded {tuple(decoded.shape)} must both be "
                "(T, 3, H, W) RGB frames of the same size and count"
            )
        if reference.shape[0] == 0:
            raise VideoFormatError("the sequence has no frames; pass at least one (T, 3, H, W) frame")

    def _ms_ssim(self, reference: Tensor, decoded: Tensor) -> Tensor:
        try:
            return F.ms_ssim(reference, decoded)
        except ValueError as err:
            height, width = reference.shape[-2:]
            raise VideoFormatError(
                f"MS-SSIM cannot score {width}x{height} frames ({err}); leave 'ms_ssim' out of the metrics"
            ) from None

    @torch.inference_mode()
    def __call__(self, reference: Tensor, decoded: Tensor) -> dict[str, Any]:
        """Score one sequence.

        Args:
            reference: ``(T, 3, H, W)`` original frames, float in [0, 1] or uint8.
            decoded: ``(T, 3, H, W)`` decoded frames, same size.

        Returns:
            ``{metric: mean over frames (FID: over the sequence's patches) or None if
            skipped, ..., "skipped": {metric: reason}, "frames": T, "fid_stats": (real, fake)
            FeatureStats of this call's patches, or None without FID}``.
        """
        self._check(reference, decoded)
        per_frame: dict[str, list[Tensor]] = {m: [] for m in self.metrics if m != "fid" and m not in self.skipped}
        fid_stats: tuple[FeatureStats, FeatureStats] | None = None
        for start in range(0, reference.shape[0], self.batch_size):
            ref = reference[start : start + self.batch_size].to(self.device)
            dec = decoded[start : start + self.batch_size].to(self.device)
            for name in per_frame:
                if name == "ms_ssim":
                    values = self._ms_ssim(ref, dec)
                elif name in _FRAME_METRICS:
                    values = _FRAME_METRICS[name](ref, dec)
                else:
                    values = self.networks[name](ref, dec)
                per_frame[name].append(values.detach().to("cpu", torch.float64))
            if "fid" in self.networks:
                real, fake = self.networks["fid"](ref), self.networks["fid"](dec)
                if fid_stats is None:
                    fid_stats = (FeatureStats.empty(real.shape[1]), FeatureStats.empty(fake.shape[1]))
                fid_stats[0].update(real)
                fid_stats[1].update(fake)

        result: dict[str, Any] = {m: None for m in self.metrics}
        for name, values in per_frame.items():
            result[name] = float(torch.cat(values).mean())
        if fid_stats is not None:
            result["fid"] = fid_from_stats(*fid_stats)
        result["skipped"] = dict(self.skipped)
        result["frames"] = int(reference.shape[0])
        result["fid_stats"] = fid_stats
        return result


def evaluate_sequence(
    reference: Tensor,
    decoded: Tensor,
    metrics: Sequence[str] = METRICS,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    skip_missing: bool = False,
    modules: Mapping[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Score one decoded sequence; see :class:`SequenceEvaluator` (which loads the networks
    once for many sequences).

    Args:
        reference: ``(T, 3, H, W)`` original frames, float in [0, 1] or uint8.
        decoded: ``(T, 3, H, W)`` decoded frames.
        metrics: names from :data:`METRICS`.
        device: computation device (default: CUDA if present, else CPU).
        batch_size: frames per device batch.
        skip_missing: report metrics with missing weights as None (reason under ``"skipped"``).
        modules: ready metric modules by name, instead of the pretrained ones.

    Returns:
        ``{metric: value or None, "skipped": {metric: reason}, "frames": T, "fid_stats":
        (real, fake) or None}``.
    """
    evaluator = SequenceEvaluator(metrics, device, batch_size, skip_missing, modules)
    return evaluator(reference, decoded)

"""Evaluation metrics: PSNR (RGB, Y), MS-SSIM, LPIPS, DISTS, FID/256 and BD metrics.

Layout (pure functions plus thin stateful wrappers):

- :mod:`~divinr.metrics.functional`: per-frame PSNR / PSNR-Y / MS-SSIM, FID patching and
  the Fréchet distance, all pure.
- :mod:`~divinr.metrics.perceptual`: LPIPS, DISTS and FID feature modules on locally cached
  weights (``pretrained=False`` gives random backbones for tests).
- :mod:`~divinr.metrics.evaluate`: the sequence evaluator (per-frame means, per-sequence FID
  and the FID statistics that pooled per-dataset FIDs are computed from).
- :mod:`~divinr.metrics.bd`: BD-rate / BD-metric (akima, pchip, cubic).
- :mod:`~divinr.metrics.names`: metric names, figure labels and directions, shared by all
  reports.
- :mod:`~divinr.metrics.weights`: the weight cache and ``python -m divinr.metrics.weights download``.

Names are imported on first use, so ``divinr.metrics.bd`` does not pay for torchmetrics,
lpips and torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bd_rate": "bd",
    "bd_metric": "bd",
    "BDWarning": "bd",
    "psnr_rgb": "functional",
    "psnr_y": "functional",
    "ms_ssim": "functional",
    "fid_patch_origins": "functional",
    "fid_patches": "functional",
    "frechet_distance": "functional",
    "LPIPSMetric": "perceptual",
    "DISTSMetric": "perceptual",
    "FIDMetric": "perceptual",
    "FeatureStats": "perceptual",
    "fid_from_stats": "perceptual",
    "pooled_fid": "perceptual",
    "save_fid_stats": "perceptual",
    "load_fid_stats": "perceptual",
    "FID_STATS_NAME": "perceptual",
    "METRICS": "evaluate",
    "REPORTED_METRICS": "names",
    "METRIC_LABELS": "names",
    "HIGHER_IS_BETTER": "names",
    "SequenceEvaluator": "evaluate",
    "available_metrics": "evaluate",
    "evaluate_sequence": "evaluate",
    "require_weight": "weights",
    "weights_dir": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

"""Names of the reported metrics, their labels and directions: one list for every module.

Kept free of heavy imports so that results readers, importers of published RD points and the
Table 1 script agree on the same names without loading torchmetrics or lpips.
"""

from __future__ import annotations

REPORTED_METRICS: tuple[str, ...] = ("psnr", "ms_ssim", "lpips", "dists", "fid")
"""Metrics of an RD point in results files, imported anchors and RD figures (PSNR-Y is extra)."""

METRIC_LABELS: dict[str, str] = {
    "psnr": "PSNR (dB)",
    "psnr_y": "PSNR-Y (dB)",
    "ms_ssim": "MS-SSIM",
    "lpips": "LPIPS",
    "dists": "DISTS",
    "fid": "FID/256",
}
"""Axis labels of the RD figures."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True,
    "psnr_y": True,
    "ms_ssim": True,
    "lpips": False,
    "dists": False,
    "fid": False,
}
"""Direction of each metric: BD sign conventions and the arrows of figure labels."""

"""Pure per-frame metric functions on RGB frames.

Frames are ``(N, 3, H, W)`` float tensors in [0, 1] (or uint8 0..255). Every function returns
one value per frame; averaging over frames, then over sequences, is the caller's job
(``divinr.metrics.evaluate``), because the protocol (BENCHMARKS.md) averages per-frame PSNR
rather than per-sequence MSE.

Fidelity metrics see the frames as an 8-bit video file would hold them: values are clamped to
[0, 1] and rounded to the 256 levels of 8-bit RGB before any comparison. A decoder's output
that never goes through a file is thereby scored like one that does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from divinr.data.video import KB, KG, KR, rgb_levels

#: BT.709 luma weights (R, G, B): the HD matrix the data pipeline uses for YUV <-> RGB.
BT709_LUMA = (KR, KG, KB)

#: FID/256 patch side (HiFiC; NeuralCompression's ``update_patch_fid``).
FID_PATCH = 256


def to_8bit_levels(frames: Tensor) -> Tensor:
    """Frames as 8-bit levels 0..255 in float64.

    Args:
        frames: ``(N, 3, H, W)`` float in [0, 1] (clamped, then rounded) or uint8.

    Returns:
        Same shape, float64 integers in [0, 255].
    """
    if frames.dtype == torch.uint8:
        return frames.to(torch.float64)
    return rgb_levels(frames)


def to_unit_range(frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Frames quantised to 8-bit and scaled back to [0, 1] (the input of the network metrics)."""
    return (to_8bit_levels(frames) / 255.0).to(dtype)


def _psnr_from_levels(reference: Tensor, decoded: Tensor, smallest_error: float = 1.0) -> Tensor:
    """Per-frame PSNR, peak 255; an identical frame scores as ``smallest_error`` in one sample.

    PSNR of an exact frame is +inf, which would make the per-sequence mean inf and drop the
    point from every curve. Such a frame is instead given the MSE of an error of
    ``smallest_error`` levels in one sample of the frame.
    """
    mse = (reference - decoded).square().flatten(1).mean(dim=1)
    floor = smallest_error**2 / reference.shape[1:].numel()
    return 10.0 * torch.log10(255.0**2 / torch.where(mse > 0, mse, floor))


def psnr_rgb(reference: Tensor, decoded: Tensor) -> Tensor:
    """PSNR of 8-bit RGB per frame, MSE over all three channels, peak 255.

    Args:
        reference: ``(N, 3, H, W)`` original frames.
        decoded: ``(N, 3, H, W)`` reconstructed frames.

    Returns:
        ``(N,)`` float64 PSNR in dB; an identical frame gets ``10 log10(255^2 * 3HW)``, the
        score of one level of error in one sample, the smallest error an 8-bit frame can have:
        no lossy frame scores above an exact one.

    Example:
        >>> ref = torch.zeros(1, 3, 2, 2)
        >>> round(float(psnr_rgb(ref, ref + 1 / 255)[0]), 2)
        48.13
    """
    return _psnr_from_levels(to_8bit_levels(reference), to_8bit_levels(decoded))


def luma_bt709(levels: Tensor) -> Tensor:
    """Full-range BT.709 luma of 8-bit RGB levels, unrounded: ``(N, 3, H, W) -> (N, H, W)``.

    Y is left in float (not re-quantised to 8 bits, no limited-range offset) so that PSNR-Y
    measures the RGB error seen through the luma weights and nothing else.
    """
    weights = torch.tensor(BT709_LUMA, dtype=levels.dtype, device=levels.device)
    return torch.einsum("nchw,c->nhw", levels, weights)


def psnr_y(reference: Tensor, decoded: Tensor) -> Tensor:
    """PSNR of full-range BT.709 luma computed from 8-bit RGB, peak 255, per frame.

    Args:
        reference: ``(N, 3, H, W)`` original frames.
        decoded: ``(N, 3, H, W)`` reconstructed frames.

    Returns:
        ``(N,)`` float64 PSNR in dB; an identical frame gets ``10 log10(255^2 HW / KB^2)``, the
        score of one level of error in the blue channel of one pixel, the smallest luma error
        a single-sample change makes. (Unrounded luma lets errors in several channels cancel
        to less than that, so unlike RGB this is not a strict ceiling.)
    """
    ref, dec = luma_bt709(to_8bit_levels(reference)), luma_bt709(to_8bit_levels(decoded))
    return _psnr_from_levels(ref, dec, smallest_error=min(BT709_LUMA))


def ms_ssim(reference: Tensor, decoded: Tensor) -> Tensor:
    """MS-SSIM of 8-bit RGB per frame (torchmetrics defaults: 5 scales, Gaussian 11 / 1.5).

    torchmetrics' default ``normalize="relu"`` clamps negative contrast terms as
    pytorch_msssim (used by the HiNeRV and DCVC evaluations) does.

    Args:
        reference: ``(N, 3, H, W)`` original frames; both sides must exceed 160 pixels.
        decoded: ``(N, 3, H, W)`` reconstructed frames.

    Returns:
        ``(N,)`` float MS-SSIM in [0, 1] (1 for identical frames).
    """
    # Imported here: torchmetrics takes seconds to import and PSNR-only callers never need it.
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return multiscale_structural_similarity_index_measure(
        to_unit_range(decoded), to_unit_range(reference), data_range=1.0, reduction="none"
    )


def fid_patch_origins(height: int, width: int, patch: int = FID_PATCH) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the FID/256 patches of one frame.

    Non-overlapping ``patch`` x ``patch`` tiles from the corner (remainders dropped), then,
    when both sides are at least 1.5 ``patch``, the same tiling of the frame shifted by
    ``patch // 2`` in both directions. 1024x576 gives 4 x 2 + 3 x 1 = 11 patches.

    Args:
        height: frame height.
        width: frame width.
        patch: patch side.

    Returns:
        Row-major list of ``(y, x)``, unshifted grid first.

    Example:
        >>> len(fid_patch_origins(576, 1024))
        11
    """

    def grid(offset: int) -> list[tuple[int, int]]:
        rows = range(offset, height - patch + 1, patch)
        cols = range(offset, width - patch + 1, patch)
        return [(y, x) for y in rows for x in cols]

    origins = grid(0)
    if 2 * height >= 3 * patch and 2 * width >= 3 * patch:
        origins += grid(patch // 2)
    return origins


def fid_patches(frames: Tensor, patch: int = FID_PATCH) -> Tensor:
    """Cut every frame into its FID/256 patches, as 8-bit uint8 (the Inception's input).

    Args:
        frames: ``(N, 3, H, W)`` float in [0, 1] or uint8.
        patch: patch side.

    Returns:
        ``(N * P, 3, patch, patch)`` uint8, frame-major, patches of a frame in
        :func:`fid_patch_origins` order.
    """
    levels = to_8bit_levels(frames).to(torch.uint8)
    origins = fid_patch_origins(levels.shape[-2], levels.shape[-1], patch)
    crops = [levels[:, :, y : y + patch, x : x + patch] for y, x in origins]
    return torch.stack(crops, dim=1).flatten(0, 1) if crops else levels.new_empty(0, 3, patch, patch)


def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet distance between two Gaussians (the FID formula).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``; the last trace is taken
    as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S_a^(1/2) S_b S_a^(1/2)``, which has the same spectrum as ``S_a S_b`` but keeps
    rounding errors real.

    Args:
        mean_a: ``(D,)`` mean of the first set.
        cov_a: ``(D, D)`` covariance of the first set.
        mean_b: ``(D,)`` mean of the second set.
        cov_b: ``(D, D)`` covariance of the second set.

    Returns:
        The distance (>= 0 up to rounding).
    """
    mean_a, cov_a, mean_b, cov_b = (t.to(torch.float64) for t in (mean_a, cov_a, mean_b, cov_b))
    evals, evecs = torch.linalg.eigh(cov_a)
    root_a = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * cross
    return float(distance)

"""Network-based metrics: LPIPS, DISTS and the feature side of FID/256.

Each metric is an ``nn.Module`` whose backbone is built with ``weights=None`` and filled from
the local cache (:mod:`divinr.metrics.weights`), so nothing is downloaded at run time.
``pretrained=False`` keeps the backbone randomly initialised: that is for tests only (the
properties checked there, identity, symmetry, monotonicity, hold for any backbone); its
numbers mean nothing.

Inputs are ``(N, 3, H, W)`` frames in [0, 1] (or uint8), quantised to 8 bits first like the
fidelity metrics in :mod:`divinr.metrics.functional`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lpips
import numpy as np
import torch
from torch import Tensor, nn

from divinr.atomic import atomic_write_bytes
from divinr.errors import DivinrError, VideoFormatError
from divinr.metrics.functional import FID_PATCH, fid_patches, frechet_distance, to_unit_range
from divinr.metrics.weights import require_weight


def _load_state(name: str) -> dict[str, Tensor]:
    return torch.load(require_weight(name), map_location="cpu", weights_only=True)


def _with_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class LPIPSMetric(nn.Module):
    """LPIPS v0.1 with AlexNet (the ``lpips`` package default), inputs mapped to [-1, 1].

    Args:
        pretrained: load the ImageNet AlexNet from the weight cache; False keeps it random
            (test-only). The linear heads always come from the ``lpips`` package.
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        alexnet_state = _load_state("alexnet") if pretrained else None
        with warnings.catch_warnings():
            # lpips builds its backbone with torchvision's deprecated ``pretrained=`` argument;
            # pnet_rand=True makes that ``weights=None``: we fill the weights ourselves below.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.net = lpips.LPIPS(
                net="alex",
                version="0.1",
                pretrained=True,
                pnet_rand=True,
                model_path=str(require_weight("lpips_alex_v0.1")),
                verbose=False,
            )
        if alexnet_state is not None:
            # lpips' slices hold torchvision's AlexNet ``features`` layers under their original
            # indices, so checkpoint key ``features.<i>.<p>`` belongs to slice child ``<i>``.
            for stage in self.net.net.children():
                for index, layer in stage.named_children():
                    layer.load_state_dict(_with_prefix(alexnet_state, f"features.{index}."))
        self.requires_grad_(False).eval()

    def forward(self, reference: Tensor, decoded: Tensor) -> Tensor:
        """LPIPS per frame.

        Args:
            reference: ``(N, 3, H, W)`` original frames.
            decoded: ``(N, 3, H, W)`` reconstructed frames.

        Returns:
            ``(N,)`` distances (0 for identical frames).
        """
        ref = to_unit_range(reference) * 2 - 1
        dec = to_unit_range(decoded) * 2 - 1
        return self.net(ref, dec).flatten()


class _L2Pool(nn.Module):
    """DISTS' replacement for VGG max-pooling: sqrt of a Hann-blurred, stride-2 square."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor(np.hanning(5)[1:-1], dtype=torch.float32)
        window = torch.outer(taps, taps)
        window = (window / window.sum()).expand(channels, 1, 3, 3).contiguous()
        # Not persistent: the VGG16 checkpoint has nothing for these layers.
        self.register_buffer("window", window, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        blurred = nn.functional.conv2d(x.square(), self.window, stride=2, padding=1, groups=x.shape[1])
        return (blurred + 1e-12).sqrt()


# VGG16 ``features`` up to relu5_3: conv widths, "P" where torchvision has a max-pool.
_VGG16_LAYOUT = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512)


def _dists_backbone() -> nn.Sequential:
    """VGG16 ``features[:30]`` with torchvision's layer indices, max-pools as L2 pooling."""
    layers: list[nn.Module] = []
    channels = 3
    for width in _VGG16_LAYOUT:
        if width == "P":
            layers.append(_L2Pool(channels))
        else:
            layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU()]
            channels = int(width)
    return nn.Sequential(*layers)


class DISTSMetric(nn.Module):
    """DISTS (Ding et al. 2020) on torchvision VGG16, at the input resolution (no resize).

    The input image itself and the five VGG16 stages (relu1_2 ... relu5_3, max-pools replaced
    by L2 pooling) are compared by per-channel mean (texture) and correlation (structure)
    terms weighted by the published alpha/beta (shipped with torchmetrics). Covariances are
    computed centred, so identical inputs give exactly 1 for both terms.

    Args:
        pretrained: load the ImageNet VGG16 from the weight cache; False keeps it random
            (test-only). alpha/beta are always the published ones.
    """

    _TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    _CHANNELS = (3, 64, 128, 256, 512, 512)
    _C1 = _C2 = 1e-6

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        self.backbone = _dists_backbone()
        if pretrained:
            self.backbone.load_state_dict(_with_prefix(_load_state("vgg16"), "features."))
        ab = _load_state("dists_alpha_beta")
        self.register_buffer("alpha", ab["alpha"].flatten().float())
        self.register_buffer("beta", ab["beta"].flatten().float())
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _features(self, x: Tensor) -> list[Tensor]:
        feats = [x]
        h = (x - self.mean) / self.std
        for index, layer in enumerate(self.backbone):
            h = layer(h)
            if index in self._TAPS:
                feats.append(h)
        return feats

    def forward(self, reference: Tensor, decoded: Tensor) -> Tensor:
        """DISTS per frame.

        Args:
            reference: ``(N, 3, H, W)`` original frames.
            decoded: ``(N, 3, H, W)`` reconstructed frames.

        Returns:
            ``(N,)`` distances (0 for identical frames, up to rounding).
        """
        ref = to_unit_range(reference)
        dec = to_unit_range(decoded)
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, self._CHANNELS)
        betas = torch.split(self.beta / total, self._CHANNELS)
        score = torch.zeros(ref.shape[0], device=ref.device)
        for fx, fy, alpha, beta in zip(self._features(ref), self._features(dec), alphas, betas):
            mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
            dx, dy = fx - mx[..., None, None], fy - my[..., None, None]
            vx, vy = dx.square().mean(dim=(2, 3)), dy.square().mean(dim=(2, 3))
            cov = (dx * dy).mean(dim=(2, 3))
            texture = (2 * mx * my + self._C1) / (mx.square() + my.square() + self._C1)
            structure = (2 * cov + self._C2) / (vx + vy + self._C2)
            score = score + texture @ alpha + structure @ beta
        return 1.0 - score


@dataclass
class FeatureStats:
    """Running first and second moments of feature vectors (float64), mergeable.

    Sums rather than means are kept so statistics of several sequences add up exactly to
    the statistics of their union: the pooled per-dataset FID.
    """

    total: Tensor
    outer: Tensor
    count: int = 0

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """Statistics of no sample, for ``dim``-dimensional features."""
        return cls(torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def update(self, features: Tensor) -> None:
        """Add ``(N, D)`` feature vectors."""
        f = features.detach().to(device="cpu", dtype=torch.float64)
        self.total += f.sum(dim=0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def merge(self, other: FeatureStats) -> None:
        """Add the samples summarised by ``other``."""
        self.total += other.total
        self.outer += other.outer
        self.count += other.count

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        """Sample mean and unbiased covariance (needs at least 2 samples)."""
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, cov


    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The sums as float64 arrays named ``<prefix>_count/_total/_outer``; the symmetric outer
        sum keeps only its upper triangle (half the bytes of a 2048x2048 float64 matrix)."""
        rows, cols = np.triu_indices(self.total.shape[0])
        return {
            f"{prefix}_count": np.array(self.count, dtype=np.int64),
            f"{prefix}_total": self.total.numpy(),
            f"{prefix}_outer": self.outer.numpy()[rows, cols],
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> FeatureStats:
        """Inverse of :meth:`arrays`."""
        total = np.asarray(arrays[f"{prefix}_total"], dtype=np.float64)
        rows, cols = np.triu_indices(total.shape[0])
        outer = np.zeros((total.shape[0], total.shape[0]))
        outer[rows, cols] = arrays[f"{prefix}_outer"]
        outer[cols, rows] = arrays[f"{prefix}_outer"]
        return cls(torch.from_numpy(total), torch.from_numpy(outer), int(arrays[f"{prefix}_count"]))


#: File beside a ``results.json`` that holds the FID statistics of that point.
FID_STATS_NAME = "fid_stats.npz"


def save_fid_stats(path: str | Path, real: FeatureStats, fake: FeatureStats) -> None:
    """Write the reference and decoded FID statistics of one point atomically, so pooled FIDs
    over any set of sequences can be computed later without re-running Inception.

    Args:
        path: destination ``.npz``.
        real: statistics of the reference patches.
        fake: statistics of the decoded patches.
    """
    buffer = io.BytesIO()
    np.savez(buffer, **real.arrays("real"), **fake.arrays("fake"))
    atomic_write_bytes(path, buffer.getvalue())


def load_fid_stats(path: str | Path) -> tuple[FeatureStats, FeatureStats]:
    """Read what :func:`save_fid_stats` wrote.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(real, fake)`` statistics.

    Raises:
        DivinrError: the file is missing or not FID statistics.
    """
    try:
        with np.load(path) as data:
            arrays = dict(data)
        return FeatureStats.from_arrays(arrays, "real"), FeatureStats.from_arrays(arrays, "fake")
    except (OSError, ValueError, KeyError) as exc:
        raise DivinrError(f"cannot read FID statistics {path} ({exc}); re-run the point to rewrite it") from None


def pooled_fid(pairs: Iterable[tuple[FeatureStats, FeatureStats]]) -> float:
    """FID of the union of the patches of several sequences (the per-dataset FID).

    Args:
        pairs: ``(real, fake)`` statistics per sequence, as :class:`SequenceEvaluator` returns them.

    Returns:
        The FID of the merged statistics; NaN when there is nothing or fewer than 2 patches.
    """
    merged: tuple[FeatureStats, FeatureStats] | None = None
    for real, fake in pairs:
        if merged is None:
            dim = real.total.shape[0]
            merged = (FeatureStats.empty(dim), FeatureStats.empty(dim))
        merged[0].merge(real)
        merged[1].merge(fake)
    return float("nan") if merged is None else fid_from_stats(*merged)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two feature statistics.

    Args:
        real: statistics of the reference patches.
        fake: statistics of the decoded patches.

    Returns:
        The Fréchet distance, or NaN when either side has fewer than 2 patches.
    """
    if real.count < 2 or fake.count < 2:
        return float("nan")
    return frechet_distance(*real.mean_cov(), *fake.mean_cov())


class _TinyFeatures(nn.Module):
    """A small random conv net standing in for Inception in tests (uint8 in, 32-d out)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, patches: Tensor) -> Tensor:
        return self.net(patches.float() / 127.5 - 1.0)


class FIDMetric(nn.Module):
    """Feature side of FID/256: patches of each frame through torchmetrics' FID Inception.

    The Inception is torchmetrics' ``NoTrainInceptionV3("inception-v3-compat", ["2048"])``
    (uint8 input resized to 299 inside), loaded from the weight cache.

    Args:
        pretrained: use the FID Inception; False uses a small random conv net (test-only;
            its FID values are not comparable with anything).
        feature_extractor: any module mapping uint8 ``(P, 3, patch, patch)`` to ``(P, D)``;
            overrides ``pretrained``.
        patch: patch side (256 for FID/256; smaller only in tests).
    """

    def __init__(self, pretrained: bool = True, feature_extractor: nn.Module | None = None, patch: int = FID_PATCH):
        super().__init__()
        if feature_extractor is None:
            feature_extractor = self._inception() if pretrained else _TinyFeatures()
        self.extractor = feature_extractor.requires_grad_(False).eval()
        self.patch = patch

    @staticmethod
    def _inception() -> nn.Module:
        # Imported here: torchmetrics takes seconds to import and only real FID runs need it.
        from torchmetrics.image.fid import NoTrainInceptionV3

        path = str(require_weight("inception_fid"))
        return NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=path
        )

    def forward(self, frames: Tensor) -> Tensor:
        """Features of all FID patches of ``frames``.

        Args:
            frames: ``(N, 3, H, W)`` frames in [0, 1] or uint8.

        Returns:
            ``(N * P, D)`` features, P patches per frame.

        Raises:
            VideoFormatError: a frame is smaller than one patch.
        """
        height, width = frames.shape[-2:]
        if height < self.patch or width < self.patch:
            raise VideoFormatError(
                f"frames of {width}x{height} are smaller than the {self.patch}x{self.patch} FID patch; "
                "evaluate FID on larger frames or leave 'fid' out of the metrics"
            )
        device = next(self.extractor.parameters()).device
        return self.extractor(fid_patches(frames, self.patch).to(device))

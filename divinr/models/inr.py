"""HiNeRV-like implicit neural representation that maps a time coordinate to latent conditioning.

DiV-INR (Sec. 3.1) represents a whole sequence by an INR ``g(f) -> (y_f, M_f)``: for a
normalised temporal coordinate ``f`` in [0, 1] it returns a latent-space conditioning frame
``y_f`` (16 channels, the normalised Wan2.1 VAE latent it imitates) and a confidence mask
``M_f`` (4 channels in [0, 1]) at the latent resolution ``H' x W'`` (``H/8 x W/8``). Its
weights are the main part of the bitstream, so the architecture is fully described by an
:class:`INRConfig` of plain integers that the bitstream stores and the decoder rebuilds.

Data flow (one batch of ``N`` coordinates, one forward pass)::

    f (N,) --temporal lerp--> base grid levels, summed       (N, Cg, h0, w0)
          --stem 3x3 conv-->                                  (N, C, h0, w0)
          for each stage i (stride s_i):
            LayerNorm (no affine) -> linear C_in->C_i -> bilinear x s_i
            + local grid encoding: lerp(f) of a (T_l, C_l, s_i, s_i) grid, linear to C_i,
              tiled over every s_i x s_i upsampling cell (HiNeRV's hierarchical encoding)
            crop to ceil(H / remaining stride) x ceil(W / remaining stride)
            ConvNeXt blocks (dw 3x3, LayerNorm, MLP x expansion with GELU, residual)
          --head--> INROutput(y, m)                           (N, 16, H', W'), (N, 4, H', W')

The base grid has ``grid_levels`` temporal levels; level ``l`` holds
``max(2, ceil(grid_frames / 2**l))`` frames of the same shape and the levels are summed, so
coarse levels share information across distant frames cheaply while the finest level keeps
per-frame detail. ``h0 = ceil(H / prod(strides))``; the surplus of the last upsampling is
cropped away stage by stage (top-left), so any output size is reachable.

Grid length and sequence length: presets are sized for :data:`REFERENCE_LATENT_FRAMES`
(150 latent frames = a 600-frame UVG sequence). ``inr_config(preset, num_latent_frames=n)``
scales the preset's ``grid_frames`` and ``local_grid_frames`` by ``n / 150`` so that the grid
keeps the same number of grid frames per video frame; the resulting absolute sizes are what
:class:`INRConfig` stores.

Reference: HiNeRV (Kwan et al., NeurIPS 2023), used by DiV-INR as its INR backbone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from divinr.errors import PresetError, unknown_choice

REFERENCE_LATENT_FRAMES = 150
"""Number of latent frames the presets' grid sizes are chosen for (600 frames, UVG)."""

# Head outputs start at this fraction of PyTorch's default init scale, so y starts near 0 (the
# normalised latent mean) and the mask near sigmoid(0) = 0.5, without cutting the gradient
# path to the rest of the network as an all-zero head would.
_HEAD_INIT_SCALE = 0.1
# Grids are the network's only input, so they start random. Unit variance makes a local grid
# encoding, after its default-initialised projection, about as large as the normalised stage
# features it is added to, so the hierarchical encoding shapes the output from the first
# step (the base grid's scale is irrelevant: a LayerNorm follows the stem).
_GRID_INIT_STD = 1.0


@dataclass(frozen=True)
class INRConfig:
    """Architecture hyperparameters of a :class:`LatentINR`, all plain ints/strs/tuples.

    Attributes:
        channels: width of the stem conv (input width of the first stage).
        stage_channels: output width of each stage.
        strides: spatial upsampling factor of each stage (same on both axes); their product is
            the total upsampling from the base grid to the output.
        blocks: number of ConvNeXt blocks in each stage.
        grid_frames: temporal length of the finest base-grid level (absolute).
        grid_channels: channels of the base grid.
        grid_levels: number of temporal base-grid levels (each halves the frame count).
        local_grid_frames: temporal length of every stage's local grid (absolute).
        local_grid_channels: channels of every stage's local grid before its projection.
        expansion: ConvNeXt MLP expansion ratio.
        out_channels: channels of y (latent head only).
        mask_channels: channels of the mask M (latent head only).
        head: output head, a key of :data:`INR_HEADS` ("latent" or "rgb").
    """

    channels: int
    stage_channels: tuple[int, ...]
    strides: tuple[int, ...]
    blocks: tuple[int, ...]
    grid_frames: int
    grid_channels: int
    grid_levels: int = 2
    local_grid_frames: int = 4
    local_grid_channels: int = 16
    expansion: int = 4
    out_channels: int = 16
    mask_channels: int = 4
    head: str = "latent"

    def __post_init__(self) -> None:
        ints = {
            "channels": self.channels,
            "grid_channels": self.grid_channels,
            "grid_levels": self.grid_levels,
            "local_grid_channels": self.local_grid_channels,
            "expansion": self.expansion,
            "out_channels": self.out_channels,
            "mask_channels": self.mask_channels,
        }
        for name, value in ints.items():
            _check_int(name, value, minimum=1)
        _check_int("grid_frames", self.grid_frames, minimum=2)
        _check_int("local_grid_frames", self.local_grid_frames, minimum=2)
        tuples = {"stage_channels": self.stage_channels, "strides": self.strides, "blocks": self.blocks}
        for name, value in tuples.items():
            if not isinstance(value, tuple) or not value:
                raise PresetError(f"INR {name} must be a non-empty tuple of ints, got {value!r}")
            for item in value:
                _check_int(name, item, minimum=0 if name == "blocks" else 1)
        if not len(self.stage_channels) == len(self.strides) == len(self.blocks):
            raise PresetError(
                "INR stage_channels, strides and blocks must have one entry per stage, got lengths "
                f"{len(self.stage_channels)}, {len(self.strides)}, {len(self.blocks)}"
            )
        if self.head not in INR_HEADS:
            raise unknown_choice("INR head", self.head, list(INR_HEADS))

    @property
    def total_stride(self) -> int:
        """Upsampling factor from the base grid to the output."""
        return math.prod(self.strides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (ints, str, tuples of ints) for the bitstream header."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> INRConfig:
        """Rebuild a config from :meth:`to_dict` output (lists are accepted for tuples).

        Raises:
            PresetError: on unknown or missing fields or invalid values.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise PresetError(
                f"unknown INR config fields {sorted(unknown)}; expected a subset of {sorted(names)}"
            )
        coerced = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        try:
            return cls(**coerced)
        except TypeError as error:
            raise PresetError(f"incomplete INR config: {error}") from None


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int) -> None:
    # Exactly int, so that to_dict() stays plain for the bitstream header.
    if type(value) is not int or value < minimum:
        raise PresetError(f"INR {name} must be an int >= {minimum}, got {value!r}")


def lerp_grid(grid: Tensor, f: Tensor) -> Tensor:
    """Linearly interpolate a temporal grid at normalised times.

    Grid frame ``i`` sits at ``f = i / (T - 1)``, so ``f = 0`` and ``f = 1`` hit the first and
    last frames exactly; ``f`` outside [0, 1] is clamped.

    Args:
        grid: (T, ...) with T >= 2.
        f: (N,) times.

    Returns:
        (N, ...) interpolated grid frames.
    """
    frames = grid.shape[0]
    position = f.clamp(0.0, 1.0).to(grid.dtype) * (frames - 1)
    lower = position.floor().clamp(max=frames - 2).long()
    weight = (position - lower).view(-1, *([1] * (grid.dim() - 1)))
    return torch.lerp(grid[lower], grid[lower + 1], weight)


class TemporalGrid(nn.Module):
    """Learned multi-level temporal feature grid ``(T, C, h, w)`` read at time ``f``.

    Level ``l`` has ``max(2, ceil(frames / 2**l))`` frames; the interpolated levels are summed.
    """

    def __init__(self, frames: int, channels: int, height: int, width: int, levels: int = 1) -> None:
        super().__init__()
        shapes = [(max(2, math.ceil(frames / 2**level)), channels, height, width) for level in range(levels)]
        self.levels = nn.ParameterList(nn.Parameter(torch.randn(shape) * _GRID_INIT_STD) for shape in shapes)

    def forward(self, f: Tensor) -> Tensor:
        """Return the grid at times ``f`` (N,) as (N, C, h, w)."""
        # Index rather than slice: slicing a parametrised ParameterList (Quant-Noise) re-wraps the
        # computed tensors as new leaf Parameters and cuts the gradient to every level but the first.
        out = lerp_grid(self.levels[0], f)
        for level in range(1, len(self.levels)):
            out = out + lerp_grid(self.levels[level], f)
        return out


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (N, C, H, W) over C."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 3x3, LayerNorm, pointwise MLP with GELU, residual."""

    def __init__(self, channels: int, expansion: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pw1 = nn.Linear(channels, expansion * channels)
        self.pw2 = nn.Linear(expansion * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """Map (N, C, H, W) to the same shape."""
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + h.permute(0, 3, 1, 2)


class LocalGridEncoding(nn.Module):
    """HiNeRV's hierarchical encoding in a simple form: a temporal grid over the positions of
    one ``stride x stride`` upsampling cell, projected to the stage width and repeated over
    every cell, so each stage can add time-varying sub-cell detail at almost no parameter cost.
    """

    def __init__(self, frames: int, channels: int, stride: int, out_channels: int) -> None:
        super().__init__()
        self.grid = TemporalGrid(frames, channels, stride, stride)
        self.proj = nn.Linear(channels, out_channels)

    def forward(self, f: Tensor) -> Tensor:
        """Return the encoding of one cell, (N, out_channels, stride, stride)."""
        local = self.grid(f).permute(0, 2, 3, 1)
        return self.proj(local).permute(0, 3, 1, 2)


class UpsampleStage(nn.Module):
    """One decoder stage: normalise, project, upsample, add local encoding, crop, ConvNeXt."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, blocks: int, config: INRConfig
    ) -> None:
        super().__init__()
        self.stride = stride
        # Non-affine: a learned scale here would be redundant with the projection that follows.
        self.norm = ChannelLayerNorm(in_channels, elementwise_affine=False)
        # Projecting before the (linear, per-channel) interpolation is equivalent to projecting
        # after it, at stride**2 less compute.
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.encoding = LocalGridEncoding(
            config.local_grid_frames, config.local_grid_channels, stride, out_channels
        )
        self.blocks = nn.Sequential(*(ConvNeXtBlock(out_channels, config.expansion) for _ in range(blocks)))

    def forward(self, x: Tensor, f: Tensor, size: tuple[int, int]) -> Tensor:
        """Upsample (N, C_in, h, w) to (N, C_out, *size); ``size`` <= (h, w) * stride."""
        x = self.proj(self.norm(x))
        n, c, h, w = x.shape
        s = self.stride
        if s > 1:
            x = F.interpolate(x, size=(h * s, w * s), mode="bilinear", align_corners=False)
        # Broadcast-add the cell encoding to every s x s cell without materialising the tiling.
        cell = self.encoding(f).view(n, c, 1, s, 1, s)
        x = (x.view(n, c, h, s, w, s) + cell).view(n, c, h * s, w * s)
        return self.blocks(x[:, :, : size[0], : size[1]])


class INROutput(NamedTuple):
    """What an INR head returns.

    Attributes:
        y: latent conditioning (N, out_channels, H', W') for the latent head; RGB frames in
            [0, 1] (N, 3, H, W) for the rgb head.
        m: confidence mask in [0, 1] (N, mask_channels, H', W'); None for the rgb head.
    """

    y: Tensor
    m: Tensor | None


def _shrink_init(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.mul_(_HEAD_INIT_SCALE)
        layer.bias.zero_()


class LatentHead(nn.Module):
    """1x1 convs to the latent y (unbounded) and the mask M (sigmoid), after a LayerNorm."""

    def __init__(self, in_channels: int, config: INRConfig) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(in_channels, elementwise_affine=False)
        self.to_y = nn.Conv2d(in_channels, config.out_channels, 1)
        self.to_m = nn.Conv2d(in_channels, config.mask_channels, 1)
        _shrink_init(self.to_y)
        _shrink_init(self.to_m)

    def forward(self, x: Tensor) -> INROutput:
        """Map decoder features (N, C, H', W') to ``INROutput(y, m)``."""
        x = self.norm(x)
        return INROutput(self.to_y(x), torch.sigmoid(self.to_m(x)))


class RGBHead(nn.Module):
    """1x1 conv to RGB with a sigmoid, for a pixel-space HiNeRV baseline (starts mid-grey)."""

    def __init__(self, in_channels: int, config: INRConfig) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(in_channels, elementwise_affine=False)
        self.to_rgb = nn.Conv2d(in_channels, 3, 1)
        _shrink_init(self.to_rgb)

    def forward(self, x: Tensor) -> INROutput:
        """Map decoder features (N, C, H, W) to ``INROutput(rgb, None)``."""
        return INROutput(torch.sigmoid(self.to_rgb(self.norm(x))), None)


INR_HEADS: dict[str, type[nn.Module]] = {"latent": LatentHead, "rgb": RGBHead}


INR_PRESETS: dict[str, INRConfig] = {
    # Parameters at 1024x576 (72x128 latent, 9x16 base grid) for 150 latent frames: xxs 99K,
    # xs 196K, s 389K, m 830K, l 1.46M, xl 2.53M. grid_frames/local_grid_frames are for 150
    # latent frames; inr_config(..., num_latent_frames=n) rescales them.
    "xxs": INRConfig(
        channels=64, stage_channels=(48, 32, 24), strides=(2, 2, 2), blocks=(1, 1, 1),
        grid_frames=20, grid_channels=12, local_grid_frames=4, local_grid_channels=8,
    ),
    "xs": INRConfig(
        channels=96, stage_channels=(64, 40, 24), strides=(2, 2, 2), blocks=(2, 1, 1),
        grid_frames=24, grid_channels=16, local_grid_frames=6, local_grid_channels=12,
    ),
    "s": INRConfig(
        channels=128, stage_channels=(96, 56, 32), strides=(2, 2, 2), blocks=(2, 2, 1),
        grid_frames=30, grid_channels=20, local_grid_frames=8, local_grid_channels=16,
    ),
    "m": INRConfig(
        channels=160, stage_channels=(128, 80, 40), strides=(2, 2, 2), blocks=(3, 2, 1),
        grid_frames=38, grid_channels=28, local_grid_frames=10, local_grid_channels=16,
    ),
    "l": INRConfig(
        channels=192, stage_channels=(160, 96, 48), strides=(2, 2, 2), blocks=(4, 2, 1),
        grid_frames=50, grid_channels=32, local_grid_frames=12, local_grid_channels=24,
    ),
    "xl": INRConfig(
        channels=224, stage_channels=(208, 128, 64), strides=(2, 2, 2), blocks=(4, 3, 1),
        grid_frames=60, grid_channels=40, local_grid_frames=16, local_grid_channels=32,
    ),
}


def inr_config(preset: str, num_latent_frames: int | None = None, **overrides: Any) -> INRConfig:
    """Look up a preset, scale its grids to the sequence length and apply overrides.

    Args:
        preset: a key of :data:`INR_PRESETS`.
        num_latent_frames: latent frames of the sequence the INR represents; when given, the
            preset's ``grid_frames`` and ``local_grid_frames`` (chosen for
            :data:`REFERENCE_LATENT_FRAMES`) are scaled by ``num_latent_frames / 150``
            (at least 2 each). ``None`` keeps the preset's absolute sizes.
        **overrides: INRConfig fields that replace the (scaled) preset values.

    Returns:
        The resolved config.

    Raises:
        PresetError: unknown preset or invalid values.
    """
    if preset not in INR_PRESETS:
        raise unknown_choice("INR preset", preset, list(INR_PRESETS))
    config = INR_PRESETS[preset]
    if num_latent_frames is not None:
        _check_int("num_latent_frames", num_latent_frames, minimum=1)
        ratio = num_latent_frames / REFERENCE_LATENT_FRAMES
        config = dataclasses.replace(
            config,
            grid_frames=max(2, round(config.grid_frames * ratio)),
            local_grid_frames=max(2, round(config.local_grid_frames * ratio)),
        )
    unknown = set(overrides) - {field.name for field in dataclasses.fields(INRConfig)}
    if unknown:
        raise PresetError(f"unknown INR config fields {sorted(unknown)}; check the override names")
    return dataclasses.replace(config, **overrides)


def fit_strides(config: INRConfig, output_size: tuple[int, int]) -> INRConfig:
    """``config`` with its first strides set to 1 until the total stride fits ``output_size``.

    Every preset upsamples by 8, more than a latent of frames under 64 px has cells; keeping the
    later (finer) upsamplings keeps the most of the architecture.
    """
    strides = list(config.strides)
    for i in range(len(strides)):
        if math.prod(strides) <= min(output_size):
            break
        strides[i] = 1
    return dataclasses.replace(config, strides=tuple(strides))


def planned_inr(
    preset: str, overrides: Mapping[str, Any], num_latent_frames: int, latent_size: tuple[int, int]
) -> INRConfig:
    """The INR a sequence is coded with: the preset for its length, with ``overrides``; unless the
    overrides set strides, the strides are fitted to the latent (:func:`fit_strides`)."""
    config = inr_config(preset, num_latent_frames=num_latent_frames, **overrides)
    return config if "strides" in overrides else fit_strides(config, latent_size)


class LatentINR(nn.Module):
    """HiNeRV-like INR ``g(f) -> INROutput(y, m)`` for one whole sequence.

    Args:
        config: architecture.
        output_size: (H, W) of the output: the latent size (H/8, W/8) for the latent head,
            the pixel size for the rgb head.

    Raises:
        PresetError: non-positive output size, or a total stride larger than the output (the
            base grid would be smaller than one cell and most of the decoder wasted).
    """

    def __init__(self, config: INRConfig, output_size: tuple[int, int]) -> None:
        super().__init__()
        if len(output_size) != 2 or not all(_is_integer(side) and side > 0 for side in output_size):
            raise PresetError(f"INR output size must be two positive ints (H, W), got {output_size!r}")
        height, width = (int(side) for side in output_size)
        if config.total_stride > min(height, width):
            raise PresetError(
                f"INR strides {config.strides} upsample by {config.total_stride}, more than the output size "
                f"{height}x{width}; use fewer or smaller strides"
            )
        self.config = config
        self.output_size = (height, width)
        # Stage i ends at ceil(size / product of the later strides): never more than one base
        # cell of surplus is carried, and the last stage ends exactly at the output size.
        later_strides = [math.prod(config.strides[i + 1 :]) for i in range(len(config.strides))]
        self.stage_sizes = [(math.ceil(height / r), math.ceil(width / r)) for r in later_strides]
        base_h = math.ceil(height / config.total_stride)
        base_w = math.ceil(width / config.total_stride)
        self.base_grid = TemporalGrid(
            config.grid_frames, config.grid_channels, base_h, base_w, config.grid_levels
        )
        self.stem = nn.Conv2d(config.grid_channels, config.channels, 3, padding=1)
        widths = (config.channels, *config.stage_channels)
        self.stages = nn.ModuleList(
            UpsampleStage(widths[i], widths[i + 1], config.strides[i], config.blocks[i], config)
            for i in range(len(config.strides))
        )
        self.head = INR_HEADS[config.head](widths[-1], config)

    def forward(self, f: Tensor) -> INROutput:
        """Evaluate the INR at normalised sequence times.

        Args:
            f: (N,) times in [0, 1] (0 = first latent frame, 1 = last).

        Returns:
            ``INROutput(y, m)``; see :class:`INROutput` for shapes per head.
        """
        x = self.stem(self.base_grid(f))
        for stage, size in zip(self.stages, self.stage_sizes):
            x = stage(x, f, size)
        return self.head(x)

    def decoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Weights that adaptive magnitude pruning considers (DiV-INR Sec. 3.3).

        Exactly the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear``: the stem, each stage's
        projection and local-encoding projection, the ConvNeXt depthwise and pointwise layers
        and the head convs. Not pruned: the base and local feature grids, all biases and all
        LayerNorm parameters.

        Returns:
            (qualified name, parameter) pairs in module order.
        """
        return [
            (f"{name}.weight", module.weight)
            for name, module in self.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        ]

    @property
    def num_parameters(self) -> int:
        """All parameters (grids, decoder, norms, biases): what the bitstream must carry."""
        return count_parameters(self)


def count_parameters(module: nn.Module) -> int:
    """Number of scalars in a module's parameters (works on the meta device)."""
    return sum(parameter.numel() for parameter in module.parameters())


def dit_conditioning(inr: LatentINR, f: Tensor, *, ones_mask: bool = False) -> tuple[Tensor, Tensor]:
    """(y, M) for latent frames ``f`` in the DiT's (1, C, T', h, w) layout.

    The one place that turns INR output into diffusion conditioning, shared by training and the
    decoder so the two cannot drift apart. ``ones_mask`` is the paper's M = 1 ablation.
    """
    out = inr(f)
    y, m = (t.permute(1, 0, 2, 3).unsqueeze(0) for t in (out.y, out.m))
    return y, torch.ones_like(m) if ones_mask else m


class GoPINRs(nn.ModuleList):
    """One INR per GoP, trained together (granularity gop with adapters shared by the sequence):
    each GoP is conditioned by its own, and pruning considers all their decoder weights at once."""

    def decoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{index}.{name}", p) for index, inr in enumerate(self) for name, p in inr.decoder_parameters()]


def parameter_owners(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every parameter of ``module`` as (owning module, name): the form Quant-Noise hooks into."""
    return [(owner, name) for owner in module.modules() for name, _ in owner.named_parameters(recurse=False)]


def build_inr(preset_or_config: str | INRConfig, output_size: tuple[int, int]) -> LatentINR:
    """Build an INR from a preset name (absolute preset grid sizes) or a config.

    Args:
        preset_or_config: a key of :data:`INR_PRESETS` or an :class:`INRConfig`; use
            :func:`inr_config` first to scale a preset to the sequence length.
        output_size: (H, W) output size (latent size for "latent", pixel size for "rgb").

    Returns:
        The randomly initialised INR.
    """
    config = inr_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    return LatentINR(config, output_size)

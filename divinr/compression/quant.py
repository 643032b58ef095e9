"""Uniform per-tensor quantisation and Quant-Noise training.

One quantiser serves both training and the bitstream, so what the network sees while
training with Quant-Noise is bit-for-bit what the decoder will reconstruct::

    w (float) --quant_params--> QuantParams(scale: float32, zero_point: int, bits)
      |                                   |
      +--------quantize--------> codes (int64 in [0, 2^bits)) --entropy coder--> bits
                                          |
                                  dequantize: (codes - zero_point) * scale  (float32)

The range is asymmetric min/max but always contains 0, and the zero point is an integer,
so 0.0 is exactly representable: pruned weights decode to exactly 0.0 and stay 0.0 under
fake quantisation.

Quant-Noise (Fan et al., "Training with Quantization Noise for Extreme Model
Compression", 2020): in each forward pass a random fraction ``rho`` of the weights is
replaced by its quantised value (gradients pass straight through), the rest stays in full
precision, so the network learns to tolerate quantisation while most gradients stay
unbiased. :func:`enable_quant_noise` applies it to existing modules through
``torch.nn.utils.parametrize`` without touching model code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from divinr.errors import PresetError

MAX_BITS = 16
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor quantiser: ``value = (code - zero_point) * scale``.

    ``scale`` is always a float32-representable positive number, because the bitstream
    stores it as float32 and encoder and decoder must dequantise identically.
    """

    scale: float
    zero_point: int
    bits: int


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise PresetError(f"quantisation bits must be in 1..{MAX_BITS}, got {bits}; fix the compression config")


def _check_rho(rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise PresetError(f"quant-noise rate rho must be in [0, 1], got {rho}; fix the compression config")


def quant_params(w: Tensor, bits: int = 6) -> QuantParams:
    """Choose scale and zero point for ``w`` from its min/max, with 0 inside the range.

    Args:
        w: Tensor to quantise (any shape; may be empty or constant).
        bits: Code width; codes lie in ``[0, 2**bits - 1]``.

    Returns:
        Parameters with ``scale > 0`` (float32-exact) and an integer zero point, so 0.0
        quantises and dequantises exactly.
    """
    _check_bits(bits)
    if w.numel() == 0:
        return QuantParams(scale=1.0, zero_point=0, bits=bits)
    w = w.detach()
    if not bool(torch.isfinite(w.min()) & torch.isfinite(w.max())):
        raise ValueError("cannot quantise a tensor with non-finite values (training diverged?)")
    scale, zero_point = _device_quant_params(w, (1 << bits) - 1)
    return QuantParams(scale=float(scale), zero_point=int(zero_point), bits=bits)


def quantize(w: Tensor, params: QuantParams) -> Tensor:
    """Map ``w`` to integer codes in ``[0, 2**bits)`` (round half to even, clamped).

    Args:
        w: Values to quantise.
        params: Quantiser, usually ``quant_params(w)``.

    Returns:
        int64 tensor of codes, same shape as ``w``.
    """
    levels = (1 << params.bits) - 1
    scaled = w.detach().float() / torch.tensor(params.scale, dtype=torch.float32, device=w.device)
    return torch.clamp(torch.round(scaled) + params.zero_point, 0, levels).to(torch.int64)


def dequantize(codes: Tensor, params: QuantParams) -> Tensor:
    """Reconstruct values from codes: ``(codes - zero_point) * scale`` in float32.

    A single float32 multiply of a small exact integer by a float32 scale is correctly
    rounded on every IEEE device, which keeps encoder, decoder and training identical.

    Args:
        codes: Integer codes.
        params: The quantiser the codes were made with.

    Returns:
        float32 tensor of the same shape.
    """
    centred = (codes.to(torch.int64) - params.zero_point).to(torch.float32)
    return centred * torch.tensor(params.scale, dtype=torch.float32, device=codes.device)


def _straight_through(w: Tensor, value: Tensor) -> Tensor:
    """Return exactly ``value`` in the forward pass with the identity gradient w.r.t. ``w``.

    ``w - w.detach()`` is exactly zero, so unlike ``w + (value - w).detach()`` this adds
    no rounding error to the forward value.
    """
    return value.detach() + (w - w.detach())


def _device_quant_params(w: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Scale and zero point as 0-d tensors on ``w``'s device: (float32 scale, zero point).

    The range is taken in float64 and the scale rounded up to float32 (so ``levels * scale``
    still covers it); the zero point is rounded half to even. Training calls this directly:
    nothing is read back to the host, because Quant-Noise runs in every NOLA layer of the
    DiT's forward pass and a host read per tensor would stall the GPU queue once per layer.
    :func:`quant_params` reads the two values back for the bitstream.
    """
    w = w.detach()
    lo = w.min().double().clamp(max=0.0)
    hi = w.max().double().clamp(min=0.0)
    exact = (hi - lo) / levels
    scale = exact.float()
    scale = torch.where(scale.double() < exact, torch.nextafter(scale, torch.full_like(scale, math.inf)), scale)
    scale = scale.clamp(min=_FLOAT32_TINY)
    constant = hi == lo
    scale = torch.where(constant, torch.ones_like(scale), scale)
    zero_point = torch.where(constant, torch.zeros_like(lo), torch.round(-lo / scale.double()).clamp(0, levels))
    return scale, zero_point.float()


def fake_quantize(w: Tensor, bits: int = 6) -> Tensor:
    """Quantise and dequantise ``w`` with a straight-through gradient.

    Bit-for-bit ``dequantize(quantize(w, quant_params(w)))`` for finite ``w``, computed on
    ``w``'s device without a host synchronisation (see :func:`_device_quant_params`). A
    non-finite ``w`` gives NaN instead of raising; the training loop checks for divergence once
    per epoch and :func:`quant_params` refuses such a tensor when the bitstream is written.

    Args:
        w: Weights (gradients flow to them unchanged).
        bits: Code width.

    Returns:
        ``dequantize(quantize(w))`` in ``w``'s dtype.

    >>> fake_quantize(torch.tensor([0.0, 1.0]), bits=1).tolist()
    [0.0, 1.0]
    """
    _check_bits(bits)
    if w.numel() == 0:
        return w
    levels = (1 << bits) - 1
    scale, zero_point = _device_quant_params(w, levels)
    codes = torch.clamp(torch.round(w.detach().float() / scale) + zero_point, 0, levels)
    return _straight_through(w, ((codes - zero_point) * scale).to(w.dtype))


def quant_noise(w: Tensor, bits: int, rho: float, generator: torch.Generator | None = None) -> Tensor:
    """Quant-Noise: replace a random fraction ``rho`` of ``w`` by its quantised value.

    The quantiser is fitted on the whole tensor (as the bitstream will be), then an
    elementwise Bernoulli(``rho``) mask picks which entries are quantised this time.

    Args:
        w: Weights.
        bits: Code width.
        rho: Probability that an entry is quantised; 0 returns ``w``, 1 fake-quantises all.
        generator: Optional random generator on ``w``'s device, for reproducible masks.

    Returns:
        Tensor like ``w`` with straight-through gradients.
    """
    _check_rho(rho)
    if rho == 0.0:
        return w
    quantised = fake_quantize(w, bits)
    if rho == 1.0:
        return quantised
    mask = torch.rand(w.shape, generator=generator, device=w.device) < rho
    return torch.where(mask, quantised, w)


class QuantNoiseParametrization(nn.Module):
    """Parametrization applying Quant-Noise in training and exact quantisation in eval.

    In eval mode (validation) every weight is quantised (rho = 1), so validation scores
    show what the decoder will reconstruct from the bitstream.
    """

    def __init__(self, bits: int = 6, rho: float = 0.9, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_bits(bits)
        _check_rho(rho)
        self.bits = bits
        self.rho = rho
        self.generator = generator

    def forward(self, w: Tensor) -> Tensor:
        """Noisy weights in training, fully quantised weights in eval."""
        if self.training:
            return quant_noise(w, self.bits, self.rho, self.generator)
        return fake_quantize(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rho={self.rho}"


def _original_key(name: str) -> str:
    return f"parametrizations.{name}.original"


def _rename_key(state_dict: dict[str, Any], old: str, new: str) -> None:
    if old in state_dict:
        state_dict[new] = state_dict.pop(old)


class QuantNoiseHandle:
    """Undoes :func:`enable_quant_noise`: restores the plain parameters and state-dict keys."""

    def __init__(self) -> None:
        self._targets: list[tuple[nn.Module, str]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def remove(self) -> None:
        """Remove the parametrizations; each module gets back its original Parameter object."""
        for hook in self._hooks:
            hook.remove()
        for module, name in self._targets:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        self._hooks.clear()
        self._targets.clear()


def enable_quant_noise(
    params_owner_modules: list[tuple[nn.Module, str]],
    bits: int = 6,
    rho: float = 0.9,
    generator: torch.Generator | None = None,
) -> QuantNoiseHandle:
    """Train the given parameters with Quant-Noise, without editing model code.

    Each ``(module, name)`` gets a :class:`QuantNoiseParametrization`. The Parameter
    object itself is kept (optimizers and pruning masks holding it keep working), and
    pruned zeros stay exactly zero because 0.0 is exactly representable. State-dict keys
    stay ``<module>.<name>`` while enabled (only their order may change), so checkpoints
    load with or without Quant-Noise. A new mask is drawn at every read of the weight; a
    module reading it twice per forward should run under ``parametrize.cached()``.
    Call ``handle.remove()`` before exporting the plain weights.

    Args:
        params_owner_modules: ``(module, parameter name)`` pairs, e.g. ``(conv, "weight")``.
        bits: Code width of the quantiser.
        rho: Fraction of entries quantised per forward pass in training mode.
        generator: Optional random generator for the Bernoulli masks.

    Returns:
        A handle whose ``remove()`` restores the modules.
    """
    handle = QuantNoiseHandle()
    try:
        for module, name in params_owner_modules:
            if parametrize.is_parametrized(module, name):
                raise ValueError(f"{type(module).__name__}.{name} is already parametrized")
            noise = QuantNoiseParametrization(bits, rho, generator).train(module.training)
            parametrize.register_parametrization(module, name, noise)
            handle._targets.append((module, name))
            handle._hooks.extend(_register_plain_state_dict_keys(module, name))
    except Exception:
        handle.remove()
        raise
    return handle


def _register_plain_state_dict_keys(module: nn.Module, name: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Make ``module`` save and load ``name`` under its plain key while parametrized."""

    def save_hook(mod: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        _rename_key(state_dict, prefix + _original_key(name), prefix + name)

    def load_hook(mod: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        _rename_key(state_dict, prefix + name, prefix + _original_key(name))

    return [module.register_state_dict_post_hook(save_hook), module.register_load_state_dict_pre_hook(load_hook)]

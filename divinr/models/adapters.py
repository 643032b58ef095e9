"""The adapter families that specialise the frozen DiT to one video, behind one interface.

    nola  divinr's NOLA (:mod:`divinr.models.nola`, the paper's): 2 b coefficients per layer
    lora  peft's LoRA: W0 + (alpha / r) B A, r (in + out) parameters per layer
    vera  peft's VeRA: W0 + diag(lambda_b) B diag(lambda_d) A with A, B frozen, random and shared
          by all layers (regenerated from a seed, never sent): r + out parameters per layer

All three adapt the same layers (:func:`~divinr.models.nola.select_targets` with NOLA's default
targets), their trained tensors are quantised and range-coded alike (the stream's adapter
section, named after the family) and the decoder merges them into ``W0``. peft code
(:mod:`divinr.models.peft_adapters`) is imported only for ``lora`` and ``vera``.

Matched adapter bits. NOLA's 2 b coefficients per layer are fewer than one LoRA rank costs, so
no LoRA rank matches NOLA on Wan2.1 1.3B and the defaults are the smallest ranks. Trained
parameters (counted on the meta device; ``tests/test_adapters.py`` checks them)::

                        NOLA b=500    LoRA rank r    VeRA rank r
    Wan2.1 1.3B (91)        91,000      723,520 r    361,024 + 91 r
    mini (13)               13,000        6,336 r      3,136 + 13 r

LoRA rank 1 is 8x NOLA's count on Wan2.1 1.3B (rank 2 is the closest on ``mini``). VeRA's count
is dominated by ``lambda_b`` (one scalar per output feature): rank 1 is the closest on Wan2.1
1.3B (4x NOLA), each further rank adds only 91 parameters (rank 256, the VeRA paper's, costs
6% more than rank 1); on ``mini`` rank 759 matches NOLA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from divinr.errors import BitstreamError, PresetError, unknown_choice
from divinr.models.nola import (
    DEFAULT_WAN_TARGETS,
    NOLAConfig,
    NOLALayer,
    eject_nola,
    inject_nola,
    natural_key,
    release_nola_bases,
    select_targets,
)

MAX_LORA_RANK = 256
"""LoRA's rank bound: 185M parameters (0.74 GB in float32) on Wan2.1 1.3B, far past any useful rate."""
MAX_VERA_RANK = 1024
"""VeRA's rank bound: the shared projections then hold 18M floats on Wan2.1 1.3B."""
MAX_LORA_ALPHA = 1024.0
"""LoRA's ``alpha`` bound (the update is scaled by ``alpha / rank``): beyond it the adapted weights overflow."""


@dataclass(frozen=True)
class LoRAConfig:
    """peft LoRA settings: exactly what a decoder needs to rebuild ``W0 + (alpha / rank) B A``.

    ``B`` starts at zero (peft's default), so the adapted model starts as the backbone; ``A``'s
    Kaiming-uniform draw is seeded by the encoder's seed and never needed by the decoder.

    Args:
        rank: rank ``r`` of ``B A``, 1..:data:`MAX_LORA_RANK`; ``r (in + out)`` parameters per layer.
        alpha: peft's ``lora_alpha``; the update is scaled by ``alpha / rank``.
    """

    rank: int = 1
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_LORA_RANK:
            raise PresetError(
                f"LoRA rank must be in 1..{MAX_LORA_RANK}, got {self.rank}; rank 1 is the closest to NOLA's bits"
            )
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= MAX_LORA_ALPHA):
            raise PresetError(f"LoRA alpha must be in (0, {MAX_LORA_ALPHA:g}], got {self.alpha}; 1.0 scales by 1 / rank")


@dataclass(frozen=True)
class VeRAConfig:
    """peft VeRA settings: exactly what a decoder needs to rebuild the adapted weights.

    The shared random projections are regenerated from ``seed`` (peft's ``projection_prng_key``)
    on the CPU, bit-identically in every process, so they are never transmitted; only the
    ``lambda_b`` and ``lambda_d`` vectors are.

    Args:
        rank: rank ``r`` of the shared projections, 1..:data:`MAX_VERA_RANK`; ``r + out``
            parameters per layer.
        seed: seed of the shared projections, 0..2^32-1.
    """

    rank: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_VERA_RANK:
            raise PresetError(
                f"VeRA rank must be in 1..{MAX_VERA_RANK}, got {self.rank}; rank 1 is the closest to NOLA's bits"
            )
        if not 0 <= self.seed < 2**32:
            raise PresetError(f"VeRA seed must be in 0..2^32-1, got {self.seed}; pick a non-negative seed")


AdapterConfig = Union[NOLAConfig, LoRAConfig, VeRAConfig]
ADAPTERS: dict[str, type] = {"nola": NOLAConfig, "lora": LoRAConfig, "vera": VeRAConfig}
"""The adapter families by name; each family's settings are its config class."""


def check_adapter(name: str) -> str:
    """``name`` if it is an adapter family, else a PresetError listing them."""
    if name not in ADAPTERS:
        raise unknown_choice("adapter", name, tuple(ADAPTERS))
    return name


def inject_adapters(
    model: nn.Module,
    config: AdapterConfig,
    *,
    extra_targets: dict[str, dict[str, Any]] | None = None,
    init_seed: int = 0,
) -> list[str]:
    """Adapt ``model`` in place with the family ``config`` belongs to, on NOLA's target layers.

    Afterwards only adapter tensors require grad.

    Args:
        model: the network (e.g. diffusers' ``WanTransformer3DModel``).
        config: a :class:`~divinr.models.nola.NOLAConfig`, :class:`LoRAConfig` or :class:`VeRAConfig`.
        extra_targets: more targets with per-target options (see :func:`~divinr.models.nola.select_targets`).
        init_seed: seed of the initial values peft draws (LoRA's ``A``); NOLA seeds its own from
            its config and VeRA draws none.

    Returns:
        The adapted module names in natural order (``[]`` for NOLA with ``num_bases=0``).

    Raises:
        PresetError: the model already has adapters, or a target cannot be adapted by the family.
    """
    if adapter_layers(model):
        raise PresetError("the model already has adapters; adapt a freshly loaded model")
    if isinstance(config, NOLAConfig):
        return inject_nola(model, config, extra_targets=extra_targets)
    from divinr.models.peft_adapters import inject_peft

    return inject_peft(model, config, select_targets(model, DEFAULT_WAN_TARGETS, extra_targets), init_seed=init_seed)


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapter layers of ``model`` by module name, in natural order.

    An adapter layer names its trained tensors in ``adapter_layer_names``: peft's tuner layers
    do, and so does :class:`~divinr.models.nola.NOLALayer`. Found without importing peft.
    """
    found = {
        name: m for name, m in model.named_modules() if isinstance(getattr(type(m), "adapter_layer_names", None), tuple)
    }
    return {name: found[name] for name in sorted(found, key=natural_key)}


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every trained adapter tensor, keyed like ``model.state_dict()``, in the bitstream's order.

    Layers in natural order, each layer's tensors in key order (NOLA: ``alpha`` then ``beta``;
    LoRA: ``A`` then ``B``; VeRA: ``lambda_b`` then ``lambda_d``). Read through ``state_dict``, so
    keys and Parameter objects are the plain ones under Quant-Noise too.
    """
    found: dict[str, nn.Parameter] = {}
    for name, layer in adapter_layers(model).items():
        own = layer.state_dict(keep_vars=True)
        for key in sorted(k for k in own if k.split(".", 1)[0] in type(layer).adapter_layer_names):
            found[f"{name}.{key}"] = own[key]
    return found


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`adapter_parameters`, detached: what the bitstream's adapter section codes."""
    return {key: value.detach() for key, value in adapter_parameters(model).items()}


def adapter_owners(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, parameter name)`` of every trained adapter tensor, in the bitstream's order (for Quant-Noise)."""
    owners = []
    for key in adapter_parameters(model):
        owner, _, attr = key.rpartition(".")
        owners.append((model.get_submodule(owner), attr))
    return owners


def count_adapter_parameters(model: nn.Module) -> int:
    """Number of trained adapter scalars (what the adapter section codes)."""
    return sum(p.numel() for p in adapter_parameters(model).values())


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into ``model`` strictly: the keys and shapes must match exactly.

    Raises:
        BitstreamError: missing, unexpected or mis-shaped tensors (another adapter config or
            backbone than the encoder's).
        PresetError: an adapter is merged (its merged weight would go stale).
    """
    if any(layer.merged for layer in adapter_layers(model).values()):
        raise PresetError("cannot load adapter tensors into merged adapters; load them before merge_adapters")
    params = adapter_parameters(model)
    missing = [k for k in params if k not in state]
    unexpected = [k for k in state if k not in params]
    if missing or unexpected:
        raise BitstreamError(
            f"adapter tensors do not fit the model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); decode with the encoder's backbone and adapter"
        )
    for key, param in params.items():
        if state[key].shape != param.shape:
            raise BitstreamError(
                f"adapter tensor {key} has shape {tuple(state[key].shape)}, the model expects {tuple(param.shape)}; "
                "decode with the encoder's adapter settings"
            )
        param.copy_(state[key])


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference) and free NOLA's bases, which merged
    adapters never read again."""
    for layer in adapter_layers(model).values():
        layer.merge()
    release_nola_bases(model)


def snapshot_layers(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]:
    """The unadapted modules ``names`` of ``model`` and copies of their weights on the CPU (so a
    GPU holds the weights once), for :func:`restore_layers`."""
    layers = {name: model.get_submodule(name) for name in names}
    if any(name in adapter_layers(model) for name in names):
        raise PresetError("snapshot the layers before adapting them")
    return {
        name: (m, {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}) for name, m in layers.items()
    }


@torch.no_grad()
def restore_layers(model: nn.Module, snapshot: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]) -> None:
    """Put the snapshot's modules back with their snapshot weights, dropping whatever adapter wraps
    them: exact whatever the dtype and whether merged (unlike :func:`eject_adapters`, which
    unmerges), so a decoder can merge one GoP's adapters after another's and get the same weights
    as if it had merged only that GoP's."""
    for name, (module, state) in snapshot.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
        module.load_state_dict(state)
    if hasattr(model, "peft_config"):
        del model.peft_config


def eject_adapters(model: nn.Module) -> None:
    """Put every adapted layer's original module back (unmerging first), so the model is as loaded.

    The encoder uses this after training to run the decoder's exact path (fresh injection,
    dequantised tensors, merge) on the same backbone object.
    """
    eject_nola(model)
    if any(not isinstance(layer, NOLALayer) for layer in adapter_layers(model).values()):
        from divinr.models.peft_adapters import eject_peft

        eject_peft(model)

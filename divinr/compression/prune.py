"""Adaptive magnitude pruning with persistent masks.

HiNeRV-style pruning (as used by DiV-INR for the INR decoder): every weight gets the score
``|w| / sqrt(P)``, ``P`` being the parameter count of its tensor, and the lowest-scoring
``round(fraction * total)`` weights over *all* given tensors are pruned with one global
threshold. Dividing by ``sqrt(P)`` makes large layers give up relatively more weights
than narrow ones, which have little redundancy to spare::

    named params --scores |w|/sqrt(P)--> global stable sort --> keep masks (bool)
        masks --apply (zero weights)--> grad hooks (zero grads) --> re-zero after each step

Re-zeroing after the optimizer step is what keeps weights at zero: Adam's moment
estimates from dense training still move a weight whose gradient is now zero, and
decoupled weight decay would act on anything non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from divinr.errors import PresetError


def adaptive_prune_masks(named_params: Sequence[tuple[str, Tensor]], fraction: float = 0.15) -> dict[str, Tensor]:
    """Compute keep-masks pruning exactly ``round(fraction * total)`` weights.

    Ties are broken deterministically: among equal scores, earlier tensors (in the given
    order) and lower flat indices are pruned first. Weights already at zero score 0 and
    go first, so pruning again never revives them.

    Args:
        named_params: ``(name, tensor)`` pairs, e.g. the INR decoder's weights.
        fraction: Share of all their weights to prune, in [0, 1].

    Returns:
        ``{name: bool tensor}``, True where the weight is kept, on each tensor's device.
    """
    if not 0.0 <= fraction <= 1.0:
        raise PresetError(f"pruning fraction must be in [0, 1], got {fraction}; fix the compression config")
    names = [name for name, _ in named_params]
    if len(set(names)) != len(names):
        raise ValueError("parameter names given to pruning must be unique")
    if not named_params:
        return {}
    # float64 on CPU: exact |w| and a device-independent order.
    scores = torch.cat(
        [t.detach().abs().flatten().to("cpu", torch.float64) / math.sqrt(max(t.numel(), 1)) for _, t in named_params]
    )
    num_pruned = round(fraction * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores, stable=True)[:num_pruned]] = False
    masks: dict[str, Tensor] = {}
    start = 0
    for name, t in named_params:
        masks[name] = keep[start : start + t.numel()].reshape(t.shape).to(t.device)
        start += t.numel()
    return masks


def apply_masks(named_params: Sequence[tuple[str, Tensor]], masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned entries of the given tensors in place.

    Args:
        named_params: ``(name, tensor)`` pairs; names without a mask are left alone.
        masks: Keep-masks as returned by :func:`adaptive_prune_masks`.
    """
    with torch.no_grad():
        for name, t in named_params:
            if name in masks:
                t.masked_fill_(~masks[name].to(t.device), 0.0)


class PruningHandle:
    """The hooks installed by :meth:`PruningMasks.attach`, removed together."""

    def __init__(self, hooks: list[torch.utils.hooks.RemovableHandle]) -> None:
        self._hooks = hooks

    def remove(self) -> None:
        """Remove every hook of the group."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


class PruningMasks:
    """Keep-masks bound to parameters, kept in force through training and checkpoints.

    Typical use at the start of the pruning phase::

        masks = PruningMasks.prune(list(inr.decoder.named_parameters()), 0.15)
        handle = masks.attach(optimizer)   # zero masked grads, re-zero after every step

    The parameters are held by reference, so they may later be wrapped by
    :func:`divinr.compression.quant.enable_quant_noise` (which keeps the Parameter
    objects); pruned weights then stay exactly zero since 0.0 quantises exactly.
    """

    def __init__(self, named_params: Sequence[tuple[str, Tensor]], masks: Mapping[str, Tensor] | None = None) -> None:
        """Bind ``masks`` (True = keep) to ``named_params``.

        Args:
            named_params: ``(name, parameter)`` pairs.
            masks: A same-shape mask for every name; ``None`` or an empty mapping keeps
                every weight (e.g. before :meth:`load_state_dict` on resume).
        """
        self._params = dict(named_params)
        self._masks: dict[str, Tensor] = {}
        if masks:
            self._set_masks(masks)
        else:
            self._masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in self._params.items()}

    @classmethod
    def prune(cls, named_params: Sequence[tuple[str, Tensor]], fraction: float = 0.15) -> PruningMasks:
        """Compute adaptive masks for ``named_params``, zero the pruned weights and bind them.

        Args:
            named_params: ``(name, parameter)`` pairs to prune jointly.
            fraction: Share of all their weights to prune.

        Returns:
            The bound masks, already applied.
        """
        masks = cls(named_params, adaptive_prune_masks(named_params, fraction))
        masks.apply()
        return masks

    def _set_masks(self, masks: Mapping[str, Tensor]) -> None:
        if set(masks) != set(self._params):
            raise PresetError(
                "pruning masks do not match the model's parameters "
                f"(missing {sorted(set(self._params) - set(masks))}, extra {sorted(set(masks) - set(self._params))}); "
                "resume with the same model configuration"
            )
        for name, p in self._params.items():
            if tuple(masks[name].shape) != tuple(p.shape):
                raise PresetError(
                    f"pruning mask {name!r} has shape {tuple(masks[name].shape)} but the parameter has "
                    f"{tuple(p.shape)}; resume with the same model configuration"
                )
        self._masks = {name: masks[name].to(device=p.device, dtype=torch.bool) for name, p in self._params.items()}

    def apply(self) -> None:
        """Zero every pruned weight in place (call after each optimizer step)."""
        apply_masks(list(self._params.items()), self._masks)

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> PruningHandle:
        """Keep pruned weights at zero during training.

        Gradient hooks zero the gradients of pruned weights; with ``optimizer`` given, a
        step post-hook also re-applies the masks after every step.

        Args:
            optimizer: The optimizer updating these parameters, if any.

        Returns:
            A handle whose ``remove()`` detaches all hooks.
        """
        hooks = [p.register_hook(self._grad_hook(name)) for name, p in self._params.items() if p.requires_grad]
        if optimizer is not None:
            hooks.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply()))
        return PruningHandle(hooks)

    def _grad_hook(self, name: str) -> Callable[[Tensor], Tensor]:
        # Looks the mask up at call time so load_state_dict takes effect on attached hooks.
        return lambda grad: grad.masked_fill(~self._masks[name], 0.0)

    def state_dict(self) -> dict[str, Tensor]:
        """Masks as CPU bool tensors, for checkpoints."""
        return {name: m.detach().to("cpu").clone() for name, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore masks saved by :meth:`state_dict` and zero the pruned weights."""
        self._set_masks(state)
        self.apply()

    def sparsity(self) -> float:
        """Fraction of the bound weights that are pruned (0.0 when none are bound)."""
        total = sum(m.numel() for m in self._masks.values())
        pruned = sum(int((~m).sum()) for m in self._masks.values())
        return pruned / total if total else 0.0

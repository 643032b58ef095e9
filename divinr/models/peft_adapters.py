"""peft's own LoRA and VeRA tuners on the DiT, for the adapter-family ablation.

Imported only when a model is adapted with LoRA or VeRA (:func:`divinr.models.adapters.inject_adapters`),
so encoding or decoding a NOLA stream never runs this code.

peft places its tuners through ``get_peft_model`` on exactly the layers
:func:`~divinr.models.nola.select_targets` lists (passed as one full-match regex of the escaped
names, and checked afterwards). ``get_peft_model`` rather than ``inject_adapter_in_model``:
VeRA keeps its shared projections on the tuner, which ``inject_adapter_in_model`` refuses; the
``PeftModel`` wrapper is dropped, the model keeps the tuner layers (and VeRA's layers keep the
projections they share). peft also upcasts the adapter tensors of a bf16 model to float32,
as NOLA keeps its coefficients.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from divinr.errors import PresetError
from divinr.models.adapters import LoRAConfig, VeRAConfig, adapter_layers

# peft warns that save_projection=False relies on regenerating VeRA's projections from the seed:
# that is the design here, and the test suite checks the regeneration is bit-identical.
_PROJECTION_WARNING = "Specified to not save vera_A and vera_B"


def peft_config(config: LoRAConfig | VeRAConfig, targets: list[str]) -> peft.PeftConfig:
    """peft's config for ``config`` on exactly the modules ``targets`` (no dropout, no bias)."""
    pattern = "(?:" + "|".join(re.escape(name) for name in targets) + ")"  # a string is full-matched by peft
    if isinstance(config, LoRAConfig):
        return peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=pattern, lora_dropout=0.0, bias="none")
    return peft.VeraConfig(
        r=config.rank, projection_prng_key=config.seed, save_projection=False, target_modules=pattern,
        vera_dropout=0.0, bias="none",
    )


def inject_peft(
    model: nn.Module, config: LoRAConfig | VeRAConfig, targets: dict[str, dict[str, Any]], *, init_seed: int = 0
) -> list[str]:
    """Inject peft's LoRA or VeRA into ``model`` in place on ``targets`` (from :func:`~divinr.models.nola.select_targets`).

    Args:
        model: the network, adapted in place (it gains peft's ``peft_config`` attribute).
        config: the LoRA or VeRA settings.
        targets: module name -> options; peft takes no options.
        init_seed: seeds the CPU generator peft draws initial values from (LoRA's ``A``), which
            is forked, so the caller's random state is untouched.

    Returns:
        The adapted module names in natural order (the keys of ``targets``).

    Raises:
        PresetError: a target needs options peft cannot express (a channel slice of the
            patch embedding that a widened backbone adapts).
    """
    family = "LoRA" if isinstance(config, LoRAConfig) else "VeRA"
    sliced = [name for name, options in targets.items() if options]
    if sliced:
        raise PresetError(
            f"{family} cannot adapt only some input channels of {sliced} (the conditioning channels a widened "
            "backbone learns); use adapter nola, or a backbone with a 36-channel input such as wan2.1-fun-1.3b-inp"
        )
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROJECTION_WARNING)
        torch.random.default_generator.manual_seed(init_seed)
        peft.get_peft_model(model, peft_config(config, list(targets)))
    adapted = list(adapter_layers(model))
    if adapted != list(targets):
        raise RuntimeError(f"peft adapted {adapted}, not the requested {list(targets)}")
    return adapted


def eject_peft(model: nn.Module) -> None:
    """Put back the base layer of every peft tuner layer (unmerging first) and drop ``peft_config``."""
    for name, layer in adapter_layers(model).items():
        if not isinstance(layer, BaseTunerLayer):
            continue
        if layer.merged:
            layer.unmerge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config

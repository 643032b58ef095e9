"""The three-stage curriculum as data (paper Sec. 3.3-3.4).

    dense (300 ep) --> prune 15% of the INR decoder (120 ep) --> Quant-Noise 6 bit, INR lr / 10 (60 ep)

Each stage is a :class:`Phase`; one :class:`StageCallback` walks the list by epoch, applies the
stage's entry action (pruning masks, Quant-Noise), sets the learning rates of the two optimiser
groups on a per-phase cosine decay, and keeps everything it did in its ``state_dict`` so a run
resumed from a checkpoint continues in the right stage with its masks intact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import lightning as L
import torch

from divinr.compression.prune import PruningMasks
from divinr.compression.quant import enable_quant_noise
from divinr.errors import PresetError


@dataclass(frozen=True)
class Phase:
    """One training stage.

    Args:
        name: label logged when the stage starts.
        epochs: passes over the sequence's GoPs.
        inr_lr, nola_lr: peak learning rates of the two AdamW groups (INR; adapters, whatever
            their family); each decays on a cosine to ``min_lr_ratio`` x peak over the phase.
        prune_fraction: fraction of INR decoder weights pruned when the phase starts (0 = none;
            masks from an earlier phase persist).
        quant_noise: Quant-Noise rate rho (0 = off); quantisation is ``quant_bits`` wide.
    """

    name: str
    epochs: int
    inr_lr: float = 2e-3
    nola_lr: float = 2e-4
    prune_fraction: float = 0.0
    quant_noise: float = 0.0
    quant_bits: int = 6
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise PresetError(f"phase {self.name!r}: epochs must be >= 0, got {self.epochs}")
        for group in ("inr_lr", "nola_lr"):
            # A negative rate trains by gradient ascent, zero not at all, NaN diverges at step one.
            value = getattr(self, group)
            if not (math.isfinite(value) and value > 0):
                raise PresetError(f"phase {self.name!r}: {group} must be a positive finite number, got {value}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise PresetError(f"phase {self.name!r}: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.prune_fraction < 1.0:
            raise PresetError(f"phase {self.name!r}: prune_fraction must be in [0, 1), got {self.prune_fraction}")
        if not 0.0 <= self.quant_noise <= 1.0:
            raise PresetError(f"phase {self.name!r}: quant_noise must be in [0, 1], got {self.quant_noise}")


def paper_phases(
    dense_epochs: int = 300,
    prune_epochs: int = 120,
    quant_epochs: int = 60,
    *,
    inr_lr: float = Phase.inr_lr,
    nola_lr: float = Phase.nola_lr,
    prune_fraction: float = 0.15,
    rho: float = 0.9,
    bits: int = Phase.quant_bits,
) -> list[Phase]:
    """The paper's schedule; epoch counts are arguments so short runs keep the same shape."""
    dense_phase = Phase("dense", dense_epochs, inr_lr, nola_lr)
    return [
        dense_phase,
        replace(dense_phase, name="prune", epochs=prune_epochs, prune_fraction=prune_fraction),
        replace(dense_phase, name="quant", epochs=quant_epochs, inr_lr=inr_lr / 10, quant_noise=rho, quant_bits=bits),
    ]


def total_epochs(phases: list[Phase]) -> int:
    return sum(p.epochs for p in phases)


def phase_at(phases: list[Phase], epoch: int) -> tuple[int, int]:
    """Return (phase index, epoch within the phase) for a global epoch (past the end: last phase)."""
    start = 0
    for index, phase in enumerate(phases):
        if epoch < start + phase.epochs:
            return index, epoch - start
        start += phase.epochs
    return len(phases) - 1, phases[-1].epochs


class StageCallback(L.Callback):
    """Applies a list of :class:`Phase` to a module exposing the DiV-INR training contract.

    The module must provide ``pruning_targets()`` (named INR decoder weights),
    ``quantised_targets()`` ((module, parameter name) pairs that the bitstream quantises) and an
    optimiser whose param groups are named ``"inr"`` and ``"adapter"``.
    """

    def __init__(self, phases: list[Phase]) -> None:
        if not phases:
            raise PresetError("a training schedule needs at least one phase")
        self.phases = list(phases)
        self.phase_index = -1
        self.masks: PruningMasks | None = None
        self._quant_noise: Any = None
        self._restored: dict[str, Any] | None = None

    @property
    def phase(self) -> Phase:
        return self.phases[max(self.phase_index, 0)]

    # -- stage transitions -------------------------------------------------------------------
    def _enter(self, index: int, module: L.LightningModule) -> None:
        """Make the module match phase ``index``; idempotent, so resume can call it as well."""
        # Quant-Noise off first: pruning must see the stored weights, not their noisy view.
        if self._quant_noise is not None:
            self._quant_noise.remove()
            self._quant_noise = None
        for i in range(index + 1):
            fraction = self.phases[i].prune_fraction
            if fraction > 0 and self.masks is None:
                self.masks = PruningMasks.prune(module.pruning_targets(), fraction)
        phase = self.phases[index]
        if phase.quant_noise > 0:
            self._quant_noise = enable_quant_noise(module.quantised_targets(), phase.quant_bits, phase.quant_noise)
        self.phase_index = index

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:
            if self._restored["masks"] is not None:
                self.masks = PruningMasks(pl_module.pruning_targets())
                self.masks.load_state_dict(self._restored["masks"])
                self.masks.apply()
            self._restored = None
            if self.phase_index >= 0:
                self._enter(self.phase_index, pl_module)
        index, _ = phase_at(self.phases, trainer.current_epoch)
        if index != self.phase_index:
            self._enter(index, pl_module)
        pl_module.log("stage", float(self.phase_index), on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        phase = self.phase
        _, epoch_in_phase = phase_at(self.phases, trainer.current_epoch)
        batches = max(int(trainer.num_training_batches), 1)
        progress = (epoch_in_phase * batches + batch_idx) / max(phase.epochs * batches, 1)
        decay = phase.min_lr_ratio + (1 - phase.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                peak = phase.inr_lr if group.get("name") == "inr" else phase.nola_lr
                group["lr"] = peak * decay

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # AdamW's decoupled weight decay and momentum would move pruned weights: re-zero after every step.
        if self.masks is not None:
            self.masks.apply()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop a diverged training now rather than when the bitstream is packed, hours later.

        The per-step quantiser no longer checks for non-finite weights (it never reads back to
        the host); one read per epoch does.
        """
        trainable = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        if trainable and not bool(torch.stack([p.isfinite().all() for p in trainable]).all()):
            raise RuntimeError(
                f"training diverged in epoch {trainer.current_epoch} (non-finite weights); "
                "lower the learning rates of the schedule and run the point again"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._quant_noise is not None:
            self._quant_noise.remove()
            self._quant_noise = None

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "phase_index": self.phase_index,
            "phases": [p.__dict__ for p in self.phases],
            "masks": self.masks.state_dict() if self.masks is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [Phase(**p) for p in state_dict["phases"]]
        if saved != self.phases:
            raise PresetError("the checkpoint was trained with a different stage schedule; resume with the same phases")
        self.phase_index = int(state_dict["phase_index"])
        self._restored = state_dict

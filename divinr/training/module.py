"""The LightningModule of DiV-INR: frozen Wan backbone + adapters (NOLA, LoRA or VeRA) + latent INR.

One module trains a sequence (granularity sequence), or one GoP (granularity gop: each GoP's
module trains alone, see :mod:`divinr.training.gop_jobs`), or every GoP's own INR with adapters
shared by the sequence (granularity gop, adapter scope sequence: :class:`~divinr.models.inr.GoPINRs`).

Data flow of a training step (one GoP of the sequence):

    f (T',) --INR--> y (16,T',h,w), M (4,T',h,w)
    z0 (cached VAE latents), eps ~ N(0, I), t ~ logit-normal
    z_t = (1 - t) z0 + t eps --DiT[adapters](cat(z_t, M, y), 1000 t)--> v
    loss = (1 - lambda) ||v - (eps - z0)||^2 + lambda ||y - z0||^2

Only the INR and the adapter tensors train; the backbone stays frozen and in eval mode. Without
an INR (JPEG conditioning) (y, M) come from the GoP's keyframe latent, L_cond has nothing to
train and the loss is L_flow alone (lambda = 0). The stage logic (pruning, Quant-Noise, learning
rates) lives in :class:`~divinr.training.stages.StageCallback`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from divinr.models.adapters import adapter_layers, adapter_owners, adapter_parameters
from divinr.models.backbone import Backbone
from divinr.models.inr import GoPINRs, LatentINR, dit_conditioning, parameter_owners
from divinr.models.keyframes import keyframe_conditioning
from divinr.errors import PresetError
from divinr.training.losses import LossConfig, cosine_lambda, dual_loss, noisy_latents, sample_logit_normal
from divinr.training.stages import Phase, StageCallback, total_epochs



class DiVINRModule(L.LightningModule):
    """Trains the INR (or one INR per GoP) and the adapter tensors under the dual loss.

    Args:
        backbone: the frozen Wan transformer + VAE, already adapted by the caller
            (:meth:`~divinr.models.backbone.Backbone.adapt`; with ``num_bases=0``, the
            PEFT-size ablation, nothing is adapted and only the INR trains). The module never
            changes what it is given; the adapters belong to whoever injected them (the codec
            removes them before it reconstructs with the same backbone).
        inr: the latent INR producing (y, M) for temporal coordinates, or :class:`GoPINRs`
            (each batch is conditioned by its GoP's); None under JPEG conditioning, where each
            batch brings its GoP's keyframe latent.
        phases: the stage schedule (also handed to the :class:`StageCallback`).
        loss: lambda schedule and timestep density.
        mask_mode: ``"learned"`` (the paper) or ``"ones"`` (ablation: M fixed to 1).
        weight_decay: AdamW decoupled weight decay of both groups.
    """

    def __init__(
        self,
        backbone: Backbone,
        inr: LatentINR | GoPINRs | None,
        phases: list[Phase],
        loss: LossConfig = LossConfig(),
        *,
        mask_mode: str = "learned",
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if mask_mode not in ("learned", "ones"):
            raise ValueError(f"mask_mode must be 'learned' or 'ones', got {mask_mode!r}")
        self.backbone = backbone
        self.transformer = backbone.transformer
        self.inr = inr
        self.phases = list(phases)
        self.loss_config = loss
        self.mask_mode = mask_mode
        self.weight_decay = weight_decay
        # Checkpoints hold only what trains; the backbone comes from its own weights on resume.
        self.strict_loading = False

    # -- the contract used by StageCallback and the bitstream ---------------------------------
    def pruning_targets(self) -> list[tuple[str, nn.Parameter]]:
        """The INR decoder's weights (none without an INR: a pruning phase then only trains NOLA)."""
        return self.inr.decoder_parameters() if self.inr is not None else []

    def quantised_targets(self) -> list[tuple[nn.Module, str]]:
        """Every tensor the bitstream carries: all INR parameters (if any) and the adapter tensors."""
        inr = parameter_owners(self.inr) if self.inr is not None else []
        return inr + adapter_owners(self.transformer)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """INR parameters and adapter tensors: what a checkpoint needs besides the backbone.

        Selected by state-dict key, not by ``named_parameters``: under Quant-Noise the parameter
        names carry ``parametrizations.*.original`` while the saved keys stay plain.
        """
        adapters = {f"transformer.{key}" for key in adapter_parameters(self.transformer)}
        return {k: v for k, v in self.state_dict().items() if k.startswith("inr.") or k in adapters}

    # -- forward ------------------------------------------------------------------------------
    def condition(
        self, f: torch.Tensor, keyframe: torch.Tensor | None = None, gop: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning (y, M) for GoP ``gop``'s latent frames at coordinates ``f``, in DiT layout: the
        INR's (that GoP's, with one per GoP), or without an INR, that of the GoP's ``keyframe`` latent (16, h, w)."""
        if self.inr is not None:
            inr = self.inr[gop] if isinstance(self.inr, GoPINRs) else self.inr
            return dit_conditioning(inr, f, ones_mask=self.mask_mode == "ones")
        if keyframe is None:
            raise ValueError("a module without an INR conditions on keyframes: pass the GoP's keyframe latent")
        return keyframe_conditioning(keyframe, f.numel())

    def lambda_at(self, epoch: int, batch_idx: int, batches: int) -> float:
        """The weight of L_cond: cosine-annealed over training; 0 without an INR (nothing for it to train)."""
        if self.inr is None:
            return 0.0
        progress = (epoch + batch_idx / max(batches, 1)) / max(total_epochs(self.phases), 1)
        return cosine_lambda(progress, self.loss_config.lambda_start, self.loss_config.lambda_end)

    def compute_loss(
        self,
        z0: torch.Tensor,
        f: torch.Tensor,
        lam: float,
        encoder_hidden_states: torch.Tensor | None = None,
        keyframe: torch.Tensor | None = None,
        gop: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, L_flow, L_cond) for one GoP: z0 (1, 16, T', h, w) normalised latents, f (T',).

        ``encoder_hidden_states`` is only for baselines that re-enable cross-attention;
        ``keyframe`` is the GoP's keyframe latent when there is no INR; ``gop`` its index in the sequence.
        """
        y, m = self.condition(f, keyframe, gop)
        t = sample_logit_normal(z0.shape[0], self.loss_config.logit_mean, self.loss_config.logit_std, device=z0.device)
        eps = torch.randn_like(z0)
        velocity = self.backbone.predict(noisy_latents(z0, eps, t), y, m, t * 1000.0, encoder_hidden_states)
        return dual_loss(velocity, z0, eps, y, lam)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lam = self.lambda_at(self.current_epoch, batch_idx, int(self.trainer.num_training_batches))
        keyframe = batch["keyframe"][0] if "keyframe" in batch else None
        loss, flow, cond = self.compute_loss(
            batch["latents"], batch["coords"][0], lam, keyframe=keyframe, gop=int(batch["index"][0])
        )
        self.log_dict(
            {"train/loss": loss, "train/flow": flow, "train/cond": cond, "train/lambda": lam},
            on_step=False, on_epoch=True, prog_bar=True, batch_size=1,
        )
        return loss

    # -- Lightning plumbing -------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        first = self.phases[0]
        groups = []
        if self.inr is not None:
            groups.append({"name": "inr", "params": list(self.inr.parameters()), "lr": first.inr_lr})
        adapters = list(adapter_parameters(self.transformer).values())
        if adapters:
            groups.append({"name": "adapter", "params": adapters, "lr": first.nola_lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def configure_callbacks(self) -> list[L.Callback]:
        return [StageCallback(self.phases)]

    def train(self, mode: bool = True) -> "DiVINRModule":
        """Lightning switches modules to train mode each epoch; the frozen backbone must stay in eval.

        The adapter layers follow ``mode`` again afterwards: their Quant-Noise parametrisations use
        the module mode to choose between rho (training) and full quantisation (evaluation).
        """
        super().train(mode)
        self.backbone.eval()
        for layer in adapter_layers(self.transformer).values():
            layer.train(mode)
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Loading is non-strict (the backbone is not in checkpoints), so check what must be there."""
        missing = sorted(set(self.trainable_state_dict()) - set(checkpoint["state_dict"]))
        if missing:
            raise PresetError(
                f"checkpoint lacks {len(missing)} INR/adapter tensors (e.g. {missing[0]}); it was written for "
                "another configuration: resume with the same settings or delete the checkpoint"
            )

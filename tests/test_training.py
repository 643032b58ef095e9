"""The staged training of one sequence on the tiny backbone and a real clip (issue: core codec)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from divinr.codec import DiVINRCodec, load_clip
from divinr.training.encoder import EncoderConfig
from divinr.data.samples import sample_clip_path
from divinr.inference.sampler import SamplerConfig
from divinr.models.backbone import load_backbone
from divinr.errors import PresetError
from divinr.models.nola import MAX_NUM_BASES, MAX_RANK, NOLAConfig, eject_nola
from divinr.training.losses import cosine_lambda
from divinr.training.stages import Phase, StageCallback, paper_phases, phase_at


@pytest.fixture(scope="module")
def clip():
    return load_clip(sample_clip_path("bikes"), width=128, height=64, max_frames=33)


def stored_decoder_weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The INR decoder weights as stored (not the Quant-Noise view a parametrised forward sees)."""
    state = module.inr.state_dict()
    return {name: state[name] for name, _ in module.pruning_targets()}


class ZeroCounter(L.Callback):
    """Counts exactly-zero stored INR decoder weights at the end of every epoch, and records
    whether the Quant-Noise parametrisations of the INR and of NOLA are in training mode."""

    def __init__(self) -> None:
        self.zeros: list[int] = []
        self.noise_modes: list[tuple[set[bool], set[bool]]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.zeros.append(sum(int((p == 0).sum()) for p in stored_decoder_weights(pl_module).values()))
        modes = []
        for root in (pl_module.inr, pl_module.transformer):
            modes.append({m.training for m in root.modules() if type(m).__name__ == "QuantNoiseParametrization"})
        self.noise_modes.append(tuple(modes))


def stage_of(pl_module: L.LightningModule) -> StageCallback:
    return next(cb for cb in pl_module.trainer.callbacks if isinstance(cb, StageCallback))


@pytest.fixture(scope="module")
def trained(clip):
    counter = ZeroCounter()
    config = EncoderConfig(inr="xxs", phases=paper_phases(8, 4, 4), sampler=SamplerConfig(steps=2))
    result = DiVINRCodec(config, progress=False).train(clip, callbacks=[counter])
    return result.module, result.history, counter.zeros, counter.noise_modes


def test_all_three_stages_run_and_losses_go_down(trained) -> None:
    module, history, _, _ = trained
    assert [round(h["stage"]) for h in history] == [0] * 8 + [1] * 4 + [2] * 4
    first, last = history[:3], history[-3:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "train/cond") < 0.7 * mean(first, "train/cond")
    assert mean(last, "train/flow") < mean(first, "train/flow")
    assert history[0]["train/lambda"] > history[-1]["train/lambda"]


def test_prune_stage_zeroes_exactly_15_percent_and_they_stay_zero(trained) -> None:
    module, _, zeros, _ = trained
    total = sum(p.numel() for _, p in module.pruning_targets())
    target = round(0.15 * total)
    dense, pruned = zeros[:8], zeros[8:]
    assert all(z < target // 10 for z in dense)
    assert all(abs(z - target) <= 1 for z in pruned), (target, pruned)
    masks = stage_of(module).masks.state_dict()
    final = stored_decoder_weights(module)
    assert abs(sum(int((p == 0).sum()) for p in final.values()) - target) <= 1
    for name, p in final.items():
        assert torch.all(p[~masks[name]] == 0)


def test_backbone_weights_are_bit_identical_after_training(trained) -> None:
    module, _, _, _ = trained
    eject_nola(module.transformer)
    fresh = load_backbone("tiny")
    for before, after in ((fresh.transformer, module.transformer), (fresh.vae, module.backbone.vae)):
        a, b = before.state_dict(), after.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not module.transformer.training  # stayed in eval mode throughout


def test_quant_noise_trains_with_rho_on_inr_and_nola(trained) -> None:
    """rho = 0.9 needs the parametrisations in training mode (eval mode quantises everything)."""
    _, _, _, modes = trained
    assert modes[:12] == [(set(), set())] * 12
    assert modes[12:] == [({True}, {True})] * 4


def test_quant_noise_was_removed_after_training(trained) -> None:
    module, _, _, _ = trained
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in module.inr.modules())


class StopAfter(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class Snapshot(L.Callback):
    """Records the stage and masks the stage callback holds at the first step it trains."""

    def __init__(self) -> None:
        self.seen: tuple[int, dict[str, torch.Tensor]] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.seen is None:
            stage = stage_of(pl_module)
            self.seen = (stage.phase_index, {k: v.clone() for k, v in stage.masks.state_dict().items()})


def test_resume_continues_in_the_right_stage_with_masks_intact(clip, tmp_path: Path) -> None:
    phases = paper_phases(2, 3, 2)
    config = EncoderConfig(inr="xxs", phases=phases)
    short = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=5)
    first = DiVINRCodec(config, progress=False).train(short, workdir=tmp_path, callbacks=[StopAfter(3)]).module
    stage = stage_of(first)
    assert stage.phase_index == 1
    masks_before = {k: v.clone() for k, v in stage.masks.state_dict().items()}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()

    snapshot = Snapshot()
    result = DiVINRCodec(config, progress=False).train(short, workdir=tmp_path, callbacks=[snapshot])
    second, history = result.module, result.history
    assert [h["epoch"] for h in history] == [4, 5, 6]
    index, masks_after = snapshot.seen
    assert index == 1 and phase_at(phases, 4) == (1, 2)
    assert masks_after.keys() == masks_before.keys()
    assert all(torch.equal(masks_before[k], masks_after[k]) for k in masks_before)
    # the resumed INR carries the pruned zeros of the first run
    for name, p in second.pruning_targets():
        assert torch.all(p[~masks_before[name]] == 0)


class Crash(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 4:
            raise RuntimeError("simulated crash")


def test_a_crash_in_the_quant_stage_resumes_with_inr_and_nola_from_the_checkpoint(tmp_path: Path) -> None:
    config = EncoderConfig(inr="xxs", phases=paper_phases(2, 2, 3))
    short = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        DiVINRCodec(config, progress=False).train(short, workdir=tmp_path, callbacks=[Crash()])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] >= 3  # written during the run, not only at a clean end
    keys = checkpoint["state_dict"].keys()
    assert any(k.endswith(".nola_beta") for k in keys) and any(k.startswith("inr.") for k in keys)
    result = DiVINRCodec(config, progress=False).train(short, workdir=tmp_path)
    history = result.history
    assert history[0]["epoch"] == checkpoint["epoch"] + 1 and history[-1]["epoch"] == 6
    for key, value in checkpoint["state_dict"].items():
        if key.endswith(".nola_beta"):
            assert torch.any(value != 0)  # trained coefficients, not the zero initialisation


def test_resume_with_another_schedule_is_refused() -> None:
    callback = StageCallback(paper_phases(2, 2, 2))
    state = callback.state_dict()
    with pytest.raises(Exception, match="different stage schedule"):
        StageCallback(paper_phases(3, 2, 2)).load_state_dict(state)


@pytest.mark.parametrize("field", ["inr_lr", "nola_lr"])
@pytest.mark.parametrize("value", [-2e-3, 0.0, float("nan"), float("inf")])
def test_a_learning_rate_that_cannot_train_is_refused(field: str, value: float) -> None:
    with pytest.raises(PresetError, match=f"{field} must be a positive finite number"):
        Phase("dense", 3, **{field: value})


def test_an_encode_needs_a_dense_epoch() -> None:
    with pytest.raises(PresetError, match="needs at least one epoch"):
        EncoderConfig(phases=paper_phases(0, 0, 0))
    with pytest.raises(PresetError, match="needs at least one epoch"):
        EncoderConfig(phases=paper_phases(0, 5, 5))
    assert EncoderConfig(phases=paper_phases(1, 0, 0)).phases[0].epochs == 1


def test_nola_rank_and_bases_are_bounded() -> None:
    assert NOLAConfig(rank=MAX_RANK, num_bases=MAX_NUM_BASES).rank == MAX_RANK
    with pytest.raises(PresetError, match="rank must be in 1..128"):
        NOLAConfig(rank=1024)
    with pytest.raises(PresetError, match="num_bases must be in 0..1024"):
        NOLAConfig(num_bases=MAX_NUM_BASES + 1)


def test_schedule_helpers() -> None:
    phases = [Phase("a", 2), Phase("b", 3)]
    assert [phase_at(phases, e) for e in range(6)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    quant = paper_phases()[2]
    assert quant.inr_lr == pytest.approx(2e-4) and quant.quant_noise == 0.9 and quant.quant_bits == 6
    assert cosine_lambda(0.5, 1.0, 0.0) == pytest.approx(0.5)

"""Interrupted encodes: bit-exact resume from the work folder, its lock, unreadable checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch

from divinr.cli import main
from divinr.codec import DiVINRCodec, load_clip
from divinr.training.encoder import EncoderConfig
from divinr.data.samples import sample_clip_path
from divinr.data.video import Video
from divinr.errors import DivinrError
from divinr.inference.sampler import SamplerConfig
from divinr.models.nola import NOLAConfig
from divinr.training.resume import CHECKPOINT_DIR, LOCK_NAME, resume_path, workdir_lock
from divinr.training.stages import paper_phases

# 9 frames in GoPs of 5: two training steps per epoch, so an interruption can fall mid-epoch.
# Epochs 0-1 dense, 2-3 prune, 4-5 quant; each step below is the second one of epoch 1, 3 or 5.
STAGE_STEPS = {"dense": 3, "prune": 7, "quant": 11}


def setup() -> tuple[Video, EncoderConfig]:
    video = load_clip(sample_clip_path("bikes"), width=64, height=64, max_frames=9)
    config = EncoderConfig(inr="xxs", phases=paper_phases(2, 2, 2), nola=NOLAConfig(rank=8, num_bases=16),
                           sampler=SamplerConfig(steps=1), gop_size=5, device="cpu")
    return video, config


class InterruptAt(L.Callback):
    """Stops the process before training step ``step``: by raising, or by SIGKILL (nothing runs after it)."""

    def __init__(self, step: int, *, kill: bool = False) -> None:
        self.step = step
        self.kill = kill

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"interrupted at step {self.step}")


def encode(workdir: Path | None = None, callbacks: Sequence[L.Callback] = ()) -> bytes:
    video, config = setup()
    return DiVINRCodec(config, progress=False).encode(video, workdir=workdir, callbacks=callbacks).data


class GoPOrder(L.Callback):
    """The GoP indices of each epoch, in the order training visits them."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.epochs.setdefault(trainer.current_epoch, []).append(int(batch["index"]))


@pytest.fixture(scope="module")
def uninterrupted_run() -> tuple[bytes, dict[int, list[int]]]:
    order = GoPOrder()
    return encode(callbacks=[order]), order.epochs


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> bytes:
    return uninterrupted_run[0]


def test_training_visits_the_gops_in_a_new_order_each_epoch(uninterrupted_run) -> None:
    orders = uninterrupted_run[1]
    assert sorted(orders) == list(range(6)) and all(sorted(o) == [0, 1] for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) == 2, orders


@pytest.mark.parametrize("stage", STAGE_STEPS)
def test_an_encode_interrupted_in_any_stage_resumes_to_the_identical_bitstream(uninterrupted, stage, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        encode(tmp_path, [InterruptAt(STAGE_STEPS[stage])])
    checkpoint = torch.load(tmp_path / CHECKPOINT_DIR / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == STAGE_STEPS[stage] - 1  # resumes from the previous epoch's end
    assert encode(tmp_path) == uninterrupted


KILLED = """
import sys
sys.path.insert(0, sys.argv[1])
from test_resume import InterruptAt, encode
encode(sys.argv[2], [InterruptAt(int(sys.argv[3]), kill=True)])
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGE_STEPS)
def test_an_encode_killed_in_any_stage_resumes_to_the_identical_bitstream(uninterrupted, stage, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", KILLED, str(Path(__file__).parent), str(tmp_path), str(STAGE_STEPS[stage])]
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    resumed = encode(tmp_path)
    print(f"{stage}: killed at step {STAGE_STEPS[stage]}, resumed {len(resumed)} bytes, "
          f"uninterrupted {len(uninterrupted)} bytes, identical: {resumed == uninterrupted}")
    assert resumed == uninterrupted


def test_a_second_encode_on_a_busy_workdir_is_refused_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    import divinr.codec.divinr

    monkeypatch.setattr(divinr.codec.divinr, "load_backbone", lambda *a, **k: pytest.fail("training started"))
    workdir = tmp_path / "work"
    clip = str(sample_clip_path("bikes"))
    argv = ["encode", clip, "-o", str(tmp_path / "x.dvr"), "--frames", "5", "--resolution", "64x64",
            "--backbone", "tiny", "--workdir", str(workdir)]
    with workdir_lock(workdir):
        assert (workdir / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"work folder {workdir} is in use by another encode (process {os.getpid()})" in err[0]
    assert not (workdir / LOCK_NAME).exists()  # released, and the folder is as it was
    assert not (tmp_path / "x.dvr").exists()


def test_the_lock_of_a_killed_encode_does_not_outlive_it(tmp_path) -> None:
    code = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom divinr.training.resume import workdir_lock\n"
        "with workdir_lock(Path(sys.argv[1])):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL and (tmp_path / LOCK_NAME).exists()
    with workdir_lock(tmp_path):  # the file is left behind, the lock is not
        with pytest.raises(DivinrError, match="in use"):
            with workdir_lock(tmp_path):
                pass


def test_a_truncated_checkpoint_is_a_clear_error_naming_the_file(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        encode(tmp_path, [InterruptAt(STAGE_STEPS["prune"])])
    last = tmp_path / CHECKPOINT_DIR / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    video, config = setup()
    with pytest.raises(DivinrError, match="delete it to start this training afresh") as err:
        DiVINRCodec(config, progress=False).train(video, workdir=tmp_path)
    assert str(last) in str(err.value) and "\n" not in str(err.value)
    last.unlink()
    assert resume_path(tmp_path) is None  # the documented fix: the next run starts afresh


def test_a_damaged_checkpoint_is_detected(tmp_path) -> None:
    last = tmp_path / CHECKPOINT_DIR / "last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, last)
    assert resume_path(tmp_path) == str(last)
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored tensor: the archive's CRC no longer matches
    last.write_bytes(bytes(data))
    with pytest.raises(DivinrError, match="is unreadable"):
        resume_path(tmp_path)


def test_each_epoch_has_its_own_order_and_the_same_one_in_every_run() -> None:
    from divinr.training.resume import EpochShuffle

    orders = []
    for _ in range(2):
        sampler = EpochShuffle(8, seed=3)
        epochs = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            epochs.append(list(sampler))
        orders.append(epochs)
    assert orders[0] == orders[1]
    assert len({tuple(order) for order in orders[0]}) > 1
    assert all(sorted(order) == list(range(8)) for order in orders[0])

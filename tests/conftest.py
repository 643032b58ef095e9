"""Shared test set-up: single-threaded torch keeps the suite predictable on 2 cores."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip gpu-marked tests where no CUDA device exists, even when selected explicitly."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def standin_alexnet(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """A weight cache holding a random AlexNet checkpoint under the official file name.

    Only the ``features.*`` entries matter to LPIPS; a small stand-in with the real key names
    and shapes exercises the same loading path as the 233 MB file. Returns its state dict.
    """
    from divinr.metrics.weights import WEIGHTS

    cache = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("DIVINR_WEIGHTS_DIR", str(cache))
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    g = torch.Generator().manual_seed(3)
    state = {}
    for i, shape in shapes.items():
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g)
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g)
    torch.save(state, cache / WEIGHTS["alexnet"].filename)
    return state

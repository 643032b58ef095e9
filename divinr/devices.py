"""One answer to "which device does ``auto`` mean", shared by the codecs, the metrics and the CLI."""

from __future__ import annotations

import torch

from divinr.errors import PresetError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a clear error for a device that is not there."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PresetError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise PresetError(f"device {name!r} is not available ({count} CUDA devices found); use --device cpu")
    elif device.type != "cpu":
        raise PresetError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device

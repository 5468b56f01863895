"""Tensor files read with errors that name the file (safetensors' own say only "invalid header")."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it is damaged or not a model file: restore it or save the model again") from err

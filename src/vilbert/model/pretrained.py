"""Save and load a model as a directory (config.json, model.safetensors, checksums.json, the
tokenizer's files, a model card): the functional spelling of `ViLBert.save_pretrained` /
`ViLBert.from_pretrained` (`vilbert.model.hub`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vilbert.model.hub import CONFIG_NAME, WEIGHTS_NAME  # noqa: F401  (the names of the files)
from vilbert.model.vilbert import ViLBert


def save_pretrained(model: ViLBert, directory: str | Path, **card: Any) -> Path:
    """`model.save_pretrained(directory, **card)`."""
    return model.save_pretrained(directory, **card)


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> ViLBert:
    """`ViLBert.from_pretrained(directory)`: the model described by its config.json, loaded strictly."""
    return ViLBert.from_pretrained(directory, map_location=map_location)

"""Save and load a model as a directory: config.json + model.safetensors (Hugging Face style)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vilbert.io.atomic import atomic_path
from vilbert.model.config import ViLBertConfig
from vilbert.model.vilbert import ViLBert, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: ViLBert, directory: str | Path) -> Path:
    """Write `directory/config.json` and `directory/model.safetensors` (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    model.config.to_json(directory / CONFIG_NAME)
    return directory


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> ViLBert:
    """Build the model described by `directory/config.json` and load its weights (strictly)."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved ViLBERT model: {name} is missing")
    config = ViLBertConfig.from_json(directory / CONFIG_NAME)
    model = build_model(config)
    state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {directory / WEIGHTS_NAME} do not match its config: "
            f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    return model.to(map_location)

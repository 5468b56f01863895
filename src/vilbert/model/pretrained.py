"""Save and load a model as a directory: config.json + model.safetensors (Hugging Face style), and
checksums.json with the weights' checksum, verified on load."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from vilbert.io.atomic import atomic_path
from vilbert.io.checksums import verify_checksums, write_checksums
from vilbert.io.tensors import read_safetensors
from vilbert.model.config import ViLBertConfig
from vilbert.model.vilbert import ViLBert, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: ViLBert, directory: str | Path) -> Path:
    """Write `directory/config.json`, `directory/model.safetensors` and their checksums (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    model.config.to_json(directory / CONFIG_NAME)
    # The weights only: config.json is meant to be read, and sometimes edited, by people.
    write_checksums(directory, [WEIGHTS_NAME])
    return directory


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> ViLBert:
    """Build the model described by `directory/config.json` and load its weights (strictly)."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved ViLBERT model: {name} is missing")
    config = ViLBertConfig.from_json(directory / CONFIG_NAME)
    verify_checksums(directory, [WEIGHTS_NAME])  # directories saved before checksums existed pass
    model = build_model(config)
    state = read_safetensors(directory / WEIGHTS_NAME, map_location)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ValueError(f"weights in {directory / WEIGHTS_NAME} do not match its config: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights in {directory / WEIGHTS_NAME} do not match its config: "
            f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    return model.to(map_location)

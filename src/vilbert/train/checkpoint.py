"""Checkpoints that a killed run resumes from exactly, written so a crash never leaves half of one.

Layout: OUT/checkpoints/step_N/ holds model.safetensors (+ config.json when the model has one),
trainer_state.pt (optimizer, scheduler, grad scaler, step, epoch, position in the epoch, the
training config) and rng_rank{r}.pt (each process's python/numpy/torch RNG states).
OUT/checkpoints/latest names the newest complete one. A checkpoint is assembled in a temporary
directory and renamed into place; `latest` is replaced atomically after that.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vilbert.io.atomic import atomic_path, write_json
from vilbert.io.checksums import CHECKSUMS_FILE, verify_checksums, write_checksums
from vilbert.io.tensors import read_safetensors

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class DamagedCheckpointError(ValueError):
    """A checkpoint whose files are not what was written (checksum mismatch, unreadable)."""


@dataclass
class TrainerState:
    step: int  # optimizer steps done
    epoch: int
    position: int  # optimizer steps done within `epoch`
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    config: dict


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[-2], tuple(python[:-2]), python[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_weights(model: nn.Module, directory: Path) -> None:
    """The model's own `save_pretrained(dir)` if it has one, else model.safetensors with every
    state_dict key (tied weights stored under each name, so `load_pretrained` reads it strictly)
    plus config.json when the model carries a config."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
        return
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset())
        state[key] = value.clone() if ptr in seen else value  # safetensors refuses shared memory
        seen.add(ptr)
    save_file(state, str(directory / MODEL_FILE), metadata={"format": "pt"})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        write_json(directory / "config.json", config.to_dict())


def load_model_weights(model: nn.Module, directory: Path) -> None:
    path = directory / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {MODEL_FILE}")
    device = next(iter(model.state_dict().values())).device
    result = model.load_state_dict(read_safetensors(path, device), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not fit {type(model).__name__}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def save_checkpoint(
    out_dir: str | Path, model: nn.Module, state: TrainerState, rank_rngs: list[dict[str, Any]], keep_last: int = 2
) -> Path:
    """Write OUT/checkpoints/step_N atomically, point `latest` at it, keep the last `keep_last`.

    Called on rank 0 with every rank's RNG state gathered in `rank_rngs`.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step}"
    tmp = root / f".tmp_step_{state.step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model_weights(model, tmp)
    with atomic_path(tmp / STATE_FILE) as path:
        torch.save(state.__dict__, path)
    for r, rng in enumerate(rank_rngs):
        torch.save(rng, tmp / f"rng_rank{r}.pt")
    write_checksums(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE))
    if final.exists():  # re-saving a step (a resumed run ending where the last one saved)
        shutil.rmtree(final)
    tmp.rename(final)
    with atomic_path(root / "latest") as path:
        path.write_text(final.name + "\n")
    _prune(root, keep_last)
    return final


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for child in root.iterdir() if root.is_dir() else []:
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _prune(root: Path, keep_last: int) -> None:
    for _, path in _step_dirs(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in root.glob(".tmp_step_*"):  # a save killed half-way
        shutil.rmtree(leftover, ignore_errors=True)


def checkpoints_newest_first(out_dir: str | Path) -> list[Path]:
    """Every complete checkpoint, the one `latest` names first, then by step, newest first."""
    root = checkpoint_root(out_dir)
    found = [path for _, path in reversed(_step_dirs(root))]
    first = latest_checkpoint(out_dir)
    return ([first] if first is not None else []) + [p for p in found if p != first]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest step_N found."""
    root = checkpoint_root(out_dir)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / STATE_FILE).is_file():
            return named
    found = _step_dirs(root)
    return found[-1][1] if found else None


def load_checkpoint(directory: Path, model: nn.Module, rank: int = 0) -> tuple[TrainerState, dict[str, Any] | None]:
    """Load weights into `model`; return the trainer state and this rank's RNG state (if saved).
    A damaged checkpoint (a file not matching its checksum, or unreadable) raises ValueError."""
    try:
        verify_checksums(directory)
    except ValueError as err:
        raise DamagedCheckpointError(str(err)) from err
    rng_path = directory / f"rng_rank{rank}.pt"
    try:
        raw = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        rng = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
        state = TrainerState(**raw)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds; all mean "damaged"
        raise DamagedCheckpointError(f"{directory} is not readable ({type(err).__name__}: {err})") from err
    load_model_weights(model, directory)
    return state, rng

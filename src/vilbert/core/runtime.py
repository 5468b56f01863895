"""Where and how a model runs: its device, evaluation mode, and the module inside a wrapper."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    """'auto': this process's CUDA device under torchrun (LOCAL_RANK), else CUDA, MPS, CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP (or torch.compile) wrapper: read attributes from this."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model

"""What a task is, to the trainer: data, the heads it needs, a loss and a metric.

The trainer never branches on a task's name: pretraining, VQA, VCR, referring expressions and
retrieval are each one `Task` subclass in `vilbert.tasks`, registered by name there. The base
lives here so that the trainer needs nothing from `vilbert.tasks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from vilbert.core.batch import Batch


class Task(ABC):
    """One training objective with its data and its evaluation."""

    name: ClassVar[str] = "task"

    def required_heads(self) -> dict[str, dict[str, Any]]:
        """Heads the model must have for this task: head name -> constructor arguments."""
        return {}

    @abstractmethod
    def dataset(self, split: str) -> torch.utils.data.Dataset:
        """The examples of `split` ("train", "val", "test"); items are passed to `collate`."""

    @abstractmethod
    def collate(self, examples: Sequence[Any]) -> Batch:
        """Turn a list of dataset items into one padded `Batch`."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward the batch and return (scalar loss to minimise, numbers worth logging)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        """The task's real metric(s) on `split`, as a flat dict of floats."""

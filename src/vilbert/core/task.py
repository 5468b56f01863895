"""What a task is, to the trainer: data, the heads it needs, a loss and a metric.

The trainer never branches on a task's name: pretraining, VQA, VCR, referring expressions and
retrieval are each one `Task` subclass in `vilbert.tasks`, registered by name there. The base
lives here so that the trainer needs nothing from `vilbert.tasks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence

import torch
from torch import nn

from vilbert.core.batch import Batch


@dataclass(frozen=True)
class PlannedBatch:
    """One optimizer step's global batch: indices into the task's train dataset, and the nominal
    size its accumulation micro-steps are cut by (the epoch's last batch of a task may be short)."""

    indices: list[int]
    nominal_size: int


class BatchPlan(Protocol):
    """A task's own order of training batches, instead of the trainer's shuffle cut into batches of
    `TrainConfig.batch_size` (a multi-task run: each step one task's batch, of that task's size).

    `epoch_batches(seed, epoch)` must be a function of its arguments alone and return
    `steps_per_epoch` batches: exact resume and 1-vs-N-process equality rest on it.
    """

    steps_per_epoch: int

    def epoch_batches(self, seed: int, epoch: int) -> list[PlannedBatch]: ...


class Task(ABC):
    """One training objective with its data and its evaluation."""

    name: ClassVar[str] = "task"

    def required_heads(self) -> dict[str, dict[str, Any]]:
        """Heads the model must have for this task: head name -> constructor arguments."""
        return {}

    def lengths(self, split: str) -> list[int] | None:
        """Each example's text length in tokens (what a batch pads to), for length bucketing; None
        when the task has no single text length per example."""
        return None

    def batch_plan(self) -> BatchPlan | None:
        """The order of training batches, or None (the default): the trainer shuffles the train
        dataset per (seed, epoch) and cuts it into batches of `TrainConfig.batch_size`."""
        return None

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

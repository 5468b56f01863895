"""What a task is, to the trainer: data, the heads it needs, a loss and a metric.

The trainer never branches on a task's name: pretraining, VQA, VCR, referring expressions and
retrieval are each one `Task` subclass in its own module, registered by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from vilbert.data.batch import Batch

TASKS: dict[str, type["Task"]] = {}


def register_task(name: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: make a task constructible by name (`get_task(name)`)."""

    def decorate(cls: type["Task"]) -> type["Task"]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__name__}, {cls.__name__})")
        cls.name = name
        TASKS[name] = cls
        return cls

    return decorate


def list_tasks() -> list[str]:
    _import_builtin_tasks()
    return sorted(TASKS)


def get_task(name: str) -> type["Task"]:
    _import_builtin_tasks()
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _import_builtin_tasks() -> None:
    # Importing a task module registers it; missing optional modules are simply not listed.
    import importlib

    for module in ("pretrain", "vqa", "vcr", "refer", "retrieval"):
        try:
            importlib.import_module(f"vilbert.tasks.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"vilbert.tasks.{module}":
                raise


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

"""Tasks by name, each registered with its recipe: the dataset folder it reads under a data root
and the original's fine-tuning settings (from the paper and the original's task
configs), which the pipelines take as defaults.

A task module registers itself (`@register_task("vqa", Recipe(...))`); importing `vilbert.tasks`
imports every task module, so `get_task` and `list_tasks` see them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vilbert.core.task import Task


@dataclass(frozen=True)
class Recipe:
    """A task's data folder and default training settings."""

    folder: str  # under a data root, in the layout the generated world uses
    max_text_length: int
    batch_size: int
    lr: float
    epochs: int


TASKS: dict[str, type[Task]] = {}
RECIPES: dict[str, Recipe] = {}


def register_task(name: str, recipe: Recipe) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a task constructible by name, with its recipe."""

    def decorate(cls: type[Task]) -> type[Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__name__}, {cls.__name__})")
        cls.name = name
        TASKS[name] = cls
        RECIPES[name] = recipe
        return cls

    return decorate


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def recipe(name: str) -> Recipe:
    """The registered task's recipe (an unknown name lists the valid ones)."""
    get_task(name)
    return RECIPES[name]
